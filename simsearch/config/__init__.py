"""Every setting of simsearch, declared once: frozen dataclasses with their defaults.

The CLI and the server read their defaults from these (``dataclasses.replace`` to change one); the library
validates values with them. One module per area, each owned by the layer that uses it:

- :mod:`simsearch.config.limits`: hard limits (k, pixels, request sizes) shared by the library and the service.
- :mod:`simsearch.config.duplicates`: when two items are near-duplicates (cosine, perceptual hash, linkage).
"""

from .duplicates import DUPLICATES, LINKAGES, DuplicateRule
from .limits import LIMITS, Limits

__all__ = ["DUPLICATES", "LIMITS", "LINKAGES", "DuplicateRule", "Limits"]
