"""The OpenVINO engine (default where the ``openvino`` package is installed).

The timm module is converted with ``openvino.convert_model`` (once: see :mod:`simsearch.engines.cache`), compiled
for the CPU with the throughput hint and run through an ``AsyncInferQueue`` (:meth:`OpenVINOEngine.stream`).
``openvino`` is imported only when an engine is made or availability is asked.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backbones import Backbone, l2_normalize
from ..system import cpu_count
from . import cache
from .runtime import import_openvino

if TYPE_CHECKING:
    from .protocol import Batch

log = logging.getLogger("simsearch")

DEFAULT_BATCH = 16


@lru_cache(maxsize=1)
def ov_core() -> Any:
    """The process's one ``openvino.Core`` (it caches devices and compiled models)."""
    return import_openvino().Core()  # without the conversion API until it is needed (see .runtime)


@lru_cache(maxsize=1)
def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported and has its CPU plugin (asked of that plugin alone: listing
    every device would also load the GPU and NPU plugins, a query start-up's worth of shared libraries)."""
    try:
        return "CPU" in ov_core().get_versions("CPU")
    except Exception:  # ImportError, or a broken install
        return False


def openvino_has_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU."""
    try:
        return "BF16" in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


def compile_config(precision: str, hint: str, threads: int | None, entry: Path | None) -> dict[str, Any]:
    """The CPU plugin's configuration of an :class:`OpenVINOEngine` (``precision`` fp32, bf16 or int8; ``entry``:
    the model's cache folder, whose ``compiled/`` holds OpenVINO's compiled blobs)."""
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": hint.upper(),
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads or cpu_count(),
    }
    if entry is not None:
        config["CACHE_DIR"] = str(entry / "compiled")  # OpenVINO's own compiled-blob cache
    return config


# compiles started ahead of the engine that will use them (precompile), by model file and configuration
_AHEAD: dict[str, Future] = {}
_AHEAD_LOCK = threading.Lock()


def _ahead_key(model: Path, config: dict[str, Any]) -> str:
    return repr((str(model), sorted(config.items())))


def take_ahead(model: Path, config: dict[str, Any]) -> Future | None:
    """The compile of ``model`` with ``config`` that :func:`precompile` started, if any (taken once): its result is
    the compiled model, or the compile's error."""
    with _AHEAD_LOCK:
        return _AHEAD.pop(_ahead_key(model, config), None)


def precompile(
    weights_sha256: str,
    arch: str,
    input_size: Sequence[int],
    precision: str,
    *,
    static_batch: int,
    hint: str = "throughput",
    threads: int | None = None,
) -> bool:
    """Start compiling, in a thread, the cached model of these weights with its batch fixed to ``static_batch``,
    as an :class:`OpenVINOEngine` of that ``precision`` (fp32 or bf16), ``hint``, ``threads`` and
    ``static_batch`` will (the compile releases the GIL); the engine then takes it instead of compiling. Needs
    only OpenVINO and the on-disk cache, not the backbone, the transform or the photo decoders: a one-image query
    starts it right after importing OpenVINO. Whether a compile was started (not without a cached model)."""
    if precision not in ("fp32", "bf16") or not openvino_available():
        return False
    if cache.cached_ir(weights_sha256, arch, input_size) is None:
        return False
    core = ov_core()
    entry = cache.ir_entry(weights_sha256, arch, input_size)
    static = cache.static_ir(entry, static_batch, core)
    if static is None:
        return False
    config = compile_config(precision, hint, threads, entry)
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(core.compile_model(str(static), "CPU", config))
        except BaseException as e:  # raised where it is taken (the engine then handles it as its own compile's)
            future.set_exception(e)

    with _AHEAD_LOCK:
        _AHEAD[_ahead_key(static, config)] = future
    threading.Thread(target=run, name="simsearch-compile").start()  # not a daemon: never cut short at exit
    return True


def as_array(batch: Batch) -> np.ndarray:
    if hasattr(batch, "numpy"):  # torch tensor (the transform's output): zero-copy view
        batch = batch.detach().contiguous().numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


