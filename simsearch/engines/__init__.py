"""Inference engines: run a backbone on batches of preprocessed images, return L2-normalised float32 vectors.

The contract is :class:`Engine` (:mod:`.protocol`); engines are made by name from a registry
(:func:`create_engine`, :func:`register_engine`, :func:`list_engines`): ``openvino`` (default where installed;
:mod:`.openvino`, with its on-disk model cache :mod:`.cache`), ``torch`` (the reference; :mod:`.torch`) and
``ray`` (a Ray Data pipeline; :mod:`.ray_data`). :mod:`.transform` turns image files into engine inputs, the same
way for every engine.
"""

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
