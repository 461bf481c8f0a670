"""Inference engines: run a backbone on a batch of preprocessed images, return L2-normalised float32 vectors.

Every engine is a callable ``engine(batch) -> (B, dim) float32`` (``batch`` a ``(B, 3, H, W)`` float tensor or
array, already normalised by the backbone's transform), with ``name``, ``precision`` (the precision actually
used), ``batch_size`` (its preferred batch) and ``settings()`` (what an index records). An engine may also have
``stream(batches)`` — submit ``(key, batch)`` pairs, get ``(key, vectors)`` back in the same order — which the
:class:`~simsearch.embed.Embedder` uses to keep inference running while the next batch is decoded.

``create_engine(backbone, engine="auto", precision="auto")`` chooses at run time:

* ``openvino`` (default where the ``openvino`` package is installed): the timm module converted with
  ``openvino.convert_model``, compiled for the CPU with the throughput hint and run through an
  ``AsyncInferQueue``. The converted model and OpenVINO's compiled blobs are cached on disk under
  ``$SIMSEARCH_CACHE_DIR/openvino`` (default ``~/.cache/simsearch/openvino``) so later start-ups take a fraction
  of a second.
* ``torch``: the reference (and what fine-tuning uses), ``channels_last`` memory format, ``bf16`` autocast when
  asked.

``precision="auto"`` means ``bf16`` where the CPU computes it natively (AVX-512 BF16 or AMX; OpenVINO's
``OPTIMIZATION_CAPABILITIES`` lists ``BF16``) and ``fp32`` elsewhere; emulated bf16 is slower than fp32.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from .backbones import Backbone, l2_normalize
from .errors import BackboneError

log = logging.getLogger("simsearch")

ENGINES = ("auto", "openvino", "torch")
PRECISIONS = ("auto", "fp32", "bf16")
CACHE_ENV = "SIMSEARCH_CACHE_DIR"
OPENVINO_CACHE_ENTRIES = 16  # converted models kept on disk (least recently used ones are removed)
_IR_FORMAT = 1  # bump when the way models are converted changes


# ------------------------------------------------------------------------------------------- detection


def cpu_count() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period) + 0.5)))
    return max(1, n)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX-BF16 on x86)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=1)
def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported and sees a CPU device."""
    try:
        return "CPU" in _ov_core().available_devices
    except Exception:  # ImportError, or a broken install
        return False


@lru_cache(maxsize=1)
def _ov_core():
    import openvino as ov

    return ov.Core()


def openvino_has_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU."""
    try:
        return "BF16" in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


def resolve_engine(engine: str | None = "auto") -> str:
    """``auto`` → ``openvino`` where installed and usable, else ``torch``."""
    engine = (engine or "auto").lower()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "auto":
        return "openvino" if openvino_available() else "torch"
    return engine


def resolve_precision(engine: str, precision: str | None = "auto") -> str:
    """``auto`` → ``bf16`` where ``engine`` runs it natively on this CPU, else ``fp32``."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    native = openvino_has_bf16() if engine == "openvino" else cpu_has_bf16()
    return "bf16" if native else "fp32"


def _set_torch_threads() -> None:
    """Never more torch threads than usable CPUs (torch counts the host's cores inside containers)."""
    import torch

    n = cpu_count()
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------- torch


class TorchEngine:
    """Runs a backbone with PyTorch on the CPU (``channels_last``; ``bf16`` autocast where asked).

    Note that the backbone's module is converted to ``channels_last`` in place (same weights, same results).
    """

    name = "torch"

    def __init__(
        self, backbone: Backbone, precision: str = "fp32", batch_size: int | None = None, *, channels_last: bool = True
    ):
        import torch

        if precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.backbone = backbone
        self.precision = resolve_precision("torch", precision)
        if self.precision == "bf16" and not cpu_has_bf16():
            log.warning("this CPU has no native bf16 (AVX-512 BF16/AMX): torch bf16 will be much slower than fp32")
        self.batch_size = int(batch_size or 32)
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = backbone.model.to(memory_format=self.memory_format)
        _set_torch_threads()

    def settings(self) -> dict:
        return {"engine": self.name, "precision": self.precision}

    def __call__(self, batch) -> np.ndarray:
        import torch

        if not isinstance(batch, torch.Tensor):
            batch = torch.from_numpy(np.asarray(batch, np.float32))
        if len(batch) == 0:
            return np.zeros((0, self.backbone.dim), np.float32)
        with torch.inference_mode():
            x = batch.contiguous(memory_format=self.memory_format)
            if self.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = self.model(x)
            else:
                y = self.model(x)
            return l2_normalize(y.float().numpy())

    def __repr__(self) -> str:
        return f"<TorchEngine {self.backbone.name} {self.precision} batch={self.batch_size}>"


