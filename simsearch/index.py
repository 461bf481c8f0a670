"""The facade of an opened index: storage (a snapshot), embedding of new images, searching (layer: facade).

``open_index(path)`` gives an :class:`Index`; ``build_index`` writes one (see :mod:`simsearch.build`). The
reading part is :class:`~simsearch.index_reader.IndexReader` (what a query needs, without the build code).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .backbones import Backbone
from .build import build_index, run_build
from .config.classify import CLASSIFY
from .index_reader import IndexReader
from .rules import Rules
from .search import Hit
from .store import MANIFEST, Item, Manifest, read_manifest, writer_lock
from .sync import UpdateReport
from .verify import verify_index
from .votes import Classification, classify_queries

__all__ = [
    "MANIFEST",
    "Hit",
    "Index",
    "Item",
    "Manifest",
    "Rules",
    "UpdateReport",
    "build_index",
    "open_index",
    "read_manifest",
    "verify_index",
    "writer_lock",
]


class Index(IndexReader):
    """An opened index (:class:`~simsearch.index_reader.IndexReader`: storage, embedding of new images, searching,
    live writes) that also updates itself from its folders and suggests labels."""

    # -- labels from neighbours (see simsearch.votes)
    def classify(
        self,
        queries,
        k: int = CLASSIFY.k,
        *,
        field: str = CLASSIFY.field,
        min_confidence: float = CLASSIFY.min_confidence,
        top: int = CLASSIFY.top,
        temperature: float = CLASSIFY.temperature,
    ) -> list[Classification]:
        """Suggest a label (or any attribute: ``field``) for each query by a similarity-weighted vote of its ``k``
        nearest labelled items; "unknown" when the winning share is below ``min_confidence``.

        ``queries``: one or a list of image paths, bytes, PIL images, vectors (or an ``(n, dim)`` array), item
        ids or keys. An indexed item is voted on by the others, never by itself. One
        :class:`~simsearch.votes.Classification` per query, in order.
        """
        return classify_queries(
            self, queries, k, field=field, min_confidence=min_confidence, top=top, temperature=temperature
        )

    # -- writing
    def update(self, roots: Sequence[str | Path] | None = None, **kwargs) -> UpdateReport:
        """Add new or changed files under ``roots`` (default: the index's roots); see :func:`build_index`."""
        return build_index(roots or self.manifest.roots, self.path, backbone=self._backbone, **kwargs)


def open_index(
    path: str | Path,
    *,
    backbone: Backbone | str | None = None,
    mmap: bool = False,
    follow: bool = False,
    embedder_options: dict | None = None,
) -> Index:
    """Open a saved index for searching. The backbone is loaded lazily (only to embed new images), with
    ``embedder_options`` (engine, precision, batch_size, workers, max_pixels).

    Live writes are always seen; ``follow`` also switches to newer generations written by ``index`` runs."""
    return Index.open(path, backbone=backbone, mmap=mmap, follow=follow, embedder_options=embedder_options)


def build_and_open(roots=None, out=None, **kwargs) -> Index:
    """``simsearch.build_index``: index the images under ``roots`` (or the rows of ``catalog=``) into ``out``,
    incrementally, and return the opened index; the run's :class:`UpdateReport` is ``index.report``. Keyword
    arguments: see :func:`simsearch.build.build_index`."""
    report, backbone = run_build(roots, out, **kwargs)
    return Index.open(report.path, backbone=backbone, report=report)
