"""``--precision auto`` with measurements: int8 only where it pays, else bf16 where native, else fp32.

For a new index of at least :attr:`~simsearch.config.embedding.Int8Spec.auto_min_photos` photos on an engine that
runs int8 (OpenVINO) with NNCF installed, :func:`choose_precision`

1. quantises the backbone on a sample of the collection (:mod:`.int8`; cached, and used if int8 is chosen),
2. times int8 against the precision ``auto`` would otherwise use, on this CPU (a few batches; cached per CPU),
3. checks retrieval on the bundled sample photos labelled by their folder (:func:`retrieval_guard`): leave-one-out
   R@1 and MAP@R of the int8 vectors must be within ``guard_tolerance`` of fp32's (cached per calibration).

It picks int8 when int8 is at least ``auto_min_speedup`` times faster and the guard holds, and says why in
:attr:`PrecisionChoice.reason` (recorded in the manifest, shown by ``simsearch info``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import Backbone
from ..config.embedding import INT8, Int8Spec
from ..system import cpu_count, cpu_flags
from . import cache, int8
from .registry import engine_info, resolve_precision
from .transform import Preprocessor

log = logging.getLogger("simsearch")

SPEED_FILE = "auto-speed.json"  # in the fp32 model's cache entry
GUARD_FILE = "auto-guard.json"
TIMING_BATCHES = 6  # batches of 16 per timed round
TIMING_ROUNDS = 4  # rounds per engine, alternating; the best of each counts


@dataclass(frozen=True)
class GuardResult:
    """Leave-one-out retrieval of the check set's photos among themselves, fp32 vs int8."""

    photos: int
    r1_fp32: float
    r1_int8: float
    map_fp32: float
    map_int8: float

    def holds(self, tolerance: float) -> bool:
        return self.r1_int8 >= self.r1_fp32 - tolerance and self.map_int8 >= self.map_fp32 - tolerance

    def describe(self) -> str:
        return (
            f"R@1 {self.r1_int8:.4f} vs {self.r1_fp32:.4f}, MAP@R {self.map_int8:.4f} vs {self.map_fp32:.4f} "
            f"(int8 vs fp32, {self.photos} check photos)"
        )


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``auto`` chose, why, and (for int8) the calibration photos; ``engine``: the chosen engine when the
    choice already built it."""

    precision: str
    reason: str
    calibration: int8.CalibrationSet | None = None
    engine: Any = None


def retrieval_metrics(vectors: np.ndarray, labels: Sequence[str]) -> tuple[float, float]:
    """Leave-one-out (R@1, MAP@R) of unit ``vectors`` among themselves (photos alone in their label are skipped)."""
    lab = np.asarray(labels)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    r1, aps = [], []
    for i in range(len(lab)):
        r = int(np.sum(lab == lab[i])) - 1
        if r == 0:
            continue
        rel = lab[order[i, :r]] == lab[i]
        r1.append(bool(lab[order[i, 0]] == lab[i]))
        aps.append(float(np.sum(np.cumsum(rel) / np.arange(1, r + 1) * rel) / r))
    if not aps:
        raise ValueError("the check set needs at least two photos with the same label")
    return round(float(np.mean(r1)), 4), round(float(np.mean(aps)), 4)


def embed_check_set(engine: Any, backbone: Backbone, photos: Sequence[Path], draft: bool = True) -> np.ndarray:
    pre = Preprocessor(backbone, numpy=True, draft=draft)
    x = np.stack([np.asarray(pre(p), dtype=np.float32) for p in photos])
    return np.concatenate([engine(x[i : i + 16]) for i in range(0, len(x), 16)])


def retrieval_guard(
    fp32: Any, quantized: Any, backbone: Backbone, check: Sequence[tuple[Path, str]] | None = None
) -> GuardResult:
    """R@1 and MAP@R of two engines' vectors of the check set (default: the bundled sample, by folder)."""
    check = list(check if check is not None else int8.sample_photos())
    photos, labels = [p for p, _ in check], [lab for _, lab in check]
    r1a, mapa = retrieval_metrics(embed_check_set(fp32, backbone, photos), labels)
    r1b, mapb = retrieval_metrics(embed_check_set(quantized, backbone, photos), labels)
    return GuardResult(len(photos), r1a, r1b, mapa, mapb)