# ------------------------------------------------------------------------------------------- OpenVINO


def cache_dir() -> Path:
    """Root of simsearch's on-disk caches: ``$SIMSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/simsearch``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simsearch"


def _ir_entry(weights_sha256: str, arch: str, input_size) -> Path:
    """Cache folder of the converted model with these weights (computable without importing torch)."""
    from importlib.metadata import PackageNotFoundError, version

    import openvino as ov

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "?"

    desc = {
        "format": _IR_FORMAT,
        "weights": weights_sha256,
        "arch": arch,
        "input_size": [int(v) for v in input_size],
        "openvino": ov.get_version(),
        "torch": ver("torch"),
        "timm": ver("timm"),
    }
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "openvino" / f"{arch.replace('/', '_').replace(':', '_')}-{key}"


def cached_ir(weights_sha256: str, arch: str, input_size) -> Path | None:
    """The cached OpenVINO model (``model.xml``) converted from these weights, if there is one."""
    xml = _ir_entry(weights_sha256, arch, input_size) / "model.xml"
    return xml if xml.exists() and xml.with_suffix(".bin").exists() else None


def _convert(backbone: Backbone):
    """The backbone as an OpenVINO model with a dynamic batch and the transform's fixed input size."""
    import openvino as ov
    import torch

    _, h, w = (int(v) for v in backbone.data_config["input_size"])
    model = backbone.model
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # tracer warnings (deprecation, data-dependent control flow)
        ov_model = ov.convert_model(model, example_input=torch.zeros(1, 3, h, w))
    ov_model.reshape({ov_model.inputs[0]: ov.PartialShape([-1, 3, h, w])})
    log.info("converted %s to OpenVINO in %.1f s", backbone.name, time.perf_counter() - t0)
    return ov_model


def _cached_ir(backbone: Backbone) -> tuple[object, Path | None]:
    """(model or path of its IR, cache entry folder or None): converts once, then reuses the IR on disk."""
    import openvino as ov

    if backbone.model is not None:
        from .backbones import weights_digest

        if weights_digest(backbone.model) != backbone.weights_sha256:  # changed in place since it was created
            log.warning("the weights of %s changed since it was loaded; converting them without caching", backbone.name)
            return _convert(backbone), None
    entry = _ir_entry(backbone.weights_sha256, backbone.arch, backbone.data_config["input_size"])
    root, xml = entry.parent, entry / "model.xml"
    if cached_ir(backbone.weights_sha256, backbone.arch, backbone.data_config["input_size"]):
        with contextlib.suppress(OSError):
            os.utime(entry)  # most recently used
        return xml, entry
    if backbone.model is None:
        raise BackboneError(f"no cached OpenVINO model for {backbone.name} and no torch model to convert")
    ov_model = _convert(backbone)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
        try:
            ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)  # keep fp32 weights
            try:
                os.replace(tmp, entry)
            except OSError:  # another process stored it first
                if not xml.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune_cache(root, keep=entry)
        return xml, entry
    except OSError as e:
        log.warning("cannot cache the OpenVINO model in %s (%s); start-up will convert it every time", root, e)
        return ov_model, None


def _prune_cache(root: Path, keep: Path) -> None:
    entries = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[OPENVINO_CACHE_ENTRIES:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".*"):  # leftovers of interrupted conversions, an hour old
        with contextlib.suppress(OSError):
            if tmp.is_dir() and time.time() - tmp.stat().st_mtime > 3600:
                shutil.rmtree(tmp, ignore_errors=True)


