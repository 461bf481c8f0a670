"""The live segment: the journal's writes since the snapshot's generation, as a small in-memory collection
searched beside the FAISS index (like Milvus's growing segments).

A put or patch of an item makes it a live item (its vectors and attributes here); the base item with the same
key, if any, is hidden from the FAISS results. A delete hides it too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..attributes import value_type
from ..filters import AttributeTable
from .delta import DeltaJournal, Op
from .metadata import Item, Photo
from .reader import Snapshot


@dataclass(frozen=True, eq=False)
class LiveItem:
    id: int
    key: str
    attributes: dict
    vectors: np.ndarray  # (n_photos, dim), unit rows
    photo_ids: np.ndarray
    photos: tuple[str, ...]  # absolute paths
    # values derived from the vectors alone (e.g. their expansion over an augmented snapshot), computed once by
    # the searches that need them and kept by a patch (which changes attributes only)
    derived: dict = field(default_factory=dict, repr=False)

    def as_item(self) -> Item:
        """The item as a stored one reads (its photos' size and time read now; 0 for a photo that is gone)."""
        photos = []
        for pid, name in zip(self.photo_ids.tolist(), self.photos, strict=True):
            p = Path(name)
            try:
                st = p.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = 0, 0
            photos.append(Photo(pid, str(p.parent), p.name, size, mtime))
        return Item(self.id, self.key, dict(self.attributes), tuple(photos))


@dataclass(frozen=True, eq=False)
class LiveState:
    """An immutable view of the live segment at one ``seq`` (searches read one without locks)."""

    snapshot: Snapshot  # the generation these writes apply to
    seq: int
    items: dict[str, LiveItem] = field(default_factory=dict)
    hidden: frozenset[int] = frozenset()  # base item ids replaced or deleted by live writes
    deleted: frozenset[str] = frozenset()
    schema: dict = field(default_factory=dict)
    matrix: np.ndarray | None = None  # every live photo vector, stacked
    owners: np.ndarray | None = None  # item id of each matrix row
    photo_ids: np.ndarray | None = None  # photo id of each matrix row
    table: tuple[np.ndarray, AttributeTable] | None = None  # item ids and attributes, for filters
    by_id: dict[int, LiveItem] = field(default_factory=dict)  # the items by id
    row_of_photo: dict[int, int] = field(default_factory=dict)  # matrix row of each live photo id
    starts: np.ndarray | None = None  # first matrix row of each item (in the table's order; rows are grouped)
    derived: dict = field(default_factory=dict, repr=False)  # per-state values the searches compute once

    @property
    def empty(self) -> bool:
        return not self.items and not self.hidden


class LiveView:
    """Follows the journal of one snapshot: :meth:`poll` (searches) and :meth:`refresh` apply new writes and
    return the current state; :meth:`applied` takes this process's own writes without reading them back.

    Searches do not touch the journal on every call: :meth:`poll` reads it at most once per interval, in one
    thread at a time (the others take the current state without waiting); this process's writes are applied by
    the writing thread, so they are seen at once, and other processes' within the interval.
    """

    def __init__(self, snapshot: Snapshot, journal: DeltaJournal):
        self.snapshot = snapshot
        self.journal = journal
        self._lock = threading.Lock()
        self._state = LiveState(snapshot, snapshot.manifest.delta_seq, schema=dict(snapshot.manifest.attributes))
        self._read_at = -float("inf")  # time.monotonic() of the last journal read

    @property
    def state(self) -> LiveState:
        return self._state

    def refresh(self) -> tuple[LiveState, bool]:
        """Apply new journal rows; also says whether this snapshot is stale: a compaction folded rows this view
        never read into a newer generation (then only a reload shows them)."""
        with self._lock:
            return self._read()

    def poll(self, interval: float) -> tuple[LiveState, bool]:
        """:meth:`refresh` when the journal was last read ``interval`` seconds ago or more and no other thread is
        reading it; otherwise the current state at once (not stale)."""
        if time.monotonic() - self._read_at < interval or not self._lock.acquire(blocking=False):
            return self._state, False
        try:
            return self._read()
        finally:
            self._lock.release()

    def applied(self, ops: list[Op]) -> tuple[LiveState, bool]:
        """Take writes this process has just journalled (``ops`` as the journal returned them); the journal is
        read instead when others' writes came in between."""
        with self._lock:
            if ops and ops[0].seq == self._state.seq + 1:
                self._state = self._apply(self._state, ops)
                return self._state, False
            return self._read()

    def _read(self) -> tuple[LiveState, bool]:
        seq = self._state.seq
        self._read_at = time.monotonic()
        ops = self.journal.read(seq)
        stale = (ops[0].seq != seq + 1) if ops else self.journal.last_seq() > seq
        if ops and not stale:
            self._state = self._apply(self._state, ops)
        return self._state, stale

    def _apply(self, state: LiveState, ops: list[Op]) -> LiveState:
        items = dict(state.items)
        hidden, deleted = set(state.hidden), set(state.deleted)
        schema = dict(state.schema)
        base_ids = self.snapshot.meta.ids_for_keys({op.key for op in ops if op.key not in items})
        for op in ops:
            base = base_ids.get(op.key)
            if op.kind == "delete":
                items.pop(op.key, None)
                deleted.add(op.key)
            elif op.kind == "put":
                assert op.vectors is not None and op.item is not None
                items[op.key] = LiveItem(
                    op.item, op.key, dict(op.attributes or {}), op.vectors, op.photo_ids(), op.photos
                )
                deleted.discard(op.key)
            else:  # patch
                current = items.get(op.key) or (None if op.key in deleted else self._from_base(op.key, base))
                if current is None:
                    continue
                attrs = {**current.attributes, **(op.attributes or {})}
                attrs = {k: v for k, v in attrs.items() if v is not None}
                items[op.key] = LiveItem(
                    current.id, op.key, attrs, current.vectors, current.photo_ids, current.photos, current.derived
                )
            for name, value in (op.attributes or {}).items() if op.kind != "delete" else ():
                if value is not None and name not in schema:
                    schema[name] = value_type(value) or "str"
            if base is not None:
                hidden.add(base)
        return _state(self.snapshot, ops[-1].seq, items, hidden, deleted, schema)

    def _from_base(self, key: str, base: int | None) -> LiveItem | None:
        if base is None:
            return None
        item = self.snapshot.meta.item(base)
        vecs = self.snapshot.item_vectors([base]).get(base)
        if vecs is None:
            return None
        return LiveItem(
            base,
            key,
            dict(item.attributes),
            vecs,
            np.array([p.id for p in item.photos], np.int64),
            tuple(str(p.abspath) for p in item.photos),
        )


def _state(snapshot, seq, items, hidden, deleted, schema) -> LiveState:
    live = list(items.values())
    matrix: np.ndarray | None
    owners: np.ndarray | None
    table: tuple[np.ndarray, AttributeTable] | None
    starts: np.ndarray | None = None
    if live:
        counts = np.fromiter((len(it.vectors) for it in live), np.int64, len(live))
        starts = np.concatenate(([0], np.cumsum(counts[:-1]))).astype(np.int64)
        matrix = np.concatenate([it.vectors for it in live]).astype(np.float32, copy=False)  # rows are 2-d
        ids = np.fromiter((it.id for it in live), np.int64, len(live))
        owners = np.repeat(ids, counts)
        photo_ids = np.concatenate([it.photo_ids for it in live])
        table = (ids, AttributeTable.from_rows(schema, [it.attributes for it in live]))
    else:
        matrix = owners = photo_ids = None
        table = None
    by_id = {it.id: it for it in live}
    rows = {} if photo_ids is None else {int(p): r for r, p in enumerate(photo_ids.tolist())}
    return LiveState(
        snapshot, seq, items, frozenset(hidden), frozenset(deleted), schema, matrix, owners, photo_ids, table,
        by_id, rows, starts,
    )  # fmt: skip
