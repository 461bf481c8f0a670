"""simsearch: visual similarity search with pretrained backbones and FAISS.

import simsearch
idx = simsearch.build_index(["photos/"], "indexes/photos")  # later: simsearch.open_index("indexes/photos")
hits = idx.search("cat.jpg", k=10)
recs = idx.recommend(positive=[12, 40], negative=[7], exclude=[12, 40], k=20)
"""

from ._version import __version__
from .backbones import DEFAULT_BACKBONE, Backbone, create_backbone, list_backbones, register_backbone
from .build import run_build
from .embed import Embedder
from .errors import BackboneError, ImageError, IndexFormatError, IndexLockedError, SimsearchError
from .evaluate import evaluate_index, map_at_r, recall_at_k, retrieval_metrics
from .finetuning import FinetuneResult, finetune
from .images import load_image, scan
from .index import Index, Item, Manifest, UpdateReport, open_index
from .rules import Rules
from .search import Hit, recommend, search


def build_index(roots=None, out=None, **kwargs) -> Index:
    """Index the images under ``roots`` (or the rows of ``catalog=``) into ``out``, incrementally, and return the
    opened index; the run's :class:`UpdateReport` is ``index.report``. Keyword arguments: see
    :func:`simsearch.build.build_index`."""
    report, backbone = run_build(roots, out, **kwargs)
    idx = open_index(report.path, backbone=backbone)
    idx.report = report
    return idx


__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneError",
    "Embedder",
    "FinetuneResult",
    "Hit",
    "ImageError",
    "Index",
    "IndexFormatError",
    "IndexLockedError",
    "Item",
    "Manifest",
    "Rules",
    "SimsearchError",
    "UpdateReport",
    "__version__",
    "build_index",
    "create_backbone",
    "evaluate_index",
    "finetune",
    "list_backbones",
    "load_image",
    "map_at_r",
    "open_index",
    "recall_at_k",
    "recommend",
    "register_backbone",
    "retrieval_metrics",
    "scan",
    "search",
]
