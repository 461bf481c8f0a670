"""Importing the OpenVINO runtime without its model-conversion API, for a short start-up.

``import openvino`` also imports ``openvino.tools.ovc`` (``convert_model``: its argument parser, its frontends'
Python helpers and a telemetry client with ``urllib``/``ssl``/``http.client``), about 40% of the import's time,
though running a model already converted (the on-disk cache, :mod:`.cache`) never needs it. OpenVINO imports it
inside ``try: ... except ImportError``, so :func:`import_openvino` makes that import fail once and then gives the
module a PEP 562 ``__getattr__`` that imports it on first use: ``openvino.convert_model`` still works, loaded
only when a model is actually converted.

``import openvino`` also runs its 17 operation sets (``openvino.opset1`` ... ``opset17``: the Python builders of
graph nodes, about 40% of the rest of the import's time), which running a compiled model never uses either.
:func:`import_openvino` first puts a stand-in for each in ``sys.modules`` (:class:`LazyOpset`): ``openvino``
binds them as usual, and each one imports its real module at its first use (``ov.opset13.constant(...)``,
``import openvino.opset8.ops``, NNCF's quantisation, a conversion).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import threading
from types import ModuleType
from typing import Any

OVC = "openvino.tools.ovc"
DEFERRED = frozenset({"convert_model"})  # what `openvino` takes from openvino.tools.ovc


def import_openvino() -> ModuleType:
    """``import openvino``; the first import in a process defers ``openvino.tools.ovc`` (see the module doc)."""
    if "openvino" in sys.modules or OVC in sys.modules:
        import openvino

        return openvino
    lazy = _lazy_opsets()
    sys.modules[OVC] = None  # type: ignore[assignment]  # `import openvino.tools.ovc` raises ImportError
    try:
        import openvino
    except BaseException:
        for name in lazy:  # not left behind for another attempt
            sys.modules.pop(name, None)
        raise
    finally:
        if sys.modules.get(OVC, 0) is None:
            del sys.modules[OVC]
    if not hasattr(openvino, "convert_model") and "__getattr__" not in vars(openvino):
        openvino.__getattr__ = _deferred
    return openvino


OPSET = re.compile(r"opset\d+")
_SWAP = threading.Lock()


class LazyOpset(ModuleType):
    """Stands in for one of ``openvino``'s operation sets until an attribute of it is looked up: the real module is
    then imported (replacing this one in ``sys.modules`` and on ``openvino``) and answers. Its ``__path__`` is the
    package's, so that its submodules (``openvino.opset8.ops``) import as usual without it."""

    def __init__(self, name: str, folder: str):
        super().__init__(name)
        self.__path__ = [folder]
        self.__package__ = name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__all__":
            raise AttributeError(name)  # the import system's look-ups (__spec__...)
        return getattr(self._real(), name)

    def _real(self) -> ModuleType:
        with _SWAP:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        parent = sys.modules.get("openvino")
        if parent is not None:
            setattr(parent, self.__name__.rsplit(".", 1)[1], real)
        return real


def _lazy_opsets() -> list[str]:
    """Register a :class:`LazyOpset` for each of ``openvino``'s operation-set packages, before ``openvino`` is
    imported (they are found without importing it); the names registered."""
    spec = importlib.util.find_spec("openvino")
    done = []
    for folder in list(spec.submodule_search_locations or []) if spec is not None else []:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                full = f"openvino.{entry.name}"
                if OPSET.fullmatch(entry.name) and entry.is_dir() and full not in sys.modules:
                    sys.modules[full] = LazyOpset(full, entry.path)
                    done.append(full)
    return done


def _deferred(name: str) -> Any:
    if name not in DEFERRED:
        raise AttributeError(f"module 'openvino' has no attribute {name!r}")
    value = getattr(importlib.import_module(OVC), name)
    setattr(sys.modules["openvino"], name, value)
    return value
