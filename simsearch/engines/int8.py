"""int8 models for the OpenVINO engine: NNCF post-training quantisation of a backbone, cached on disk.

The backbone's OpenVINO model (:mod:`.cache`) is quantised with ``nncf.quantize`` on a calibration set: about
:attr:`~simsearch.config.embedding.Int8Spec.calibration_size` photos spread over the collection being indexed, or
the bundled sample photos when the collection is tiny (:func:`calibration_set`). The calibration's digest (of the
photos' bytes and the preprocessing that makes them model inputs: :func:`calibration_digest`) names the quantised model: it is stored in the fp32 model's cache entry as
``int8-<key>/model.xml`` (key: calibration digest + quantiser settings), recorded in the index's manifest, and
looked up by it when the index's new images and queries are embedded. ``nncf`` is imported only to quantise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import Backbone
from ..config.embedding import INT8, Int8Spec
from ..errors import BackboneError, ImageError
from ..images import IMAGE_EXTENSIONS
from ..system import package_version
from . import cache
from .transform import Preprocessor

log = logging.getLogger("simsearch")

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample"  # the bundled photos, one folder per label
INT8_FORMAT = 1  # bump when the way models are quantised changes
CALIBRATION_DIGEST = 2  # how calibration_digest names photos (1, before: a hash of the decoded model inputs)
INT8_ENTRIES = 4  # quantised models kept per fp32 model (least recently used ones are removed)
INSTALL = "pip install 'simsearch[int8]'"


@dataclass(frozen=True)
class CalibrationSet:
    """Photos to quantise a backbone on: ``source`` ``collection`` (a sample of the photos being indexed) or
    ``sample`` (the bundled sample photos); ``draft`` as the embedder decodes them."""

    paths: tuple[str, ...]
    source: str
    draft: bool = True


def sample_photos() -> list[tuple[Path, str]]:
    """The bundled sample photos and their labels (their folder's name), in a fixed order."""
    return [
        (p, p.parent.name)
        for p in sorted(SAMPLE_DIR.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.parent != SAMPLE_DIR
    ]


def calibration_set(paths: Sequence[str | Path], spec: Int8Spec = INT8, *, draft: bool = True) -> CalibrationSet:
    """About ``spec.calibration_size`` of ``paths``, spread evenly over them; the bundled sample photos when there
    are fewer than ``spec.min_collection``."""
    if len(paths) < max(1, spec.min_collection):
        return CalibrationSet(tuple(str(p) for p, _ in sample_photos()), "sample", draft)
    step = len(paths) / min(len(paths), spec.calibration_size)
    picked = [str(paths[int(i * step)]) for i in range(min(len(paths), spec.calibration_size))]
    return CalibrationSet(tuple(picked), "collection", draft)


def calibration_digest(backbone: Backbone, cal: CalibrationSet) -> str:
    """What names a calibration: its photos' bytes in order, and what turns them into model inputs (the backbone's
    preprocessing, draft decoding, Pillow's version).

    Hashing ~300 files takes milliseconds where decoding them took seconds of one core: the start-up of every new
    int8 index whose model is already cached. (Indexes made before record a digest of the decoded inputs: they are
    looked up by their recorded digest, which names their model in the cache all the same.)"""
    from PIL import __version__ as pillow

    cfg = backbone.data_config
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    desc = {"digest": CALIBRATION_DIGEST, "draft": cal.draft, "pillow": pillow, **{k: cfg.get(k) for k in keys}}
    h = hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode())
    for p in cal.paths:
        try:
            data = Path(p).read_bytes()
        except OSError:  # unreadable: skipped when quantising too
            data = b""
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def calibration_inputs(backbone: Backbone, cal: CalibrationSet) -> np.ndarray:
    """The model inputs of the calibration photos that decode."""
    pre = Preprocessor(backbone, numpy=True, draft=cal.draft)
    arrays = []
    for p in cal.paths:
        try:
            arrays.append(np.ascontiguousarray(np.asarray(pre(p), dtype=np.float32)))
        except ImageError as e:
            log.debug("calibration: skipped %s", e)
    if not arrays:
        raise BackboneError("no calibration photo could be decoded: cannot quantise to int8")
    return np.stack(arrays)


def int8_entry(fp32_entry: Path, digest: str, spec: Int8Spec = INT8) -> Path:
    """Cache folder of the model quantised on the calibration with this digest (inside the fp32 model's entry)."""
    desc = {"format": INT8_FORMAT, "calibration": digest, **spec.quantiser_settings()}
    return fp32_entry / f"int8-{hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24]}"


def nncf_available() -> bool:
    return package_version("nncf") is not None


def quantize(model: Any, inputs: np.ndarray, spec: Int8Spec = INT8) -> Any:
    """``model`` (an ``openvino.Model`` or the path of its IR) quantised by NNCF on ``inputs`` (N, 3, H, W)."""
    import openvino as ov

    try:
        import nncf
    except ImportError:
        raise BackboneError(f"int8 needs NNCF ({INSTALL})") from None
    if isinstance(model, (str, Path)):
        model = ov.Core().read_model(str(model))
    ignored = None
    if spec.keep_fp32 == "first_last":
        convs = [
            op.get_friendly_name()
            for op in model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
        ]
        ignored = nncf.IgnoredScope(names=sorted({convs[0], convs[-1]}), validate=False) if convs else None
    preset = nncf.QuantizationPreset.MIXED if spec.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    t0 = time.perf_counter()
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:  # NNCF's progress bars (rich) write to stdout: simsearch's own output (--json) must stay clean
        with contextlib.redirect_stdout(io.StringIO()):
            quantized = nncf.quantize(
                model,
                nncf.Dataset([inputs[i : i + 1] for i in range(len(inputs))]),
                preset=preset,
                subset_size=len(inputs),
                fast_bias_correction=spec.fast_bias_correction,
                ignored_scope=ignored,
            )
    finally:
        nncf_log.setLevel(level)
    log.info("quantised to int8 on %d photos in %.1f s", len(inputs), time.perf_counter() - t0)
    return quantized


def cached_int8(fp32_entry: Path | None, digest: str, spec: Int8Spec = INT8) -> Path | None:
    """The cached quantised model (``model.xml``) for this calibration digest, if there is one."""
    if fp32_entry is None:
        return None
    xml = int8_entry(fp32_entry, digest, spec) / "model.xml"
    return xml if xml.exists() and xml.with_suffix(".bin").exists() else None


def load_or_quantize(
    backbone: Backbone, calibration: CalibrationSet | Mapping, spec: Int8Spec = INT8
) -> tuple[Any, Path | None, dict]:
    """(int8 model or the path of its IR, its cache entry or None, the calibration record ``{digest, count,
    source}``). ``calibration``: photos to quantise on (a new index), or an index's recorded calibration, whose
    model is taken from the cache (or quantised again when it was the bundled sample)."""
    fp32, fp32_entry = cache.load_or_convert(backbone)
    if isinstance(calibration, Mapping):  # an index's record: that very model, nothing else
        record = {k: calibration.get(k) for k in ("digest", "count", "source")}
        digest = str(record["digest"])
        found = cached_int8(fp32_entry, digest, spec)
        if found is not None:
            _touch(found.parent)
            return found, found.parent, record
        if record["source"] != "sample":
            where = fp32_entry or cache.cache_dir()
            raise BackboneError(
                f"the int8 model of this index (quantised on {record['count']} of its photos, calibration "
                f"{digest[:12]}) is not in this machine's model cache ({where}): copy the folder "
                f"int8-*/ of the machine that built the index there, or rebuild the index with --precision int8"
            )
        sample = CalibrationSet(tuple(str(p) for p, _ in sample_photos()), "sample")
        inputs = calibration_inputs(backbone, sample)  # quantised again, kept under the recorded digest
    else:
        digest = calibration_digest(backbone, calibration)
        record = {"digest": digest, "count": len(calibration.paths), "source": calibration.source}
        found = cached_int8(fp32_entry, digest, spec)
        if found is not None:
            _touch(found.parent)
            return found, found.parent, record
        inputs = calibration_inputs(backbone, calibration)
    quantized = quantize(fp32, inputs, spec)
    if fp32_entry is None:
        return quantized, None, record
    return _store(quantized, int8_entry(fp32_entry, digest, spec), record, spec)


def _touch(entry: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(entry)  # most recently used


def _store(model: Any, entry: Path, record: dict, spec: Int8Spec) -> tuple[Any, Path | None, dict]:
    """Write the quantised model into ``entry`` (atomically: a temporary folder renamed into place)."""
    import openvino as ov

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
            meta = {**record, **spec.quantiser_settings(), "nncf": _nncf_version(), "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.replace(tmp, entry)
            except OSError:  # another process stored it first
                if not (entry / "model.xml").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(entry.parent, keep=entry)
        return entry / "model.xml", entry, record
    except OSError as e:
        log.warning("cannot cache the int8 model in %s (%s): it will be quantised again next time", entry, e)
        return model, None, record


def _nncf_version() -> str:
    return package_version("nncf") or "?"


def _prune(fp32_entry: Path, keep: Path) -> None:
    entries = sorted(fp32_entry.glob("int8-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[INT8_ENTRIES:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
