"""An opened index for reading, searching and live writes: the facade (:class:`simsearch.index.Index`) without
building and classifying (layer: below the facade), so that a query loads none of the build or vote code.

``simsearch query`` opens an :class:`IndexReader`; everything else opens an :class:`~simsearch.index.Index`
(``open_index``), which is one with ``update`` and ``classify``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np

from .attributes import check_attributes, check_text
from .backbones import Backbone, check_backbone, create_backbone, l2_normalize
from .config.index import READER
from .embed import Embedder, cached_embedder_for_index, embedder_for_index
from .errors import SimsearchError
from .preload import PendingEmbedder
from .search import Hit, allowed_items, check_vector, recommend, search, search_vectors
from .store import MANIFEST, Item, Manifest, Snapshot, published_generation
from .store.delta import DeltaJournal, NewOp
from .store.live import LiveState, LiveView
from .store.uploads import keep_photo

if TYPE_CHECKING:
    from .sync import UpdateReport

__all__ = ["IndexReader"]


class IndexReader:
    """An opened index. The backbone (needed only to embed new images) is created on first use and checked
    against the manifest; ``embedder_options`` (engine, precision, batch_size, workers, max_pixels) apply then."""

    def __init__(
        self,
        snapshot: Snapshot,
        backbone: Backbone | None = None,
        embedder_options: dict | None = None,
        report: UpdateReport | None = None,
        *,
        follow: bool = False,
    ):
        self._snapshot = snapshot
        self._journal = DeltaJournal(snapshot.path, snapshot.manifest.dim)
        self._live = LiveView(snapshot, self._journal)
        self._refresh_lock = threading.Lock()
        self._checked = time.monotonic()
        self.follow = follow
        self.report = report  # the build run that produced this index, when opened by simsearch.build_index
        self._backbone = backbone
        self._embedder: Embedder | None = None
        self._pending: PendingEmbedder | None = None
        self._preloaded: PendingEmbedder | None = None  # may have embedded the first query's photos
        self.embedder_options: dict = dict(embedder_options or {})

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        backbone: Backbone | str | None = None,
        mmap: bool = False,
        follow: bool = False,
        report: UpdateReport | None = None,
        embedder_options: dict | None = None,
    ) -> Self:
        idx = cls(Snapshot.open(path, mmap=mmap), embedder_options=embedder_options, report=report, follow=follow)
        if backbone is not None:
            idx.set_backbone(backbone)
        return idx

    # -- the stored data
    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def path(self) -> Path:
        return self._snapshot.path

    @property
    def manifest(self) -> Manifest:
        return self._snapshot.manifest

    @property
    def faiss(self):
        return self._snapshot.faiss

    def close(self) -> None:
        self._snapshot.close()
        self._journal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.manifest.items)

    def __repr__(self) -> str:
        m = self.manifest
        return f"<simsearch.Index {self.path} items={m.items} photos={m.count} backbone={m.backbone} dim={m.dim}>"

    # -- backbone and embedding
    def set_backbone(self, backbone: Backbone | str) -> None:
        bb = create_backbone(backbone) if isinstance(backbone, str) else backbone
        check_backbone(self.manifest, bb, where=str(self.path))
        self._backbone, self._embedder = bb, None

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self.set_backbone(self.manifest.backbone)
        assert self._backbone is not None
        return self._backbone

    def adopt_embedder(self, pending: PendingEmbedder | None) -> None:
        """Use an embedder being made in the background (:func:`simsearch.preload.preload_embedder`), waited for
        on first use, if it embeds as this index does with these ``embedder_options``."""
        self._pending = self._preloaded = pending

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            pending, self._pending = self._pending, None
            if pending is not None and self._backbone is None:
                self._embedder = pending.result(self.manifest, self.embedder_options)
            # the engine, precision and decoding recorded at index time; without loading torch when the
            # OpenVINO model converted from the index's weights is cached
            if self._embedder is None and self._backbone is None:
                self._embedder = cached_embedder_for_index(self.manifest, **self.embedder_options)
            if self._embedder is None:
                self._embedder, _ = embedder_for_index(
                    self.backbone, self.manifest.extra, self.manifest.count, where=str(self.path),
                    **self.embedder_options,
                )  # fmt: skip
        return self._embedder

    def share_embedder(self, other: IndexReader) -> bool:
        """Use ``other``'s loaded model when it embeds exactly as this index does (same backbone, weights,
        preprocessing, recorded engine and options), e.g. after a reload to a newer generation of the same index:
        the model is not loaded and compiled again. True if this index has an embedder now."""
        if self._embedder is not None:
            return True
        a, b = self.manifest, other.manifest

        def how(m: Manifest) -> tuple:
            return (m.backbone, m.arch, m.weights_sha256, m.preprocessing, m.dim, (m.extra or {}).get("embedding"))

        if other._embedder is None or how(a) != how(b) or self.embedder_options != other.embedder_options:
            return False
        if self._backbone is not None and other._backbone is not self._backbone:
            return False  # a backbone given for this index: its own embedder
        self._backbone, self._embedder = other._backbone, other._embedder
        return True

    def embed(self, images: Sequence) -> np.ndarray:
        """Embed images (paths, bytes or PIL images) exactly as the index's photos were embedded."""
        embedder, preloaded, self._preloaded = self.embedder, self._preloaded, None
        vectors = preloaded.embedded(embedder, images) if preloaded is not None else None
        return vectors if vectors is not None else embedder.embed(images)

    # -- items
    def item(self, item_id: int) -> Item:
        found = self.items([item_id])
        if not found:
            raise KeyError(item_id)
        return found[0]

    def items(self, ids: Iterable[int] | None = None) -> list[Item]:
        """Items by id (batched; unknown ids left out), or all of the stored ones; live writes included."""
        state = self.live_state()
        if ids is None:
            return self._snapshot.meta.items(None)
        wanted = [int(i) for i in ids]
        live = state.by_id
        stored = {
            it.id: it for it in self._snapshot.meta.items(i for i in wanted if i not in live and i not in state.hidden)
        }
        out = []
        for i in wanted:
            if i in live:
                out.append(live[i].as_item())
            elif i in stored:
                out.append(stored[i])
        return out

    def has_id(self, item_id: int) -> bool:
        state = self.live_state()
        if int(item_id) in state.by_id:
            return True
        return int(item_id) not in state.hidden and self._snapshot.has_item(item_id)

    def ids(self) -> np.ndarray:
        return self._snapshot.meta.item_ids()

    def id_for_key(self, key: str) -> int | None:
        return self._snapshot.meta.ids_for_keys([key]).get(key)

    def ids_for_keys(self, keys: Iterable[str]) -> dict[str, int]:
        return self._snapshot.meta.ids_for_keys(keys)

    def id_for_path(self, path: str | Path) -> int | None:
        """Id of the item with a photo at this absolute path, or at this path relative to a root."""
        return self._snapshot.item_for_path(path)

    def resolve_item(self, ref, *, paths: bool = True) -> int | None:
        """The id of the item that ``ref`` names: an id, a key, or an indexed file's path (None: not indexed).

        ``paths=False``: ids and keys only, no look-up on the file system (for names that come from requests)."""
        live = self.live_state()
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            return int(ref) if self.has_id(int(ref)) else None  # (live items first, hidden ones not)
        if isinstance(ref, str):
            if ref in live.items:
                return live.items[ref].id
            if ref in live.deleted:
                return None
            found = self.id_for_key(ref)
            if found is not None:
                return found
        if paths and isinstance(ref, (str, Path)):
            return self.id_for_path(ref)
        return None

    def item_file(self, item_id: int) -> Path:
        """The (first) photo file of an item, for serving it: refused when it now leads outside its root.

        Symlinks are resolved, so a file replaced by a link to elsewhere since indexing is not served.
        """
        it = self.item(item_id)
        if not it.photos:
            raise SimsearchError(f"item {item_id} has no photo file")
        root = Path(it.root).resolve()
        try:
            real = it.abspath.resolve(strict=True)
        except (OSError, RuntimeError):
            raise SimsearchError(f"file of item {item_id} is missing: {it.abspath}") from None
        if not real.is_relative_to(root) or not real.is_file():
            raise SimsearchError(f"file of item {item_id} is outside the indexed folder {root}; not served")
        return real

    def labels(self) -> dict[int, str | None]:
        ids, records = self._snapshot.meta.attribute_records()
        return {
            int(i): (None if r.get("label") is None else str(r["label"])) for i, r in zip(ids, records, strict=True)
        }

    def label_counts(self) -> dict[str | None, int]:
        return self._snapshot.meta.label_counts()

    def attribute_values(self, field: str) -> dict[int, object]:
        """``{item id: value}`` of one attribute (items without it are left out)."""
        if field not in self.manifest.attributes:
            known = ", ".join(sorted(self.manifest.attributes)) or "none"
            raise SimsearchError(f"unknown attribute {field!r}; the index has: {known}")
        ids, records = self._snapshot.meta.attribute_records()
        return {int(i): r[field] for i, r in zip(ids, records, strict=True) if r.get(field) is not None}

    def ids_matching(self, *, label=None, path_prefix: str | None = None) -> np.ndarray:
        """Ids of items with one of the given labels and/or a photo whose path starts with ``path_prefix``."""
        from_filter: dict = {}
        if label is not None:
            from_filter["label"] = list(label) if isinstance(label, (list, tuple)) else [label]
        if path_prefix:
            from_filter["path_prefix"] = path_prefix
        found = allowed_items(self._snapshot, from_filter)
        return self.ids() if found is None else found

    def skipped(self) -> list[tuple[str, str]]:
        return self._snapshot.meta.skipped()

    # -- vectors
    def item_vectors(self, item_id: int) -> np.ndarray | None:
        """The photo vectors of an item ``(n, dim)``, live writes included (None: no such item)."""
        live = self.live_state().by_id.get(int(item_id))
        if live is not None:
            return live.vectors
        return self._snapshot.item_vectors([int(item_id)]).get(int(item_id))

    def vector(self, item_id: int) -> np.ndarray:
        """An item's vector: its photo's, or the normalised mean of its photos'."""
        vecs = self._snapshot.item_vectors([item_id]).get(int(item_id))
        if vecs is None:
            raise KeyError(item_id)
        return _mean(vecs)

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of items (default: all, sorted by id); one vector per item as :meth:`vector`."""
        wanted = self.ids() if ids is None else np.asarray(ids, dtype=np.int64)
        if len(wanted) == 0:
            return wanted, np.zeros((0, self.manifest.dim), np.float32)
        if self._snapshot.single_photo:
            photo_ids = self._snapshot.photos_of(wanted)
            items = self._snapshot.items_of(photo_ids)
            order = np.argsort(items)
            pos = np.searchsorted(items[order], wanted)
            vecs = np.asarray(self.faiss.reconstruct_batch(photo_ids[order][pos]), dtype=np.float32)
            return wanted, vecs
        per_item = self._snapshot.item_vectors(wanted)
        return wanted, np.vstack([_mean(per_item[int(i)]) for i in wanted])

    # -- searching (see simsearch.search)
    def search(self, query, k: int = 10, **kwargs) -> list[Hit]:
        return search(self, query, k=k, **kwargs)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, **kwargs) -> list[list[Hit]]:
        return search_vectors(self, vectors, k=k, **kwargs)

    def recommend(self, positive=(), negative=(), exclude=(), k: int = 20, **kwargs) -> list[Hit]:
        return recommend(self, positive=positive, negative=negative, exclude=exclude, k=k, **kwargs)

    # -- live writes (see simsearch.store.delta)
    def live_state(self) -> LiveState:
        """The generation and the live writes searches see now.

        This process's live writes are seen at once, other processes' within ``READER.live_poll_seconds``. An index opened with ``follow=True`` also switches to a
        newer generation published by a batch run (checked every 0.2 s); otherwise it keeps serving the one it
        opened, except after a compaction of live writes it has not read yet (then it must reload to see them).
        """
        if self.follow and time.monotonic() - self._checked >= READER.refresh_seconds:
            self._checked = time.monotonic()
            gen = published_generation(self.path)
            if gen is not None and gen != self.manifest.generation:
                self.reload()
        state, stale = self._live.poll(READER.live_poll_seconds)
        if stale and self.reload():
            state, _ = self._live.refresh()
        return state

    def _fresh_state(self) -> LiveState:
        """:meth:`live_state` with the journal read now (writes check keys and types against it)."""
        state, stale = self._live.refresh()
        if stale and self.reload():
            state, _ = self._live.refresh()
        return state

    def reload(self) -> bool:
        """Serve the index's newest published generation (searches in flight finish on the old one)."""
        with self._refresh_lock:
            if published_generation(self.path) == self.manifest.generation:
                return False
            snapshot = Snapshot.open(self.path, mmap=self._snapshot.mmap)
            self._snapshot, self._live = snapshot, LiveView(snapshot, self._journal)
            return True

    def _schema(self) -> dict[str, str]:
        return self._fresh_state().schema

    def _exists(self, key: str) -> int | None:
        state = self._fresh_state()
        if key in state.items:
            return state.items[key].id
        if key in state.deleted:
            return None
        return self.id_for_key(key)

    def put(self, key: str, images: Sequence = (), attributes: dict | None = None, *, vectors=None) -> int:
        """Add or replace the item ``key`` (its photos and attributes), durably; returns its id.

        ``images`` are paths, bytes or PIL images (bytes and images are kept in the index's ``uploads/`` folder so
        that they can be shown); or give ``vectors`` (n, dim) already embedded the index's way."""
        return self.write([self.prepare_put(key, images, attributes, vectors=vectors)])[0]

    def prepare_put(self, key: str, images: Sequence = (), attributes: dict | None = None, *, vectors=None) -> NewOp:
        """The journal entry of :meth:`put` (embedding done, nothing written yet): for batches of writes.

        With ``vectors`` (one row per image, embedded the index's way elsewhere) the images are recorded, not
        embedded."""
        check_text(key, "an item key")
        attrs, _ = check_attributes(attributes or {}, self._schema())
        images = list(images)
        if not images:
            raise SimsearchError(f"item {key!r}: give at least one photo")
        if vectors is None:
            vecs = self.embed(images)
        else:
            vecs = np.vstack([check_vector(v, self.manifest.dim) for v in np.atleast_2d(np.asarray(vectors))])
            if len(vecs) != len(images):
                raise SimsearchError(f"item {key!r}: {len(images)} photos but {len(vecs)} vectors")
        photos = tuple(keep_photo(self.path, img) for img in images)
        return NewOp("put", key, self._exists(key), attrs, vecs, photos)

    def patch(self, key: str, attributes: dict) -> int:
        """Change some attributes of ``key`` (None removes one), without re-embedding; returns its id."""
        return self.write([self.prepare_patch(key, attributes)])[0]

    def prepare_patch(self, key: str, attributes: dict) -> NewOp:
        item = self._exists(check_text(key, "an item key"))
        if item is None:
            raise KeyError(key)
        attrs, _ = check_attributes(attributes, self._schema(), partial=True)
        return NewOp("patch", key, item, attrs)

    def delete(self, keys: Iterable[str]) -> int:
        """Remove items by key; returns how many. Unknown keys raise KeyError (nothing is removed then)."""
        ops = [self.prepare_delete(k) for k in dict.fromkeys(keys)]
        return len(self.write(ops))

    def prepare_delete(self, key: str) -> NewOp:
        item = self._exists(check_text(key, "an item key"))
        if item is None:
            raise KeyError(key)
        return NewOp("delete", key, item)

    def write(self, ops: Sequence[NewOp]) -> list[int]:
        """Journal prepared writes in one transaction (all or nothing); returns the items' ids. Durable when it
        returns, and visible to this process's searches at once (others' within a second)."""
        with self._refresh_lock:
            done = self._journal.append(list(ops), after=self.manifest.delta_seq)
        _, stale = self._live.applied(done)  # seen by this process's searches at once
        if stale:
            self._fresh_state()
        return [int(op.item) if op.item is not None else -1 for op in done]

    def pending_writes(self) -> int:
        return self._journal.pending(self.manifest.delta_seq)

    def info(self) -> dict:
        d = asdict(self.manifest)
        d["path"] = str(self.path)
        d["labels"] = len([k for k in self.label_counts() if k is not None])
        d["faiss_ntotal"] = int(self.faiss.ntotal)
        files = [self.manifest.vectors_file, self.manifest.metadata_file, MANIFEST]
        if self.manifest.augmented:
            files += [self.manifest.augmented_file, self.manifest.graph_file]
        d["size_bytes"] = sum((self.path / f).stat().st_size for f in files if (self.path / f).exists())
        return d


def _mean(vecs: np.ndarray) -> np.ndarray:
    return vecs[0] if len(vecs) == 1 else l2_normalize(vecs.mean(axis=0))
