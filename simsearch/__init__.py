"""simsearch: visual similarity search with pretrained backbones and FAISS.

import simsearch
idx = simsearch.build_index(["photos/"], "indexes/photos")  # later: simsearch.open_index("indexes/photos")
hits = idx.search("cat.jpg", k=10)
recs = idx.recommend(positive=[12, 40], negative=[7], exclude=[12, 40], k=20)

The names below are imported on first use (PEP 562), so that ``import simsearch`` (and ``simsearch query``,
which needs a fraction of the package) does not load the build, evaluation or fine-tuning code, nor numpy: the
CLI limits numpy's BLAS and FAISS's OpenMP threads for a quick command before they start (:mod:`simsearch.config.startup`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import BackboneError, ImageError, IndexFormatError, IndexLockedError, SimsearchError

if TYPE_CHECKING:
    from .backbones import DEFAULT_BACKBONE, Backbone, create_backbone, list_backbones, register_backbone
    from .embed import Embedder
    from .evaluate import evaluate_index, map_at_r, recall_at_k, retrieval_metrics
    from .finetuning import FinetuneResult, finetune
    from .images import load_image, scan
    from .index import Index, Item, Manifest, UpdateReport, open_index
    from .index import build_and_open as build_index
    from .rules import Rules
    from .search import Hit, recommend, search

# public name -> the module that defines it (and the name there, when it differs)
_RENAMED = {"build_index": "build_and_open"}
_LAZY = {
    "build_index": "index",
    "DEFAULT_BACKBONE": "backbones",
    "Backbone": "backbones",
    "create_backbone": "backbones",
    "list_backbones": "backbones",
    "register_backbone": "backbones",
    "Embedder": "embed",
    "evaluate_index": "evaluate",
    "map_at_r": "evaluate",
    "recall_at_k": "evaluate",
    "retrieval_metrics": "evaluate",
    "FinetuneResult": "finetuning",
    "finetune": "finetuning",
    "load_image": "images",
    "scan": "images",
    "Index": "index",
    "Item": "index",
    "Manifest": "index",
    "UpdateReport": "sync",
    "open_index": "index",
    "Rules": "rules",
    "Hit": "search",
    "recommend": "search",
    "search": "search",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:  # a submodule not imported yet (``simsearch.index``, as an eager import used to give)
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'simsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``simsearch.search`` is the function although a module of that name exists: importing the module, which
    the import system records as an attribute of the package, must not hide the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS_OVER_MODULES and isinstance(value, types.ModuleType):
            return  # the module is in sys.modules; the name resolves to the function (__getattr__)
        super().__setattr__(name, value)


_FUNCTIONS_OVER_MODULES = frozenset({"search"})  # public functions named as a submodule is
sys.modules[__name__].__class__ = _Package


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
