"""A snapshot: one opened generation, with the lazily built in-memory views that searches read."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from ..errors import IndexFormatError
from ..filters import AttributeTable
from .generation import load_augmented, load_generation
from .manifest import Manifest, existing_index, read_manifest
from .metadata import Metadata

OPEN_RETRIES = 5  # a writer may replace the generation between reading the manifest and its files


class Snapshot:
    """The FAISS index, metadata and manifest of one generation, read-only.

    The photo → item map and the item attributes are loaded on first use (a query without filters on an index
    of single-photo items never needs them) and kept for the life of the snapshot.
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
        self._attributes: tuple[np.ndarray, AttributeTable] | None = None

    @classmethod
    def open(cls, path: str | Path, *, mmap: bool = False) -> Snapshot:
        path = existing_index(path)
        for attempt in range(OPEN_RETRIES):
            manifest = read_manifest(path)
            try:
                faiss_index, meta = load_generation(path, manifest, mmap=mmap)
                try:
                    augmented = load_augmented(path, manifest, mmap=mmap)
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
        if self._photo_map is None and len(photo_ids) <= 4096:  # a few results: no need to load the whole map
            found = self.meta.items_of_photos(photo_ids)
            return np.array([found.get(int(p), -1) for p in photo_ids], dtype=np.int64)
        pids, items = self.photo_map()
        if len(pids) == 0:
            return np.full(len(photo_ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(pids, photo_ids), 0, len(pids) - 1)
        return np.where(pids[pos] == photo_ids, items[pos], -1)

    def photos_of(self, item_ids) -> np.ndarray:
        """Photo ids of the given items (sorted)."""
        pids, items = self.photo_map()
        return pids[np.isin(items, np.asarray(list(item_ids), dtype=np.int64))]

    def item_vectors(self, item_ids, *, augmented: bool = False) -> dict[int, np.ndarray]:
        """The photo vectors (or ``augmented`` ones) of each item, ``{item id: (n_photos, dim)}``."""
        pids, items = self.photo_map()
        wanted = np.asarray(list(item_ids), dtype=np.int64)
        mask = np.isin(items, wanted)
        sel_p, sel_i = pids[mask], items[mask]
        if len(sel_p) == 0:
            return {}
        source = self.augmented if augmented and self.augmented is not None else self.faiss
        vecs = np.asarray(source.reconstruct_batch(sel_p), dtype=np.float32)
        return {int(i): vecs[sel_i == i] for i in np.unique(sel_i)}