class OpenVINOEngine:
    """Runs a backbone with OpenVINO on the CPU: throughput hint, asynchronous infer requests, cached model.

    ``precision`` ``bf16`` sets ``INFERENCE_PRECISION_HINT``; where the CPU has no bf16 OpenVINO computes in
    fp32 and :attr:`precision` says so. fp32 is always asked for explicitly (OpenVINO would otherwise pick
    bf16 by itself on CPUs that have it). ``int8`` runs the backbone quantised by NNCF (:mod:`.int8`) on
    ``calibration`` (a :class:`~simsearch.engines.int8.CalibrationSet`, or an index's recorded calibration; None:
    the bundled sample photos); :attr:`calibration` is then its record.

    ``static_batch`` (fp32/bf16): compile the model with its batch fixed to that size (:func:`.cache.static_ir`):
    OpenVINO then makes its kernels while compiling, not on the first inference, e.g. for a one-image query that
    compiles in a thread while it reads the index. Batches of another size (and :meth:`stream`) switch to the
    general model, compiled then.
    """

    name = "openvino"

    def __init__(
        self,
        backbone: Backbone,
        precision: str = "auto",
        batch_size: int | None = None,
        *,
        threads: int | None = None,
        hint: str = "throughput",
        calibration: Any = None,
        static_batch: int | None = None,
    ):
        import openvino as ov

        if precision not in ("auto", "fp32", "bf16", "int8"):
            raise ValueError(f"precision must be auto, fp32, bf16 or int8, not {precision!r}")
        if hint not in ("throughput", "latency"):  # latency: one stream (a single image: a third less to load)
            raise ValueError(f"hint must be throughput or latency, not {hint!r}")
        if precision == "auto":  # bf16 where OpenVINO runs it natively on this CPU
            precision = "bf16" if openvino_has_bf16() else "fp32"
        self._ov = ov
        self.backbone = backbone
        self.dim = backbone.dim
        if precision == "bf16" and not openvino_has_bf16():
            log.warning("this CPU has no native bf16: OpenVINO computes in fp32")
        self.batch_size = int(batch_size or DEFAULT_BATCH)
        core = ov_core()
        self.calibration: dict | None = None
        if precision == "int8":
            from . import int8  # the quantisation code (and the photo decoders) only when it is used

            cal = calibration if calibration is not None else int8.calibration_set([])
            model, entry, self.calibration = int8.load_or_quantize(backbone, cal)
        else:
            model, entry = cache.load_or_convert(backbone)
        config = compile_config(precision, hint, threads, entry)
        self._config, self._general, self._entry, self.static_batch = config, model, entry, None
        self._switch = threading.Lock()
        self._ahead: Future | None = None  # the model being compiled since precompile, taken on first use
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # infer requests for synchronous calls
        t0 = time.perf_counter()
        static = None
        if static_batch and entry is not None and self.calibration is None:
            static = cache.static_ir(entry, static_batch, core)
        if static is not None and static_batch:  # batches of that size only (others: the general model, later)
            self._static = static
            self._ahead = take_ahead(static, config)
            if self._ahead is not None:  # compiling already: waited for at the first use (e.g. after a decode)
                self.static_batch = int(static_batch)
                return
            try:
                self._compiled, self.static_batch = core.compile_model(str(static), "CPU", config), int(static_batch)
            except RuntimeError as e:
                self._static_failed(e)
        if self.static_batch is None:
            self._compile_general()
        log.debug("compiled the OpenVINO model in %.2f s", time.perf_counter() - t0)
        self._describe()

    def _static_failed(self, e: RuntimeError) -> None:
        """The fixed-batch model does not compile (damaged): removed, made again next time; the general one answers."""
        log.warning("cannot compile the batch-%s model in %s (%s); using the general one", self._static, self._entry, e)
        shutil.rmtree(self._static.parent, ignore_errors=True)
        self.static_batch = None

    def _compile_general(self) -> None:
        model, config, core = self._general, self._config, ov_core()
        try:
            self._compiled = core.compile_model(str(model) if isinstance(model, Path) else model, "CPU", config)
        except RuntimeError:
            if self._entry is None or self.calibration is not None:
                raise
            log.warning("the cached OpenVINO model in %s is unusable; converting again", self._entry)
            shutil.rmtree(self._entry, ignore_errors=True)
            model, self._entry = cache.load_or_convert(self.backbone)
            config.pop("CACHE_DIR", None)
            self._general = model
            self._compiled = core.compile_model(str(model) if isinstance(model, Path) else model, "CPU", config)

    def _describe(self) -> None:
        """What the compiled model runs: its effective precision and number of infer requests."""
        effective = str(self._compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        self._precision = "bf16" if ("bf16" in effective or "bfloat16" in effective) else "fp32"  # "<Type: 'bfloat16'>"
        if self.calibration is not None:
            self._precision = "int8"
        self._requests = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def _ready(self) -> None:
        """Take the model compiled ahead (:func:`precompile`), once it is done, as the constructor would have taken
        its own compile: its failure makes the general model answer."""
        with self._switch:
            ahead, self._ahead = self._ahead, None
            if ahead is None:
                return
            try:
                self._compiled = ahead.result()
            except RuntimeError as e:
                self._static_failed(e)
                self._compile_general()
            self._describe()

    @property
    def compiled(self) -> Any:
        """The compiled model (OpenVINO's ``CompiledModel``) answering now."""
        self._ready()
        return self._compiled

    @property
    def precision(self) -> str:
        """fp32, bf16 (where OpenVINO runs it) or int8."""
        self._ready()
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:  # the Engine protocol's attribute
        self._ready()
        self._precision = value

    @property
    def requests(self) -> int:
        """Infer requests in flight (:meth:`stream`): OpenVINO's optimal number for the compiled model."""
        self._ready()
        return self._requests

    def _model_for(self, n: int | None) -> tuple[Any, queue.SimpleQueue]:
        """(compiled model, its idle infer requests) for a batch of ``n`` images (None: any size). A model compiled
        for ``static_batch`` images gives way to the general one, for good, at the first batch of another size."""
        self._ready()
        with self._switch:
            if self.static_batch is not None and n != self.static_batch:
                model = self._general
                compiled = ov_core().compile_model(
                    str(model) if isinstance(model, Path) else model, "CPU", self._config
                )
                self._compiled, self._idle, self.static_batch = compiled, queue.SimpleQueue(), None
            return self._compiled, self._idle

    def settings(self) -> dict[str, str]:
        return {"engine": self.name, "precision": self.precision}

    def __call__(self, batch: Batch) -> np.ndarray:
        x = as_array(batch)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        compiled, idle = self._model_for(len(x))
        try:
            request = idle.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            request.infer({0: x})
            return l2_normalize(request.get_output_tensor(0).data)
        finally:
            idle.put(request)

    def stream(self, batches: Iterable[tuple[Any, Batch | None]]) -> Iterator[tuple[Any, np.ndarray]]:
        """Infer ``(key, batch)`` pairs asynchronously; yields ``(key, vectors)`` in the order given.

        At most :attr:`requests` batches are in flight; the next one is taken from ``batches`` (e.g. decoded
        meanwhile by worker threads) as soon as a request is free.
        """
        jobs = self._ov.AsyncInferQueue(self._model_for(None)[0], self.requests)
        done: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []

        def finished(request: Any, seq: int) -> None:
            try:
                done[seq] = l2_normalize(request.get_output_tensor(0).data)  # copies: the request is reused
            except BaseException as e:  # surfaced in the caller's thread
                errors.append(e)
                done[seq] = np.zeros((0, self.dim), np.float32)

        jobs.set_callback(finished)
        waiting: deque[tuple[int, Any]] = deque()
        try:
            for seq, (key, batch) in enumerate(batches):
                x = None if batch is None else as_array(batch)
                if x is None or len(x) == 0:
                    done[seq] = np.zeros((0, self.dim), np.float32)
                else:
                    jobs.start_async({0: x}, seq)  # blocks while every request is busy
                waiting.append((seq, key))
                while waiting and waiting[0][0] in done:
                    s, k = waiting.popleft()
                    _raise_first(errors)
                    yield k, done.pop(s)
            jobs.wait_all()
            _raise_first(errors)
            while waiting:
                s, k = waiting.popleft()
                yield k, done.pop(s)
        finally:
            jobs.wait_all()  # never leave requests running on buffers the caller may free

    def __repr__(self) -> str:
        return f"<OpenVINOEngine {self.backbone.name} {self.precision} batch={self.batch_size} x{self.requests}>"


def _raise_first(errors: list[BaseException]) -> None:
    if errors:
        raise errors[0]


def create(backbone: Backbone, precision: str, batch_size: int | None, **options: Any) -> OpenVINOEngine:
    """The registry's factory (``options``: ``threads``, ``hint``, ``calibration``, ``static_batch``)."""
    return OpenVINOEngine(backbone, precision, batch_size, **options)
