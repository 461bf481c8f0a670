"""Embedding: decode images in parallel with batched inference, yield L2-normalised vectors.

The :class:`Embedder` is the one place that turns images into vectors, at index time and at query time,
so both always use exactly the same preprocessing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .backbones import Backbone
from .config.embedding import AUTO, EmbeddingSettings, recorded_settings
from .engines import (
    REFERENCE,
    CachedBackbone,
    EngineCallable,
    ImageSource,
    Preprocessor,
    TorchEngine,
    cached_backbone,
    create_engine,
    engine_info,
    engine_settings,
    list_engines,
    resolve_engine,
)
from .engines.auto_precision import PrecisionChoice, choose_precision
from .engines.int8 import calibration_set
from .errors import ImageError, SimsearchError
from .images import DEFAULT_MAX_PIXELS
from .phash import phash
from .progress import progress_bar
from .system import cpu_count

log = logging.getLogger("simsearch")


@dataclass
class EmbeddedBatch:
    """Vectors for the items of one batch that decoded, and the reasons for those that did not.

    ``phashes[i]`` is the perceptual hash (:func:`simsearch.phash.phash`) of ``items[i]``'s decoded image; empty
    when the embedder computes none (``Embedder(phash=False)``, an engine that reads the files itself)."""

    items: list = field(default_factory=list)
    vectors: np.ndarray | None = None
    skipped: list[tuple[object, str]] = field(default_factory=list)
    phashes: list[int | None] = field(default_factory=list)


class ImageEmbedder(Protocol):
    """What the index builder needs from an embedder (:class:`Embedder`, or a stand-in such as a test's fake)."""

    backbone: Backbone

    @property
    def dim(self) -> int: ...

    def settings(self) -> EmbeddingSettings: ...

    def embed(self, sources: Sequence) -> np.ndarray: ...

    def embed_files(
        self, items: Sequence, *, path_of: Callable[[Any], str | Path] = ..., progress: bool = ..., desc: str = ...
    ) -> Iterator[EmbeddedBatch]: ...


def default_workers() -> int:
    """Decoder threads: one per usable CPU (affinity mask and cgroup quota), at least one."""
    return cpu_count()


class Embedder:
    """Decode → preprocess → batch → infer.

    ``engine`` is an engine name (``auto`` or a registered one: see :func:`simsearch.engines.create_engine`, with
    ``precision`` and ``engine_options``) or any callable mapping a batch tensor to unit vectors; None means the
    fp32 torch reference. ``batch_size`` None uses the engine's preferred batch. ``draft`` lets large JPEGs decode
    at a reduced scale, still at least twice the size the transform resizes to
    (:func:`simsearch.images.draft_size_for`). ``phash``: :meth:`embed_files` also hashes each decoded image
    (:mod:`simsearch.phash`, well under a millisecond an image) into ``EmbeddedBatch.phashes``.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        engine: EngineCallable | str | None = None,
        precision: str | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        draft: bool = False,
        engine_options: dict[str, Any] | None = None,
        phash: bool = True,
        reason: str = "",
    ):
        self.backbone = backbone
        self.phash = bool(phash)
        if engine is None:
            engine = TorchEngine(backbone, precision or "fp32")
        elif isinstance(engine, str):
            engine = create_engine(backbone, engine, precision or AUTO, batch_size, **(engine_options or {}))
        self.engine: EngineCallable = engine
        self.batch_size = max(1, int(batch_size or getattr(engine, "batch_size", None) or 32))
        self.workers = workers or default_workers()
        self.max_pixels = max_pixels
        self.draft = bool(draft)
        self.reason = reason  # why --precision auto chose the engine's precision (recorded with the settings)
        # OpenVINO gets the torch-free copy of the timm transform (identical arrays; no torch ops in the decoders)
        numpy = getattr(engine, "name", "") == "openvino"
        self.preprocessor = Preprocessor(backbone, numpy=numpy, draft=self.draft, max_pixels=max_pixels)

    def settings(self) -> EmbeddingSettings:
        """How this embedder turns images into vectors (recorded in an index's manifest)."""
        es = engine_settings(self.engine)
        cal = getattr(self.engine, "calibration", None) if es["precision"] == "int8" else None
        return EmbeddingSettings(es["engine"], es["precision"], self.draft, calibration=cal, reason=self.reason)

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def preprocess(self, source: ImageSource) -> Any:
        """Decode one image (path, bytes, PIL image) and apply the backbone's eval transform."""
        return self.preprocessor(source)

    def _preprocess_and_hash(self, source: ImageSource) -> tuple[Any, int | None]:
        """:meth:`preprocess`, and the perceptual hash of the decoded image (None if ``phash`` is off)."""
        img = self.preprocessor.decode(source)
        return self.preprocessor.apply(img), (phash(img) if self.phash else None)

    def embed(self, sources: Sequence) -> np.ndarray:
        """Embed images given as paths, bytes or PIL images; raises :class:`ImageError` on a bad one."""
        tensors = [self.preprocess(s) for s in sources]
        batches = [_stack(tensors[i : i + self.batch_size]) for i in range(0, len(tensors), self.batch_size)]
        stream = getattr(self.engine, "stream", None)
        if len(batches) > 1 and stream is not None:
            out = [v for _, v in stream(enumerate(batches))]
        else:
            out = [self.engine(b) for b in batches]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_files(
        self,
        items: Sequence,
        *,
        path_of: Callable[[Any], str | Path] = lambda x: x,
        progress: bool = False,
        desc: str = "embedding",
    ) -> Iterator[EmbeddedBatch]:
        """Embed many files in order, decoding in a thread pool while the engine infers.

        Yields one :class:`EmbeddedBatch` per batch; unreadable files are reported in ``skipped``, never raised.
        Decoding runs ahead of inference by a bounded window, and an engine with ``stream`` (OpenVINO) keeps a
        few batches in flight, so at most a few batches of decoded images are held in memory at once. An engine
        that reads files itself (``embed_paths``: Ray) gets the paths and this embedder's preprocessing.
        """
        if getattr(self.engine, "embed_paths", None) is not None:
            yield from self._embed_by_engine(items, path_of, progress)
            return
        bar = _progress_bar(len(items), progress, desc)
        decoded = self._decoded_batches(items, path_of)
        stream = getattr(self.engine, "stream", None)
        results: Generator = stream(decoded) if stream is not None else ((b, self._infer(x)) for b, x in decoded)
        try:
            for batch, vectors in results:
                batch.vectors = vectors
                bar.update(len(batch.items) + len(batch.skipped))
                yield batch
        finally:
            results.close()
            decoded.close()
            bar.close()

    def _embed_by_engine(self, items: Sequence, path_of: Callable, progress: bool) -> Iterator[EmbeddedBatch]:
        paths = [str(path_of(it)) for it in items]
        done = 0
        for vectors, errors in self.engine.embed_paths(paths, self.preprocessor, progress=progress):  # type: ignore[attr-defined]
            batch = EmbeddedBatch()
            rows = []
            for j, error in enumerate(errors):
                if error:
                    batch.skipped.append((items[done + j], error))
                else:
                    batch.items.append(items[done + j])
                    rows.append(j)
            batch.vectors = np.asarray(vectors[rows], np.float32) if rows else np.zeros((0, self.dim), np.float32)
            done += len(errors)
            yield batch

    def _infer(self, x: Any) -> np.ndarray:
        return self.engine(x) if x is not None else np.zeros((0, self.dim), np.float32)

    def _decoded_batches(self, items: Sequence, path_of: Callable) -> Generator[tuple[EmbeddedBatch, Any], None, None]:
        """``(batch, stacked tensor or None)`` in input order; decoded by ``workers`` threads, a bounded window
        ahead of the consumer."""
        batch = EmbeddedBatch()
        tensors: list = []
        window = max(2 * self.batch_size, 4 * self.workers)
        for item, fut in _ordered_map(lambda it: self._preprocess_and_hash(path_of(it)), items, self.workers, window):
            try:
                tensor, h = fut.result()
                tensors.append(tensor)
                batch.items.append(item)
                batch.phashes.append(h)
            except ImageError as e:
                log.warning("skipped %s", e)
                batch.skipped.append((item, _reason(e)))
            if len(tensors) >= self.batch_size:
                yield batch, _stack(tensors)
                batch, tensors = EmbeddedBatch(), []
        if batch.items or batch.skipped:
            yield batch, (_stack(tensors) if tensors else None)


def _stack(tensors: list) -> Any:
    """One batch from preprocessed images: numpy arrays (torch-free transform) or torch tensors."""
    if isinstance(tensors[0], np.ndarray):
        return np.stack(tensors)
    import torch

    return torch.stack(tensors)


def embedder_for_index(
    backbone: Backbone,
    extra: dict | None,
    count: int,
    *,
    engine: EngineCallable | str | None = None,
    precision: str | None = None,
    draft: bool | None = None,
    where: str = "index",
    engine_options: dict[str, Any] | None = None,
    paths: Sequence[str | Path] | None = None,
    **kwargs: Any,
) -> tuple[Embedder, EmbeddingSettings]:
    """An :class:`Embedder` that embeds new images exactly as an index's items were (at index and query time),
    and the settings to record in the index's manifest.

    On a non-empty index ``engine``/``precision``/``draft`` left at None/``auto`` take the recorded values and an
    explicit different value raises :class:`SimsearchError` (the index would mix two kinds of vectors); if the
    recorded engine cannot run here, torch is used with a warning (same results within bf16/fp32 tolerance). An
    engine registered as a substitute (``ray``: the fp32 reference's vectors) may add to any index, which keeps its
    recorded settings. A callable ``engine`` is used as given (the caller vouches for it). ``engine_options`` go
    to the asked engine's factory, other keyword arguments to the :class:`Embedder` (``batch_size``, ``workers``,
    ``max_pixels``).

    int8 vectors are a different embedding from fp32/bf16 ones: an int8 index is only ever added to and queried
    with its own quantised model (its recorded calibration), and refuses any other engine, an fp32 one included
    (and an fp32/bf16 index refuses int8). For a new index, ``paths`` (the photos about to be embedded) is what
    ``--precision int8`` calibrates on, and what ``auto`` weighs int8 for
    (:func:`~simsearch.engines.auto_precision.choose_precision`).
    """
    rec = recorded_settings(extra, count, where)
    if rec is not None:
        rec.check_known(where)
    if engine is not None and not isinstance(engine, str):
        use_draft = draft if draft is not None else (rec.draft if rec else True)
        emb = Embedder(backbone, engine=engine, precision=precision, draft=use_draft, **kwargs)
        if rec is not None:
            _check_same_kind(rec, emb.settings(), where)
        return emb, rec or emb.settings()
    if rec is None:
        return _new_embedder(backbone, engine, precision, draft, engine_options, paths, kwargs)
    asked = (engine or AUTO).lower()
    substitute = asked != AUTO and engine_info(asked).substitute
    if substitute and rec.precision == "int8":
        raise SimsearchError(
            f"{where} was embedded with {rec.describe()}: engine {asked} makes fp32 vectors, which must not be "
            f"mixed with int8 ones. Leave out --engine, or build a new index with --out"
        )
    conflicts = {} if substitute else {"engine": asked, "precision": (precision or AUTO).lower()}
    for key, value in conflicts.items():
        if value != AUTO and value != getattr(rec, key):
            mixing = (
                " (int8 and fp32/bf16 vectors are different embeddings)" if "int8" in (value, rec.precision) else ""
            )
            raise SimsearchError(
                f"{where} was embedded with {rec.describe()}: its new images must be embedded the same way{mixing}. "
                f"Leave out --{key} (or use auto), or build a new index with --out"
            )
    if draft is not None and bool(draft) != rec.draft:
        raise SimsearchError(
            f"{where} was embedded with {rec.describe()}: leave out --draft/--no-draft, or build a new index with --out"
        )
    if substitute:
        eng = create_engine(backbone, asked, precision or AUTO, kwargs.get("batch_size"), **(engine_options or {}))
    else:
        name = rec.engine if rec.engine in list_engines() and not engine_info(rec.engine).substitute else REFERENCE
        options = dict(engine_options or {}) if asked == name else {}
        if rec.precision == "int8":
            options["calibration"] = rec.calibration  # that very quantised model
        eng = create_engine(backbone, name, rec.precision, kwargs.get("batch_size"), fallback=True, **options)
    return Embedder(backbone, engine=eng, draft=rec.draft, reason=rec.reason, **kwargs), rec


def _check_same_kind(rec: EmbeddingSettings, given: EmbeddingSettings, where: str) -> None:
    """Refuse an engine object whose vectors are not of the index's kind where that is known to differ: int8 vs
    fp32/bf16, or int8 quantised on another calibration (a plain callable is taken on trust otherwise)."""
    if "int8" not in (rec.precision, given.precision):
        return
    if given.precision != rec.precision or not given.same_vectors(dataclasses.replace(rec, engine=given.engine)):
        raise SimsearchError(
            f"{where} was embedded with {rec.describe()}, not {given.describe()}: int8 and fp32/bf16 vectors (or two "
            f"int8 calibrations) are different embeddings. Query it with its own engine (leave the engine out)"
        )


def _new_embedder(
    backbone: Backbone,
    engine: str | None,
    precision: str | None,
    draft: bool | None,
    engine_options: dict[str, Any] | None,
    paths: Sequence[str | Path] | None,
    kwargs: dict[str, Any],
) -> tuple[Embedder, EmbeddingSettings]:
    """The embedder of a new index: ``int8`` calibrated on ``paths``; ``auto`` weighing int8 when ``paths`` is known."""
    use_draft = True if draft is None else bool(draft)
    asked_precision = (precision or AUTO).lower()
    options = dict(engine_options or {})
    choice: PrecisionChoice | None = None
    if asked_precision == "int8":
        options.setdefault("calibration", calibration_set(list(paths or []), draft=use_draft))
    elif asked_precision == AUTO and paths is not None and "calibration" not in options:
        name = resolve_engine(engine or AUTO)
        if engine_info(name).int8 and not options:
            try:
                choice = choose_precision(backbone, name, list(paths), draft=use_draft)
            except Exception as e:  # NNCF or OpenVINO failing on this model...: what auto chose before
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                log.warning("int8 could not be tried (%s); using the usual precision", first)
                choice = PrecisionChoice(AUTO, f"int8 could not be tried ({first})")
            if choice.calibration is not None:
                options["calibration"] = choice.calibration
    if choice is not None and choice.engine is not None:
        emb = Embedder(backbone, engine=choice.engine, draft=use_draft, **kwargs)
    else:
        eng_precision = choice.precision if choice is not None else asked_precision
        emb = Embedder(
            backbone, engine=engine or AUTO, precision=eng_precision, draft=use_draft, engine_options=options, **kwargs
        )
    if choice is not None:  # the reason names the precision the engine resolved to: the same engine, with it
        reason = choice.reason if choice.precision != AUTO else f"{emb.settings().precision}: {choice.reason}"
        emb = Embedder(backbone, engine=emb.engine, draft=use_draft, reason=reason, **kwargs)
    return emb, emb.settings()


def cached_backbone_of(manifest: Any) -> CachedBackbone | None:
    """The torch-free backbone of an index's manifest (:func:`~simsearch.engines.cached_backbone`)."""
    m = manifest
    return cached_backbone(m.backbone, m.arch, m.weights_sha256, m.preprocessing, m.dim)


def cached_embedder_for_index(
    manifest: Any,
    *,
    engine: object = None,
    precision: str | None = None,
    draft: bool | None = None,
    cached: CachedBackbone | None = None,
    **kwargs: Any,
) -> Embedder | None:
    """A torch-free :class:`Embedder` for querying an index embedded with OpenVINO, when the model converted from
    the manifest's weights (same digest) is in the on-disk cache: start-up in a fraction of a second instead of
    importing torch and timm. None when that is not possible (then use :func:`embedder_for_index`).
    ``engine_options`` go to the OpenVINO engine (``threads``, ``hint``), other keyword arguments to the
    :class:`Embedder`. ``cached``: the manifest's :func:`cached_backbone_of`, when already looked up."""
    rec = recorded_settings(manifest.extra, manifest.count)
    if rec is None or rec.engine != "openvino" or engine is not None or precision is not None or draft is not None:
        return None
    try:
        bb = cached or cached_backbone_of(manifest)
        if bb is None:
            return None
        options: dict[str, Any] = dict(kwargs.pop("engine_options", None) or {})
        if rec.precision == "int8":
            options["calibration"] = rec.calibration
        eng = create_engine(bb, "openvino", rec.precision, kwargs.get("batch_size"), **options)
        return Embedder(bb, engine=eng, draft=rec.draft, reason=rec.reason, **kwargs)
    except Exception as e:  # a damaged cache entry...: the full path still works
        log.debug("cannot use the cached OpenVINO model (%s); loading the backbone", e)
        return None


def _reason(e: ImageError) -> str:
    """The reason part of an ImageError message ('path: reason')."""
    msg = str(e)
    return msg.split(": ", 1)[1] if ": " in msg else msg


def _ordered_map(fn: Callable, items: Iterable, workers: int, window: int) -> Iterator[tuple[Any, Future]]:
    """Like ``executor.map`` but lazy, bounded to ``window`` pending tasks, and yielding futures in order."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="simsearch-decode") as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                break
        while pending:
            yield pending.popleft()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(fn, nxt)))


_END = object()


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    return progress_bar(total, desc, unit="img", enabled=enabled, dynamic_ncols=True, smoothing=0.1)
