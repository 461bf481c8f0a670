"""On-disk cache of backbones converted to OpenVINO (IR ``model.xml`` + ``model.bin``), keyed by their weights.

``$SIMSEARCH_CACHE_DIR/openvino/<arch>-<key>/`` (default ``~/.cache/simsearch/openvino``), where the key hashes
the weights' digest, the architecture, the input size and the versions of OpenVINO, torch and timm; OpenVINO's own
compiled blobs go into ``compiled/`` beside the IR. The :data:`OPENVINO_CACHE_ENTRIES` most recently used
entries are kept. Entries are written in a temporary folder and renamed into place, so concurrent processes
never see half an entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backbones import Backbone, weights_digest
from ..errors import BackboneError
from ..system import package_version

log = logging.getLogger("simsearch")

CACHE_ENV = "SIMSEARCH_CACHE_DIR"
OPENVINO_CACHE_ENTRIES = 16  # converted models kept on disk (least recently used ones are removed)
IR_FORMAT = 1  # bump when the way models are converted changes
STALE_TMP_SECONDS = 3600  # leftovers of interrupted conversions older than this are removed


def cache_dir() -> Path:
    """Root of simsearch's on-disk caches: ``$SIMSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/simsearch``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simsearch"


def _version_of(pkg: str) -> str:
    return package_version(pkg) or "?"


def ir_entry(weights_sha256: str, arch: str, input_size: Sequence[int]) -> Path:
    """Cache folder of the converted model with these weights (computable without importing torch)."""
    import openvino as ov

    desc = {
        "format": IR_FORMAT,
        "weights": weights_sha256,
        "arch": arch,
        "input_size": [int(v) for v in input_size],
        "openvino": ov.get_version(),
        "torch": _version_of("torch"),
        "timm": _version_of("timm"),
    }
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "openvino" / f"{arch.replace('/', '_').replace(':', '_')}-{key}"


def cached_ir(weights_sha256: str, arch: str, input_size: Sequence[int]) -> Path | None:
    """The cached OpenVINO model (``model.xml``) converted from these weights, if there is one."""
    xml = ir_entry(weights_sha256, arch, input_size) / "model.xml"
    return xml if xml.exists() and xml.with_suffix(".bin").exists() else None


def static_ir(entry: Path, batch: int, core: Any) -> Path | None:
    """The entry's model with its batch fixed to ``batch`` (``<entry>/batch-<n>/model.xml``), made once from the
    entry's IR and remade whenever that IR changes (its size and mtime are recorded beside it); None if it cannot
    be made. ``core``: the process's ``openvino.Core``.

    With every shape known, OpenVINO creates the model's kernels when compiling (and keeps them in its compiled
    cache) rather than on the first inference: a one-image query can then compile while it reads the index."""
    folder = entry / f"batch-{int(batch)}"
    xml = folder / "model.xml"
    stamp = _stamp(entry / "model.xml", entry / "model.bin")
    if stamp is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        if json.loads((folder / "source.json").read_text()) == stamp and xml.with_suffix(".bin").exists():
            return xml
    import openvino as ov

    tmp = None
    try:
        model = core.read_model(str(entry / "model.xml"))
        model.reshape({model.inputs[0]: ov.PartialShape([int(batch), *list(model.inputs[0].partial_shape)[1:]])})
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=entry))
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "source.json").write_text(json.dumps(stamp))
        shutil.rmtree(folder, ignore_errors=True)  # a stale one
        os.replace(tmp, folder)
        return xml
    except (OSError, RuntimeError) as e:  # read-only cache, another process replacing it...: the dynamic model
        log.debug("cannot make the batch-%d model in %s (%s)", batch, entry, e)
        return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _stamp(*files: Path) -> list | None:
    try:
        return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    except OSError:
        return None


def convert(backbone: Backbone) -> Any:
    """The backbone as an OpenVINO model with a dynamic batch and the transform's fixed input size."""
    import openvino as ov
    import torch

    _, h, w = (int(v) for v in backbone.data_config["input_size"])
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # tracer warnings (deprecation, data-dependent control flow)
        ov_model = ov.convert_model(backbone.model, example_input=torch.zeros(1, 3, h, w))
    ov_model.reshape({ov_model.inputs[0]: ov.PartialShape([-1, 3, h, w])})
    log.info("converted %s to OpenVINO in %.1f s", backbone.name, time.perf_counter() - t0)
    return ov_model


def load_or_convert(backbone: Backbone) -> tuple[Any, Path | None]:
    """(model or path of its IR, cache entry folder or None): converts once, then reuses the IR on disk."""
    import openvino as ov

    if backbone.model is not None and weights_digest(backbone.model) != backbone.weights_sha256:
        # changed in place since it was created (e.g. trained in this process): the digest no longer names it
        log.warning("the weights of %s changed since it was loaded; converting them without caching", backbone.name)
        return convert(backbone), None
    input_size = backbone.data_config["input_size"]
    entry = ir_entry(backbone.weights_sha256, backbone.arch, input_size)
    root, xml = entry.parent, entry / "model.xml"
    if cached_ir(backbone.weights_sha256, backbone.arch, input_size):
        with contextlib.suppress(OSError):
            os.utime(entry)  # most recently used
        return xml, entry
    if backbone.model is None:
        raise BackboneError(f"no cached OpenVINO model for {backbone.name} and no torch model to convert")
    ov_model = convert(backbone)
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
        prune(root, keep=entry)
        return xml, entry
    except OSError as e:
        log.warning("cannot cache the OpenVINO model in %s (%s); start-up will convert it every time", root, e)
        return ov_model, None


def prune(root: Path, keep: Path) -> None:
    """Keep the :data:`OPENVINO_CACHE_ENTRIES` most recently used entries (and ``keep``); drop stale temp folders."""
    entries = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[OPENVINO_CACHE_ENTRIES:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".*"):
        with contextlib.suppress(OSError):
            if tmp.is_dir() and time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
