"""Importing the OpenVINO runtime without its model-conversion API, for a short start-up.

``import openvino`` also imports ``openvino.tools.ovc`` (``convert_model``: its argument parser, its frontends'
Python helpers and a telemetry client with ``urllib``/``ssl``/``http.client``), about 40% of the import's time,
though running a model already converted (the on-disk cache, :mod:`.cache`) never needs it. OpenVINO imports it
inside ``try: ... except ImportError``, so :func:`import_openvino` makes that import fail once and then gives the
module a PEP 562 ``__getattr__`` that imports it on first use: ``openvino.convert_model`` still works, loaded
only when a model is actually converted.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

OVC = "openvino.tools.ovc"
DEFERRED = frozenset({"convert_model"})  # what `openvino` takes from openvino.tools.ovc


def import_openvino() -> ModuleType:
    """``import openvino``; the first import in a process defers ``openvino.tools.ovc`` (see the module doc)."""
    if "openvino" in sys.modules or OVC in sys.modules:
        import openvino

        return openvino
    sys.modules[OVC] = None  # type: ignore[assignment]  # `import openvino.tools.ovc` raises ImportError
    try:
        import openvino
    finally:
        if sys.modules.get(OVC, 0) is None:
            del sys.modules[OVC]
    if not hasattr(openvino, "convert_model") and "__getattr__" not in vars(openvino):
        openvino.__getattr__ = _deferred
    return openvino


def _deferred(name: str) -> Any:
    if name not in DEFERRED:
        raise AttributeError(f"module 'openvino' has no attribute {name!r}")
    value = getattr(importlib.import_module(OVC), name)
    setattr(sys.modules["openvino"], name, value)
    return value
