"""The live-write journal: item puts, attribute patches and deletes not yet folded into a generation.

``delta.sqlite`` (WAL, ``synchronous=FULL``) holds one row per acknowledged write, in order. A write is
acknowledged once its transaction commits, so it survives ``kill -9``. Searches read the journal beside the
generation (:mod:`simsearch.store.live`); compaction (:mod:`simsearch.compact`) folds the rows up to some ``seq``
into a new generation whose manifest records ``delta_seq``, then deletes them: rows at or below a generation's
``delta_seq`` are ignored, so a crash between the two steps loses and duplicates nothing.

Items created by a live write get ids from a range of their own (:data:`LIVE_ID_BASE` + 64 × seq + photo number),
so they never collide with the ids a batch ``index`` run allocates, and keep them when compacted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SimsearchError

DELTA = "delta.sqlite"
LIVE_ID_BASE = 1 << 40
MAX_LIVE_PHOTOS = 64  # photos per item in one live write
KINDS = ("put", "patch", "delete")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ops(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key TEXT NOT NULL, item INTEGER,
    attrs TEXT, vectors BLOB, photos TEXT, ts REAL NOT NULL);
"""


@dataclass(frozen=True, eq=False)
class Op:
    """One journalled write. ``put``: the whole item (attributes and photos); ``patch``: attributes to set
    (a None value removes one); ``delete``: the item."""

    seq: int
    kind: str
    key: str
    item: int | None
    attributes: dict | None
    vectors: np.ndarray | None
    photos: tuple[str, ...]

    def photo_ids(self) -> np.ndarray:
        return live_photo_ids(self.seq, len(self.photos))


def live_item_id(seq: int) -> int:
    return LIVE_ID_BASE + MAX_LIVE_PHOTOS * seq


def live_photo_ids(seq: int, n: int) -> np.ndarray:
    return np.arange(live_item_id(seq), live_item_id(seq) + n, dtype=np.int64)


@dataclass(frozen=True)
class NewOp:
    """A write to journal (the ``seq`` is given by the journal)."""

    kind: str
    key: str
    item: int | None = None  # the existing item's id; None for a new key (its id comes from the seq)
    attributes: dict | None = None
    vectors: np.ndarray | None = None
    photos: tuple[str, ...] = ()


class DeltaJournal:
    """Appends and reads ``delta.sqlite``: one connection for appends and one for reads, each serialised by its
    own lock, so that reads (searches looking for new writes) never wait for an append's commit (WAL readers do
    not block on the writer)."""

    def __init__(self, path: Path, dim: int):
        self.file = Path(path) / DELTA
        self.dim = dim
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None

    def _read_conn(self) -> sqlite3.Connection | None:
        """The reading connection (None while there is no journal file); call with ``_read_lock`` held."""
        if self._reader is None:
            if not self.file.exists():
                return None
            if self._db is None:  # the schema, once, by the writing connection
                with self._lock:
                    self._conn(create=True)
            self._reader = sqlite3.connect(self.file, check_same_thread=False, timeout=30)
        return self._reader

    def _conn(self, create: bool) -> sqlite3.Connection | None:
        if self._db is None:
            if not create and not self.file.exists():
                return None
            db = sqlite3.connect(self.file, check_same_thread=False, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def close(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def append(self, ops: Sequence[NewOp], *, after: int = 0) -> list[Op]:
        """Journal ``ops`` in one transaction; once this returns they are durable. Returns them with their seq.

        ``after`` is the generation's ``delta_seq``: a new journal file numbers its writes after it."""
        for op in ops:
            if op.kind not in KINDS:
                raise SimsearchError(f"unknown write kind {op.kind!r}")
            if op.vectors is not None and (op.vectors.ndim != 2 or op.vectors.shape[1] != self.dim):
                raise SimsearchError(f"vectors of {op.key!r} must have shape (n, {self.dim})")
            if len(op.photos) > MAX_LIVE_PHOTOS:
                raise SimsearchError(f"at most {MAX_LIVE_PHOTOS} photos per item, not {len(op.photos)}")
        out = []
        with self._lock:
            db = self._conn(create=True)
            assert db is not None
            with db:  # one transaction: all or nothing
                row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='ops'").fetchone()
                if (
                    row is None or row[0] < after
                ):  # a journal deleted by hand must not number writes the generation already holds
                    db.execute("DELETE FROM sqlite_sequence WHERE name='ops'")
                    db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('ops', ?)", (int(after),))
                for op in ops:
                    cur = db.execute(
                        "INSERT INTO ops(kind, key, item, attrs, vectors, photos, ts) VALUES (?,?,?,?,?,?,?)",
                        (
                            op.kind,
                            op.key,
                            op.item,
                            None if op.attributes is None else json.dumps(op.attributes, ensure_ascii=False),
                            None if op.vectors is None else np.ascontiguousarray(op.vectors, np.float32).tobytes(),
                            json.dumps(list(op.photos)),
                            time.time(),
                        ),
                    )
                    seq = int(cur.lastrowid or 0)
                    item = op.item if op.item is not None or op.kind != "put" else live_item_id(seq)
                    if item != op.item:
                        db.execute("UPDATE ops SET item=? WHERE seq=?", (item, seq))
                    vecs = None if op.vectors is None else np.ascontiguousarray(op.vectors, np.float32)  # as read back
                    out.append(Op(seq, op.kind, op.key, item, op.attributes, vecs, tuple(op.photos)))
        return out

    def read(self, after: int, upto: int | None = None) -> list[Op]:
        """The ops with ``after < seq <= upto``, in order."""
        with self._read_lock:
            db = self._read_conn()
            if db is None:
                return []
            rows = db.execute(
                "SELECT seq, kind, key, item, attrs, vectors, photos FROM ops WHERE seq > ? AND seq <= ? ORDER BY seq",
                (int(after), int(upto if upto is not None else 1 << 62)),
            ).fetchall()
        return [
            Op(
                seq,
                kind,
                key,
                item,
                None if attrs is None else json.loads(attrs),
                None if vecs is None else np.frombuffer(vecs, np.float32).reshape(-1, self.dim).copy(),
                tuple(json.loads(photos or "[]")),
            )
            for seq, kind, key, item, attrs, vecs, photos in rows
        ]

    def last_seq(self) -> int:
        """The seq of the newest write ever journalled (also after compaction deleted it)."""
        with self._read_lock:
            db = self._read_conn()
            if db is None:
                return 0
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='ops'").fetchone()
            return int(row[0]) if row else 0

    def pending(self, after: int) -> int:
        with self._read_lock:
            db = self._read_conn()
            if db is None:
                return 0
            return int(db.execute("SELECT COUNT(*) FROM ops WHERE seq > ?", (int(after),)).fetchone()[0])

    def truncate(self, upto: int) -> None:
        """Forget the ops folded into a published generation (``seq <= upto``)."""
        with self._lock:
            db = self._conn(create=False)
            if db is not None:
                with db:
                    db.execute("DELETE FROM ops WHERE seq <= ?", (int(upto),))
