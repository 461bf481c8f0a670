"""Embedding: decode images in parallel with batched inference, yield L2-normalised vectors.

The :class:`Embedder` is the one place that turns images into vectors, at index time and at query time,
so both always use exactly the same preprocessing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbones import Backbone, l2_normalize
from .errors import ImageError
from .images import DEFAULT_MAX_PIXELS, load_image

log = logging.getLogger("simsearch")


@dataclass
class EmbeddedBatch:
    """Vectors for the items of one batch that decoded, and the reasons for those that did not."""

    items: list = field(default_factory=list)
    vectors: np.ndarray | None = None
    skipped: list[tuple[object, str]] = field(default_factory=list)


class TorchEngine:
    """Runs a backbone with PyTorch on the CPU (``channels_last``; ``bf16`` autocast where asked)."""

    name = "torch"

    def __init__(self, backbone: Backbone, precision: str = "fp32"):
        import torch

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.backbone, self.precision = backbone, precision
        self.model = backbone.model.to(memory_format=torch.channels_last)

    def __call__(self, batch) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = batch.contiguous(memory_format=torch.channels_last)
            if self.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = self.model(x)
            else:
                y = self.model(x)
            return l2_normalize(y.float().numpy())


def default_workers() -> int:
    """Decoder threads: one per core, at least one."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Embedder:
    """Decode → preprocess → batch → infer. ``engine`` is any callable mapping a batch tensor to vectors."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        engine: Callable | None = None,
        batch_size: int = 32,
        workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.backbone = backbone
        self.engine = engine or TorchEngine(backbone)
        self.batch_size = max(1, int(batch_size))
        self.workers = workers or default_workers()
        self.max_pixels = max_pixels
        self.transform = backbone.transform()

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def preprocess(self, source) -> object:
        """Decode one image (path, bytes, PIL image) and apply the backbone's eval transform."""
        return self.transform(load_image(source, max_pixels=self.max_pixels))

    def embed(self, sources: Sequence) -> np.ndarray:
        """Embed images given as paths, bytes or PIL images; raises :class:`ImageError` on a bad one."""
        import torch

        tensors = [self.preprocess(s) for s in sources]
        out = [
            self.engine(torch.stack(tensors[i : i + self.batch_size])) for i in range(0, len(tensors), self.batch_size)
        ]
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
        At most a few batches of decoded images are held in memory at once.
        """
        import torch

        bar = _progress_bar(len(items), progress, desc)
        batch = EmbeddedBatch()
        tensors: list = []
        try:
            for item, fut in _ordered_map(
                lambda it: self.preprocess(path_of(it)), items, self.workers, 2 * self.batch_size
            ):
                try:
                    tensors.append(fut.result())
                    batch.items.append(item)
                except ImageError as e:
                    log.warning("skipped %s", e)
                    batch.skipped.append((item, _reason(e)))
                if len(tensors) >= self.batch_size:
                    batch.vectors = self.engine(torch.stack(tensors))
                    bar.update(len(batch.items) + len(batch.skipped))
                    yield batch
                    batch, tensors = EmbeddedBatch(), []
            if batch.items or batch.skipped:
                batch.vectors = self.engine(torch.stack(tensors)) if tensors else np.zeros((0, self.dim), np.float32)
                bar.update(len(batch.items) + len(batch.skipped))
                yield batch
        finally:
            bar.close()


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
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        file=sys.stderr,
        disable=not enabled or not sys.stderr.isatty(),
        dynamic_ncols=True,
        smoothing=0.1,
    )