def measure_speedup(fp32: Any, quantized: Any, input_size: Sequence[int]) -> float:
    """int8 images/s over the other engine's, on random inputs (best of :data:`TIMING_ROUNDS` alternating rounds)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, *(int(v) for v in input_size))).astype(np.float32)
    best = {id(fp32): 0.0, id(quantized): 0.0}
    for eng in (fp32, quantized):
        eng(x)  # warm-up
    for _ in range(TIMING_ROUNDS):
        for eng in (fp32, quantized):
            t0 = time.perf_counter()
            for _ in eng.stream((i, x) for i in range(TIMING_BATCHES)):
                pass
            best[id(eng)] = max(best[id(eng)], TIMING_BATCHES * len(x) / (time.perf_counter() - t0))
    return round(best[id(quantized)] / best[id(fp32)], 3)


def _read(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path | None, key: str, value: Any) -> None:
    if path is None:
        return
    with contextlib.suppress(OSError):
        data = _read(path)
        data[key] = value
        tmp = path.with_name(f".{path.name}.{time.time_ns()}")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)


def choose_precision(
    backbone: Backbone,
    engine: str,
    paths: Sequence[str | Path],
    *,
    draft: bool = True,
    spec: Int8Spec | None = None,
    check: Sequence[tuple[Path, str]] | None = None,
    make_engine: Callable[..., Any] | None = None,
) -> PrecisionChoice:
    """The precision for a new index of ``paths`` embedded by ``engine`` (a resolved engine name), and why.

    ``check``: the labelled check set of the guard (default: the bundled sample photos); ``make_engine(backbone,
    precision, calibration=...)``: how the candidates are built (default: the engine's factory); ``spec`` None:
    :data:`~simsearch.config.embedding.INT8` (looked up at call time)."""
    spec = spec or INT8
    static = resolve_precision(engine, "auto")
    if not engine_info(engine).int8:
        return PrecisionChoice(static, f"{static}: engine {engine} has no int8")
    if len(paths) < spec.auto_min_photos:
        return PrecisionChoice(
            static,
            f"{static}: {len(paths)} photos to embed; int8 is tried from {spec.auto_min_photos} "
            f"(its one-off quantisation would not pay)",
        )
    if not int8.nncf_available():
        return PrecisionChoice(static, f"{static}: int8 needs NNCF ({int8.INSTALL})")
    factory = make_engine or (lambda bb, p, **kw: engine_info(engine).factory(bb, p, None, **kw))
    _, fp32_entry = cache.load_or_convert(backbone)
    speed_file = fp32_entry / SPEED_FILE if fp32_entry else None
    guard_file = fp32_entry / GUARD_FILE if fp32_entry else None
    flags = ",".join(sorted(cpu_flags()))
    cpu_key = hashlib.sha256(f"{flags}|{cpu_count()}|{static}|{_ov_version()}".encode()).hexdigest()[:16]
    speedup = _read(speed_file).get(cpu_key)

    def too_slow(x: float) -> PrecisionChoice | None:
        if x >= spec.auto_min_speedup:
            return None
        why = f"int8 measured {x:.2f}x the speed of {static} on this CPU (needs {spec.auto_min_speedup:.2f}x)"
        return PrecisionChoice(static, f"{static}: {why}")

    if isinstance(speedup, (int, float)) and (slow := too_slow(speedup)):
        return slow  # known before quantising anything
    cal = int8.calibration_set(paths, spec, draft=draft)
    t0 = time.perf_counter()
    quantized: Any = factory(backbone, "int8", calibration=cal)
    fp32 = factory(backbone, static)
    if not isinstance(speedup, (int, float)):
        speedup = measure_speedup(fp32, quantized, backbone.data_config["input_size"])
        if _busy():
            log.info("int8 timing (%.2fx) taken on a busy machine: not kept, measured again next time", speedup)
        else:
            _write(speed_file, cpu_key, speedup)
        if slow := too_slow(speedup):
            return dataclasses.replace(slow, engine=fp32)

    check_list = list(check if check is not None else int8.sample_photos())
    check_digest = hashlib.sha256("\n".join(f"{p}|{lab}" for p, lab in check_list).encode()).hexdigest()[:16]
    guard_key = f"{quantized.calibration['digest']}|{check_digest}|{static}|{draft}"
    cached = _read(guard_file).get(guard_key)
    try:
        guard = GuardResult(**cached) if isinstance(cached, dict) else None
    except TypeError:
        guard = None
    if guard is None:
        guard = retrieval_guard(fp32, quantized, backbone, check_list)
        _write(guard_file, guard_key, asdict(guard))
    log.info("auto precision: int8 %.2fx, guard %s (%.1f s)", speedup, guard.describe(), time.perf_counter() - t0)
    if not guard.holds(spec.guard_tolerance):
        return PrecisionChoice(
            static,
            f"{static}: int8 ({speedup:.2f}x faster here) failed the retrieval guard: {guard.describe()}, "
            f"tolerance {spec.guard_tolerance}",
            engine=fp32,
        )
    return PrecisionChoice(
        "int8",
        f"int8: {speedup:.2f}x the speed of {static} on this CPU, retrieval guard held: {guard.describe()}, "
        f"tolerance {spec.guard_tolerance}",
        cal,
        engine=quantized,
    )


def _busy() -> bool:
    """Whether other processes keep this machine's CPUs busy (then a timing is not worth keeping)."""
    try:
        return os.getloadavg()[0] > 1.5 * cpu_count()
    except OSError:
        return False


def _ov_version() -> str:
    try:
        import openvino as ov

        return str(ov.get_version())
    except ImportError:
        return "?"