class OpenVINOEngine:
    """Runs a backbone with OpenVINO on the CPU: throughput hint, asynchronous infer requests, cached model.

    ``precision`` ``bf16`` sets ``INFERENCE_PRECISION_HINT``; where the CPU has no bf16 OpenVINO computes in
    fp32 and :attr:`precision` says so. fp32 is always asked for explicitly (OpenVINO would otherwise pick
    bf16 by itself on CPUs that have it).
    """

    name = "openvino"

    def __init__(
        self, backbone: Backbone, precision: str = "auto", batch_size: int | None = None, *, threads: int | None = None
    ):
        import openvino as ov

        self._ov = ov
        self.backbone = backbone
        self.dim = backbone.dim
        requested = resolve_precision("openvino", precision)
        if requested == "bf16" and not openvino_has_bf16():
            log.warning("this CPU has no native bf16: OpenVINO computes in fp32")
        self.batch_size = int(batch_size or 16)
        core = _ov_core()
        model, entry = _cached_ir(backbone)
        config = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "bf16" if requested == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads or cpu_count(),
        }
        if entry is not None:
            config["CACHE_DIR"] = str(entry / "compiled")  # OpenVINO's own compiled-blob cache
        t0 = time.perf_counter()
        model_arg = str(model) if isinstance(model, Path) else model
        try:
            self.compiled = core.compile_model(model_arg, "CPU", config)
        except RuntimeError:
            if entry is None:
                raise
            log.warning("the cached OpenVINO model in %s is unusable; converting again", entry)
            shutil.rmtree(entry, ignore_errors=True)
            model, entry = _cached_ir(backbone)
            config.pop("CACHE_DIR", None)
            self.compiled = core.compile_model(str(model) if isinstance(model, Path) else model, "CPU", config)
        log.debug("compiled the OpenVINO model in %.2f s", time.perf_counter() - t0)
        effective = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        self.precision = "bf16" if ("bf16" in effective or "bfloat16" in effective) else "fp32"  # "<Type: 'bfloat16'>"
        self.requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # infer requests for synchronous calls

    def settings(self) -> dict:
        return {"engine": self.name, "precision": self.precision}

    def __call__(self, batch) -> np.ndarray:
        x = _as_array(batch)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            request.infer({0: x})
            return l2_normalize(request.get_output_tensor(0).data)
        finally:
            self._idle.put(request)

    def stream(self, batches: Iterable[tuple[object, object]]) -> Iterator[tuple[object, np.ndarray]]:
        """Infer ``(key, batch)`` pairs asynchronously; yields ``(key, vectors)`` in the order given.

        At most :attr:`requests` batches are in flight; the next one is taken from ``batches`` (e.g. decoded
        meanwhile by worker threads) as soon as a request is free.
        """
        jobs = self._ov.AsyncInferQueue(self.compiled, self.requests)
        done: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []

        def finished(request, seq):
            try:
                done[seq] = l2_normalize(request.get_output_tensor(0).data)  # copies: the request is reused
            except BaseException as e:  # surfaced in the caller's thread
                errors.append(e)
                done[seq] = np.zeros((0, self.dim), np.float32)

        jobs.set_callback(finished)
        waiting: deque[tuple[int, object]] = deque()
        try:
            for seq, (key, batch) in enumerate(batches):
                x = None if batch is None else _as_array(batch)
                if x is None or len(x) == 0:
                    done[seq] = np.zeros((0, self.dim), np.float32)
                else:
                    jobs.start_async({0: x}, seq)  # blocks while every request is busy
                waiting.append((seq, key))
                while waiting and waiting[0][0] in done:
                    s, k = waiting.popleft()
                    self._raise(errors)
                    yield k, done.pop(s)
            jobs.wait_all()
            self._raise(errors)
            while waiting:
                s, k = waiting.popleft()
                yield k, done.pop(s)
        finally:
            jobs.wait_all()  # never leave requests running on buffers the caller may free

    @staticmethod
    def _raise(errors: list) -> None:
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"<OpenVINOEngine {self.backbone.name} {self.precision} batch={self.batch_size} x{self.requests}>"


def _as_array(batch) -> np.ndarray:
    if hasattr(batch, "numpy"):  # torch tensor (the transform's output): zero-copy view
        batch = batch.detach().contiguous().numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


# ------------------------------------------------------------------------------------------- torch-free path

