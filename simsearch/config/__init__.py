"""Every setting of simsearch, declared once: frozen dataclasses with their defaults.

The CLI and the server read their defaults from these (``dataclasses.replace`` to change one); the library
validates values with them. One module per area, each owned by the layer that uses it:

- :mod:`simsearch.config.limits`: hard limits (k, pixels, request sizes) shared by the library and the service.
- :mod:`simsearch.config.classify`: k, vote threshold and field of label suggestion, audit and its evaluation.
- :mod:`simsearch.config.serve`: the HTTP service's settings (:class:`ServeSpec`) and request batching.
- :mod:`simsearch.config.startup`: what a CLI process sets before its heavy imports (BLAS and OpenMP threads).
- :mod:`simsearch.config.duplicates`: when two items are near-duplicates (cosine, perceptual hash, linkage).
- :mod:`simsearch.config.index`: an ``index`` run (:class:`IndexSpec`); :mod:`~simsearch.config.embedding`,
  :mod:`~simsearch.config.autoindex`, :mod:`~simsearch.config.finetune`: embedding settings, the automatic FAISS
  choice and its record, fine-tuning.
"""

from .classify import CLASSIFY, ClassifySettings
from .duplicates import DUPLICATES, LINKAGES, DuplicateRule
from .index import INDEX, IndexSpec
from .limits import LIMITS, Limits
from .serve import SERVE, BatchSpec, ServeSpec
from .startup import STARTUP, StartupSettings

__all__ = [
    "CLASSIFY",
    "DUPLICATES",
    "INDEX",
    "LIMITS",
    "LINKAGES",
    "SERVE",
    "STARTUP",
    "BatchSpec",
    "ClassifySettings",
    "DuplicateRule",
    "IndexSpec",
    "Limits",
    "ServeSpec",
    "StartupSettings",
]
