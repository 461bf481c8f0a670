"""The engine registry: names → factories, run-time choice (``auto``) and the fallback to the torch reference.

Built in: ``openvino`` (default where installed), ``torch`` (the reference) and ``ray`` (a Ray Data pipeline;
optional extra). Add one with :func:`register_engine`; :func:`create_engine` makes any of them by name, which is
how ``build_index(engine=...)``, the CLI's ``--engine`` and query time (the engine recorded in an index) get
theirs. ``precision="auto"`` means ``bf16`` where the engine runs it natively on this CPU (AVX-512 BF16 or AMX;
OpenVINO's ``OPTIMIZATION_CAPABILITIES`` lists ``BF16``) and ``fp32`` elsewhere: emulated bf16 is slower.
``int8`` (a quantised backbone: different vectors) runs on engines registered with ``int8=True`` (OpenVINO); when
``auto`` picks it is decided with measurements by :mod:`simsearch.engines.auto_precision`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..backbones import Backbone
from ..config.embedding import AUTO, PRECISIONS
from ..errors import BackboneError
from ..system import cpu_has_bf16
from . import openvino as openvino_engine
from . import ray_data
from . import torch as torch_engine
from .protocol import Engine, EngineFactory

log = logging.getLogger("simsearch")

REFERENCE = "torch"  # always available; what `auto` falls back to
AUTO_ORDER = ("openvino", "torch")  # what `auto` picks: the first one available


def _always() -> bool:
    return True


def _never() -> bool:
    return False


@dataclass(frozen=True)
class EngineInfo:
    """A registered engine.

    ``available``: whether it can run here (asked by ``auto``); ``native_bf16``: whether ``precision="auto"``
    should pick bf16; ``substitute``: its vectors are the fp32 reference's, so it may add to an index embedded by
    another engine (which keeps its recorded settings); ``label``/``install``: for messages; ``int8``: it runs
    ``precision="int8"`` (with a ``calibration`` option).
    """

    name: str
    factory: EngineFactory
    available: Callable[[], bool] = _always
    native_bf16: Callable[[], bool] = cpu_has_bf16
    substitute: bool = False
    label: str = ""
    install: str = ""
    int8: bool = False


def _openvino_available() -> bool:
    return openvino_engine.openvino_available()  # looked up at call time (tests replace it)


def _openvino_bf16() -> bool:
    return openvino_engine.openvino_has_bf16()


_REGISTRY: dict[str, EngineInfo] = {
    "openvino": EngineInfo(
        "openvino",
        openvino_engine.create,
        _openvino_available,
        _openvino_bf16,
        label="OpenVINO",
        install="pip install openvino",
        int8=True,
    ),
    "torch": EngineInfo("torch", torch_engine.create, label="torch"),
    "ray": EngineInfo(
        "ray", ray_data.create, native_bf16=_never, substitute=True, label="Ray", install="pip install 'simsearch[ray]'"
    ),
}


def register_engine(
    name: str,
    factory: EngineFactory,
    *,
    available: Callable[[], bool] = _always,
    native_bf16: Callable[[], bool] = cpu_has_bf16,
    substitute: bool = False,
    replace: bool = False,
    int8: bool = False,
) -> None:
    """Make ``factory(backbone, precision, batch_size, **options) -> Engine`` available as engine ``name``."""
    if not isinstance(name, str) or not name or name != name.lower() or name == AUTO:
        raise ValueError(f"an engine name must be a lower-case word other than 'auto', not {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"engine {name!r} is already registered (pass replace=True to replace it)")
    _REGISTRY[name] = EngineInfo(name, factory, available, native_bf16, substitute, label=name, int8=int8)


def list_engines() -> list[str]:
    """Names of the registered engines (``auto`` picks among them)."""
    return sorted(_REGISTRY)


def engine_info(name: str) -> EngineInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"engine must be one of auto, {', '.join(list_engines())}, not {name!r}") from None


def resolve_engine(engine: str | None = AUTO) -> str:
    """``auto`` → the first of :data:`AUTO_ORDER` that is available here; a registered name → itself."""
    name = (engine or AUTO).lower()
    if name == AUTO:
        return next((n for n in AUTO_ORDER if n in _REGISTRY and _REGISTRY[n].available()), REFERENCE)
    return engine_info(name).name


def resolve_precision(engine: str, precision: str | None = AUTO) -> str:
    """``auto`` → ``bf16`` where ``engine`` runs it natively on this CPU, else ``fp32`` (the choice without
    measurements: see :mod:`.auto_precision` for the one that may pick int8)."""
    precision = (precision or AUTO).lower()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8" and not engine_info(engine).int8:
        int8_engines = ", ".join(n for n in list_engines() if _REGISTRY[n].int8) or "none"
        raise BackboneError(f"precision int8 needs an engine that runs it ({int8_engines}), not {engine}")
    if precision != AUTO:
        return precision
    return "bf16" if engine_info(engine).native_bf16() else "fp32"


def create_engine(
    backbone: Backbone,
    engine: str | None = AUTO,
    precision: str | None = AUTO,
    batch_size: int | None = None,
    *,
    fallback: bool | None = None,
    **options: Any,
) -> Engine:
    """An inference engine for ``backbone``: ``engine`` ``auto`` or a registered name, ``precision``
    auto|fp32|bf16|int8, ``options`` for the engine's factory (e.g. ``address`` for ``ray``, ``calibration``
    for int8).

    ``auto`` picks OpenVINO where it is installed (else torch) and bf16 where the CPU runs it natively (else
    fp32). When the engine cannot be made (not installed, the model does not convert...) ``auto`` falls back to
    torch with a warning; an explicit name raises :class:`BackboneError` unless ``fallback=True``.
    ``batch_size`` None means the engine's preferred size (OpenVINO 16, torch 32).
    """
    asked = (engine or AUTO).lower()
    info = engine_info(resolve_engine(asked))
    fallback = asked == AUTO if fallback is None else fallback
    resolved = resolve_precision(info.name, precision)
    if info.name == REFERENCE:
        return info.factory(backbone, resolved, batch_size, **options)
    try:
        return info.factory(backbone, resolved, batch_size, **options)
    except Exception as e:  # ImportError, conversion or compilation errors...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        label = info.label or info.name
        if not fallback or resolved == "int8":  # no fp32 stand-in for int8 vectors
            hint = f" ({info.install})" if isinstance(e, ImportError) and info.install else ""
            raise BackboneError(f"cannot run {backbone.name} with {label}{hint}: {first}") from None
        log.warning("%s cannot run %s (%s); using torch", label, backbone.name, first)
    return engine_info(REFERENCE).factory(backbone, resolve_precision(REFERENCE, precision), batch_size)
