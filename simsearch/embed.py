"""Embedding: decode images in parallel with batched inference, yield L2-normalised vectors.

The :class:`Embedder` is the one place that turns images into vectors, at index time and at query time,
so both always use exactly the same preprocessing.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbones import Backbone
from .engines import NumpyTransform, TorchEngine, cached_backbone, cpu_count, create_engine, engine_settings
from .errors import ImageError
from .images import DEFAULT_MAX_PIXELS, clip_aspect, draft_size_for, load_image
from .phash import phash
from .progress import progress_bar

log = logging.getLogger("simsearch")


@dataclass
class EmbeddedBatch:
    """Vectors for the items of one batch that decoded, and the reasons for those that did not.

    ``phashes[i]`` is the perceptual hash (:func:`simsearch.phash.phash`) of ``items[i]``'s decoded image, None
    when the embedder does not compute hashes."""

    items: list = field(default_factory=list)
    vectors: np.ndarray | None = None
    skipped: list[tuple[object, str]] = field(default_factory=list)
    phashes: list[int | None] = field(default_factory=list)


def default_workers() -> int:
    """Decoder threads: one per usable CPU (affinity mask and cgroup quota), at least one."""
    return cpu_count()


class Embedder:
    """Decode → preprocess → batch → infer.

    ``engine`` is an engine name (``auto``, ``openvino``, ``torch``: see :func:`simsearch.engines.create_engine`,
    with ``precision``) or any callable mapping a batch tensor to unit vectors; None means the fp32 torch
    reference. ``batch_size`` None uses the engine's preferred batch. ``draft`` lets large JPEGs decode at a
    reduced scale, still at least twice the size the transform resizes to (:func:`simsearch.images.draft_size_for`).
    ``phash``: :meth:`embed_files` also hashes each decoded image (:mod:`simsearch.phash`, about 0.3 ms an image).
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        engine: Callable | str | None = None,
        precision: str | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        draft: bool = False,
        phash: bool = True,
    ):
        self.backbone = backbone
        if engine is None:
            engine = TorchEngine(backbone, precision or "fp32")
        elif isinstance(engine, str):
            engine = create_engine(backbone, engine, precision or "auto", batch_size)
        self.engine = engine
        self.batch_size = max(1, int(batch_size or getattr(engine, "batch_size", None) or 32))
        self.workers = workers or default_workers()
        self.max_pixels = max_pixels
        # OpenVINO gets the torch-free copy of the timm transform (identical arrays; no torch ops in the decoders)
        fast = NumpyTransform.for_config(backbone.data_config) if getattr(engine, "name", "") == "openvino" else None
        self.transform = fast or backbone.transform()
        self.draft = bool(draft)
        self.draft_size = draft_size_for(backbone.data_config) if draft else None
        self.phash = bool(phash)

    def settings(self) -> dict:
        """How this embedder turns images into vectors (recorded in an index's manifest)."""
        return {**engine_settings(self.engine), "draft": self.draft}

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def preprocess(self, source) -> object:
        """Decode one image (path, bytes, PIL image) and apply the backbone's eval transform."""
        return self._transform(load_image(source, max_pixels=self.max_pixels, draft_size=self.draft_size))

    def _preprocess_and_hash(self, source) -> tuple[object, int | None]:
        """:meth:`preprocess`, and the perceptual hash of the decoded image (None if ``phash`` is off)."""
        img = load_image(source, max_pixels=self.max_pixels, draft_size=self.draft_size)
        return self._transform(img), (phash(img) if self.phash else None)

    def _transform(self, img) -> object:
        if self.backbone.data_config.get("crop_mode", "center") == "center":
            img = clip_aspect(img)  # a 100000x2 image would otherwise be resized to gigabytes
        return self.transform(img)

    def embed(self, sources: Sequence) -> np.ndarray:
        """Embed images given as paths, bytes or PIL images; raises :class:`ImageError` on a bad one."""
        tensors = [self.preprocess(s) for s in sources]
        batches = [_stack(tensors[i : i + self.batch_size]) for i in range(0, len(tensors), self.batch_size)]
        if len(batches) > 1 and hasattr(self.engine, "stream"):
            out = [v for _, v in self.engine.stream(enumerate(batches))]
        else:
            out = [self.engine(b) for b in batches]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_files(
        self,
        items: Sequence,
        *,
        path_of: Callable[[object], str | Path] = lambda x: x,
        progress: bool = False,
        desc: str = "embedding",
    ) -> Iterator[EmbeddedBatch]:
        """Embed many files in order, decoding in a thread pool while the engine infers.

        Yields one :class:`EmbeddedBatch` per batch; unreadable files are reported in ``skipped``, never raised.
        Decoding runs ahead of inference by a bounded window, and an engine with ``stream`` (OpenVINO) keeps a
        few batches in flight, so at most a few batches of decoded images are held in memory at once.
        """
        bar = _progress_bar(len(items), progress, desc)
        decoded = self._decoded_batches(items, path_of)
        if hasattr(self.engine, "stream"):
            results = self.engine.stream(decoded)
        else:
            results = ((b, self._infer(x)) for b, x in decoded)
        try:
            for batch, vectors in results:
                batch.vectors = vectors
                bar.update(len(batch.items) + len(batch.skipped))
                yield batch
        finally:
            results.close()
            decoded.close()
            bar.close()

    def _infer(self, x) -> np.ndarray:
        return self.engine(x) if x is not None else np.zeros((0, self.dim), np.float32)

    def _decoded_batches(self, items: Sequence, path_of: Callable) -> Iterator[tuple[EmbeddedBatch, object]]:
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