_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class NumpyTransform:
    """timm's eval transform (resize short side, centre crop, to tensor, normalise) with PIL and numpy only.

    Gives the same arrays as ``timm.data.create_transform(**data_config)`` (same Pillow resize and crop
    arithmetic as torchvision, same float32 operations), without importing torch: the OpenVINO engine uses it,
    so that a query process can start in well under a second. :meth:`for_config` returns None for the
    configurations it does not reproduce (then the timm transform is used).
    """

    def __init__(self, data_config: dict):
        import math

        _, self.height, self.width = (int(v) for v in data_config["input_size"])
        crop_pct = data_config.get("crop_pct") or 0.875
        self.scale = math.floor(self.height / crop_pct)
        self.squash = data_config.get("crop_mode") == "squash"
        self.filter = _PIL_FILTERS[data_config.get("interpolation") or "bilinear"]
        self.mean = np.asarray(data_config["mean"], np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(data_config["std"], np.float32).reshape(-1, 1, 1)

    @classmethod
    def for_config(cls, data_config: dict) -> NumpyTransform | None:
        try:
            _, h, w = (int(v) for v in data_config["input_size"])
            supported = (
                h == w
                and data_config.get("crop_mode", "center") in ("center", "squash", None)
                and (data_config.get("interpolation") or "bilinear") in _PIL_FILTERS
                and not data_config.get("crop_border_pixels")
                and len(data_config["mean"]) == len(data_config["std"]) == 3
            )
        except (KeyError, TypeError, ValueError):
            return None
        return cls(data_config) if supported else None

    def __call__(self, img) -> np.ndarray:
        from PIL import Image

        w, h = img.size
        if self.squash:
            size = (self.scale, self.scale)
        elif w <= h:  # torchvision: short side to `scale`, long side truncated
            size = (self.scale, int(self.scale * h / w))
        else:
            size = (int(self.scale * w / h), self.scale)
        if size != (w, h):
            img = img.resize(size, self.filter)
        w, h = img.size
        cw, ch = self.width, self.height
        if cw > w or ch > h:  # torchvision pads with black, then crops
            padded = Image.new(img.mode, (max(w, cw), max(h, ch)), 0)
            padded.paste(img, ((cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0))
            img, (w, h) = padded, padded.size
        top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
        img = img.crop((left, top, left + cw, top + ch))
        x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        x -= self.mean
        x /= self.std
        return x


class CachedBackbone(Backbone):
    """A stand-in for an index's backbone made from its manifest alone, for the OpenVINO engine when the model
    converted from exactly those weights (same digest) is in the cache: no torch model, numpy preprocessing."""

    def transform(self):
        return NumpyTransform(self.data_config)


def cached_backbone(name: str, arch: str, weights_sha256: str, data_config: dict, dim: int) -> CachedBackbone | None:
    """A :class:`CachedBackbone` when OpenVINO, a cached model for these weights and a numpy transform exist."""
    if NumpyTransform.for_config(data_config) is None or not openvino_available():
        return None
    if cached_ir(weights_sha256, arch, data_config["input_size"]) is None:
        return None
    return CachedBackbone(
        name=name, arch=arch, model=None, data_config=data_config, weights_sha256=weights_sha256, dim=int(dim)
    )


# ------------------------------------------------------------------------------------------- factory


def create_engine(
    backbone: Backbone,
    engine: str | None = "auto",
    precision: str | None = "auto",
    batch_size: int | None = None,
    *,
    fallback: bool | None = None,
):
    """An inference engine for ``backbone``: ``engine`` auto|openvino|torch, ``precision`` auto|fp32|bf16.

    ``auto`` picks OpenVINO where it is installed (else torch) and bf16 where the CPU runs it natively (else
    fp32). When OpenVINO cannot be used (not installed, or the model does not convert) ``auto`` falls back to
    torch with a warning; an explicit ``openvino`` raises :class:`BackboneError` unless ``fallback=True``.
    ``batch_size`` None means the engine's preferred size (OpenVINO 16, torch 32).
    """
    asked = (engine or "auto").lower()
    name = resolve_engine(asked)
    fallback = asked == "auto" if fallback is None else fallback
    if name == "openvino":
        try:
            return OpenVINOEngine(backbone, precision or "auto", batch_size)
        except Exception as e:  # ImportError, conversion or compilation errors
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            if not fallback:
                hint = " (pip install openvino)" if isinstance(e, ImportError) else ""
                raise BackboneError(f"cannot run {backbone.name} with OpenVINO{hint}: {first}") from None
            log.warning("OpenVINO cannot run %s (%s); using torch", backbone.name, first)
    return TorchEngine(backbone, precision or "auto", batch_size)


def engine_settings(engine) -> dict:
    """What an index records about the engine that embedded it (``custom`` for a plain callable)."""
    if hasattr(engine, "settings"):
        return dict(engine.settings())
    return {"engine": getattr(engine, "name", "custom"), "precision": getattr(engine, "precision", "fp32")}
