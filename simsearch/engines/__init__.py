"""Inference engines: run a backbone on batches of preprocessed images, return L2-normalised float32 vectors.

The contract is :class:`Engine` (:mod:`.protocol`); engines are made by name from a registry
(:func:`create_engine`, :func:`register_engine`, :func:`list_engines`): ``openvino`` (default where installed;
:mod:`.openvino`, with its on-disk model cache :mod:`.cache`), ``torch`` (the reference; :mod:`.torch`) and
``ray`` (a Ray Data pipeline; :mod:`.ray_data`). :mod:`.transform` turns image files into engine inputs, the same
way for every engine.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..system import cpu_count, cpu_flags, cpu_has_bf16
    from .cache import CACHE_ENV, cache_dir, cached_ir
    from .cached import CachedBackbone, cached_backbone
    from .openvino import OpenVINOEngine, openvino_available, openvino_has_bf16
    from .protocol import Engine, EngineCallable, EngineFactory, FileEngine, StreamingEngine, engine_settings
    from .ray_data import RayEngine
    from .registry import (
        AUTO_ORDER,
        REFERENCE,
        EngineInfo,
        create_engine,
        engine_info,
        list_engines,
        register_engine,
        resolve_engine,
        resolve_precision,
    )
    from .torch import TorchEngine
    from .transform import ImageSource, NumpyTransform, Preprocessor

# name -> the module that defines it (relative to this package), imported on first use (PEP 562): importing one
# light module of the package (e.g. `.runtime` or `.cache`, for a query's early model compile) loads no PIL,
# torch wrapper or Ray code
_EXPORTS = {
    "cpu_count": "..system",
    "cpu_flags": "..system",
    "cpu_has_bf16": "..system",
    "CACHE_ENV": ".cache",
    "cache_dir": ".cache",
    "cached_ir": ".cache",
    "CachedBackbone": ".cached",
    "cached_backbone": ".cached",
    "OpenVINOEngine": ".openvino",
    "openvino_available": ".openvino",
    "openvino_has_bf16": ".openvino",
    "Engine": ".protocol",
    "EngineCallable": ".protocol",
    "EngineFactory": ".protocol",
    "FileEngine": ".protocol",
    "StreamingEngine": ".protocol",
    "engine_settings": ".protocol",
    "RayEngine": ".ray_data",
    "AUTO_ORDER": ".registry",
    "EngineInfo": ".registry",
    "REFERENCE": ".registry",
    "create_engine": ".registry",
    "engine_info": ".registry",
    "list_engines": ".registry",
    "register_engine": ".registry",
    "resolve_engine": ".registry",
    "resolve_precision": ".registry",
    "TorchEngine": ".torch",
    "ImageSource": ".transform",
    "NumpyTransform": ".transform",
    "Preprocessor": ".transform",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AUTO_ORDER",
    "CACHE_ENV",
    "REFERENCE",
    "CachedBackbone",
    "Engine",
    "EngineCallable",
    "EngineFactory",
    "EngineInfo",
    "FileEngine",
    "ImageSource",
    "NumpyTransform",
    "OpenVINOEngine",
    "Preprocessor",
    "RayEngine",
    "StreamingEngine",
    "TorchEngine",
    "cache_dir",
    "cached_backbone",
    "cached_ir",
    "cpu_count",
    "cpu_flags",
    "cpu_has_bf16",
    "create_engine",
    "engine_info",
    "engine_settings",
    "list_engines",
    "openvino_available",
    "openvino_has_bf16",
    "register_engine",
    "resolve_engine",
    "resolve_precision",
]