def _stack(tensors: list):
    """One batch from preprocessed images: numpy arrays (torch-free transform) or torch tensors."""
    if isinstance(tensors[0], np.ndarray):
        return np.stack(tensors)
    import torch

    return torch.stack(tensors)


# Indexes written before the embedding settings were recorded used the fp32 torch reference, full JPEG decoding.
LEGACY_SETTINGS = {"engine": "torch", "precision": "fp32", "draft": False}


def recorded_settings(extra: dict | None, count: int) -> dict | None:
    """The embedding settings an index's manifest records in ``extra["embedding"]`` (engine, precision, draft);
    :data:`LEGACY_SETTINGS` for a non-empty index that records none; None for an empty index (anything goes)."""
    if count <= 0:
        return None
    rec = (extra or {}).get("embedding")
    if not isinstance(rec, dict):
        return dict(LEGACY_SETTINGS)
    return {**LEGACY_SETTINGS, **{k: rec[k] for k in LEGACY_SETTINGS if k in rec}}


def embedder_for_index(
    backbone: Backbone,
    extra: dict | None,
    count: int,
    *,
    engine: Callable | str | None = None,
    precision: str | None = None,
    draft: bool | None = None,
    where: str = "index",
    **kwargs,
) -> tuple[Embedder, dict]:
    """An :class:`Embedder` that embeds new images exactly as an index's items were (at index and query time),
    and the settings to record in the index's manifest.

    On a non-empty index ``engine``/``precision``/``draft`` left at None/``auto`` take the recorded values and an
    explicit different value raises :class:`SimsearchError` (the index would mix two kinds of vectors); if the
    recorded engine cannot run here, torch is used with a warning (same results within bf16/fp32 tolerance).
    A callable ``engine`` is used as given (the caller vouches for it). Other keyword arguments go to the
    :class:`Embedder` (``batch_size``, ``workers``, ``max_pixels``).
    """
    from .errors import SimsearchError

    rec = recorded_settings(extra, count)
    if engine is not None and not isinstance(engine, str):
        use_draft = draft if draft is not None else (rec["draft"] if rec else True)
        emb = Embedder(backbone, engine=engine, precision=precision, draft=use_draft, **kwargs)
        return emb, rec or emb.settings()
    if rec is None:
        emb = Embedder(
            backbone, engine=engine or "auto", precision=precision or "auto", draft=True if draft is None else draft,
            **kwargs,
        )  # fmt: skip
        return emb, emb.settings()
    asked = {"engine": engine, "precision": precision}
    for key, value in asked.items():
        if value not in (None, "auto") and str(value).lower() != rec[key]:
            raise SimsearchError(
                f"{where} was embedded with {_describe(rec)}: its new images must be embedded the same way. "
                f"Leave out --{key} (or use auto), or build a new index with --out"
            )
    if draft is not None and bool(draft) != bool(rec["draft"]):
        raise SimsearchError(
            f"{where} was embedded with {_describe(rec)}: leave out --draft/--no-draft, or build a new index with --out"
        )
    name = rec["engine"] if rec["engine"] in ("openvino", "torch") else "torch"
    eng = create_engine(backbone, name, rec["precision"], kwargs.get("batch_size"), fallback=True)
    return Embedder(backbone, engine=eng, draft=bool(rec["draft"]), **kwargs), rec


def cached_embedder_for_index(manifest, *, engine=None, precision=None, draft=None, **kwargs) -> Embedder | None:
    """A torch-free :class:`Embedder` for querying an index embedded with OpenVINO, when the model converted from
    the manifest's weights (same digest) is in the on-disk cache: start-up in a fraction of a second instead of
    importing torch and timm. None when that is not possible (then use :func:`embedder_for_index`)."""
    rec = recorded_settings(manifest.extra, manifest.count)
    if rec is None or rec["engine"] != "openvino" or engine is not None or precision is not None or draft is not None:
        return None
    try:
        bb = cached_backbone(
            manifest.backbone, manifest.arch, manifest.weights_sha256, manifest.preprocessing, manifest.dim
        )
        if bb is None:
            return None
        eng = create_engine(bb, "openvino", rec["precision"], kwargs.get("batch_size"))
        return Embedder(bb, engine=eng, draft=bool(rec["draft"]), **kwargs)
    except Exception as e:  # a damaged cache entry...: the full path still works
        log.debug("cannot use the cached OpenVINO model (%s); loading the backbone", e)
        return None


def _describe(settings: dict) -> str:
    draft = "reduced-size JPEG decoding" if settings.get("draft") else "full JPEG decoding"
    return f"engine {settings.get('engine')}, precision {settings.get('precision')}, {draft}"


def _reason(e: ImageError) -> str:
    """The reason part of an ImageError message ('path: reason')."""
    msg = str(e)
    return msg.split(": ", 1)[1] if ": " in msg else msg


def _ordered_map(fn: Callable, items: Iterable, workers: int, window: int) -> Iterator[tuple[object, Future]]:
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


def _progress_bar(total: int, enabled: bool, desc: str):
    return progress_bar(total, desc, unit="img", enabled=enabled, dynamic_ncols=True, smoothing=0.1)
