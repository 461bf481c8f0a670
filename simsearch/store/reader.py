"""A snapshot: one opened generation, with the lazily built in-memory views that searches read."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import IndexFormatError
from ..filters import AttributeTable
from .loading import load_augmented, load_generation
from .manifest import Manifest, existing_index, read_manifest
from .metadata import Item, Metadata

OPEN_RETRIES = 5  # a writer may replace the generation between reading the manifest and its files
MAP_AFTER_LOOKUPS = 8  # a snapshot asked this often for the items of a few photos loads the whole map instead
ITEM_CACHE = 8192  # items kept in memory per snapshot (a generation's items never change; live writes overlay them)


class Snapshot:
    """The FAISS index, metadata and manifest of one generation, read-only.

    The photo → item map and the item attributes are loaded on first use (a query without filters on an index
    of single-photo items never needs them) and kept for the life of the snapshot; so are the items that searches
    return, up to :data:`ITEM_CACHE` of those read last (a long-lived reader such as the service answers from
    memory; a one-shot query reads only its hits).
    """

    def __init__(
        self, path: Path, manifest: Manifest, faiss_index, meta: Metadata, *, mmap: bool = False, augmented=None
    ):
        self.path = path
        self.mmap = mmap
        self.manifest = manifest
        self.faiss = faiss_index
        self.augmented = augmented  # FAISS index of the augmented vectors (same ids), or None
        self.meta = meta
        self._lock = threading.Lock()
        self._photo_map: tuple[np.ndarray, np.ndarray] | None = None
        self._by_item: tuple[np.ndarray, np.ndarray] | None = None  # (photo map rows ordered by item, their items)
        self._identity: bool | None = None  # whether the photo map is photo i -> item i for i in 0..n-1
        self._attributes: tuple[np.ndarray, AttributeTable] | None = None
        self._lookups = 0  # photo → item lookups answered from SQLite (see items_of)
        self._items: dict[int, Item] = {}  # in the order they were read

    @classmethod
    def open(cls, path: str | Path, *, mmap: bool = False) -> Snapshot:
        path = existing_index(path)
        for attempt in range(OPEN_RETRIES):
            manifest = read_manifest(path)
            try:
                faiss_index, meta = load_generation(path, manifest, mmap=mmap, read_only=True)
                try:
                    augmented = load_augmented(path, manifest, mmap=mmap, read_only=True)
                except BaseException:
                    meta.close()
                    raise
                return cls(path, manifest, faiss_index, meta, mmap=mmap, augmented=augmented)
            except FileNotFoundError:
                if attempt == OPEN_RETRIES - 1:
                    raise IndexFormatError(f"{path}: files of generation {manifest.generation} are missing") from None
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.meta.close()

    @property
    def single_photo(self) -> bool:
        """Whether every item has exactly one photo (then results need no grouping)."""
        return self.manifest.count == self.manifest.items

    def photo_map(self) -> tuple[np.ndarray, np.ndarray]:
        """(photo ids sorted, their item ids)."""
        with self._lock:
            if self._photo_map is None:
                self._photo_map = self.meta.photo_items()
            return self._photo_map

    def attribute_table(self) -> tuple[np.ndarray, AttributeTable]:
        """(item ids sorted, their attributes as columns): what filters are evaluated on."""
        with self._lock:
            if self._attributes is None:
                ids, records = self.meta.attribute_records()
                self._attributes = (ids, AttributeTable.from_rows(self.manifest.attributes, records))
            return self._attributes

    def items_of(self, photo_ids: np.ndarray) -> np.ndarray:
        """Item id of each photo id (-1 for unknown ones)."""
        photo_ids = np.asarray(photo_ids, dtype=np.int64)
        if self._photo_map is None and len(photo_ids) <= 4096 and self._lookups < MAP_AFTER_LOOKUPS:
            self._lookups += 1  # a few results, a few times: no need to load the whole map
            found = self.meta.items_of_photos(photo_ids)
            return np.array([found.get(int(p), -1) for p in photo_ids], dtype=np.int64)
        pids, items = self.photo_map()
        if len(pids) == 0:
            return np.full(len(photo_ids), -1, dtype=np.int64)
        if self._is_identity():  # photos 0..n-1 are items 0..n-1 (a folder index: one photo per item)
            return np.where((photo_ids >= 0) & (photo_ids < len(pids)), photo_ids, -1)
        pos = np.minimum(np.searchsorted(pids, photo_ids), len(pids) - 1)  # (np.clip costs more than the search)
        return np.where(pids[pos] == photo_ids, items[pos], -1)

    def _is_identity(self) -> bool:
        """Whether the photo map is photo i -> item i for i in 0..n-1 (then look-ups need no search)."""
        if self._identity is None:
            pids, items = self.photo_map()
            self._identity = bool(len(pids) and pids[-1] == len(pids) - 1 and np.array_equal(pids, items))
        return self._identity

    def items(self, ids: Iterable[int]) -> list[Item]:
        """Items by id, in the order given (unknown ids left out), from memory when read before."""
        cache = self._items  # read without the lock: a dict look-up is atomic, and entries never change
        found = [(i, cache.get(i)) for i in map(int, ids)]
        missing = [i for i, it in found if it is None]
        if not missing:
            return [it for _, it in found if it is not None]
        read = {it.id: it for it in self.meta.items(missing)}
        with self._lock:
            cache.update(read)
            for old in list(itertools.islice(cache, max(0, len(cache) - ITEM_CACHE))):  # the first read go first
                del cache[old]
        return [it if it is not None else read[i] for i, it in found if it is not None or i in read]

    def _rows_of(self, item_ids) -> np.ndarray:
        """Rows of the photo map (ascending) that belong to the given items: binary searches, not a scan."""
        items = self.photo_map()[1]
        if self._is_identity():  # item i's photo is row i
            wanted = np.unique(np.asarray(list(item_ids), dtype=np.int64))
            return wanted[(wanted >= 0) & (wanted < len(items))]
        with self._lock:
            if self._by_item is None:
                order = np.argsort(items, kind="stable")
                self._by_item = (order, items[order])
            order, sorted_items = self._by_item
        wanted = np.unique(np.asarray(list(item_ids), dtype=np.int64))
        lo, hi = np.searchsorted(sorted_items, wanted, "left"), np.searchsorted(sorted_items, wanted, "right")
        if len(wanted) == 1:
            return order[lo[0] : hi[0]]
        return np.sort(np.concatenate([order[a:b] for a, b in zip(lo, hi, strict=True)] or [np.zeros(0, np.int64)]))

    def item_for_path(self, path: str | Path) -> int | None:
        """Id of the item with a photo at this absolute path, or at this path relative to a root."""
        try:
            p = Path(path).expanduser()
        except RuntimeError:  # "~name" of no known user: no such file
            return None
        roots = self.manifest.roots
        candidates = []
        if p.is_absolute() or p.exists():  # a file on disk: only the indexed file at that very place
            ap = p.resolve() if p.exists() else p
            for i, root in enumerate(roots):
                with contextlib.suppress(ValueError):
                    candidates.append((i, ap.relative_to(root).as_posix()))
        else:
            candidates = [(i, p.as_posix()) for i in range(len(roots))]
        for root_idx, rel in candidates:
            found = self.meta.item_for_file(root_idx, rel)
            if found is not None:
                return found
        return None

    def has_item(self, item_id: int) -> bool:
        """Whether the generation holds this item (every item has at least one photo)."""
        if self._photo_map is None and self._lookups < MAP_AFTER_LOOKUPS:
            self._lookups += 1
            return self.meta.has_item(item_id)
        if self._is_identity():
            return 0 <= int(item_id) < len(self.photo_map()[0])
        return len(self._rows_of([int(item_id)])) > 0

    def photos_of(self, item_ids) -> np.ndarray:
        """Photo ids of the given items (sorted)."""
        return self.photo_map()[0][self._rows_of(item_ids)]

    def item_vectors(self, item_ids, *, augmented: bool = False) -> dict[int, np.ndarray]:
        """The photo vectors (or ``augmented`` ones) of each item, ``{item id: (n_photos, dim)}``."""
        pids, items = self.photo_map()
        source = self.augmented if augmented and self.augmented is not None else self.faiss
        if not isinstance(item_ids, (list, tuple, np.ndarray)):
            item_ids = list(item_ids)
        if self._is_identity() and len(item_ids) == 1:  # "more like this": one reconstruct
            one = int(item_ids[0])
            return {one: np.asarray(source.reconstruct(one), np.float32)[None, :]} if 0 <= one < len(pids) else {}
        rows = self._rows_of(item_ids)
        sel_p, sel_i = pids[rows], items[rows]
        if len(sel_p) == 0:
            return {}
        vecs = np.asarray(source.reconstruct_batch(sel_p), dtype=np.float32)
        order = np.argsort(sel_i, kind="stable")  # each item's photos together, in photo order: one split, no scans
        ids, starts = np.unique(sel_i[order], return_index=True)
        return {int(i): vecs[part] for i, part in zip(ids, np.split(order, starts[1:]), strict=True)}
