"""The SQLite metadata of one generation: items (key, typed attributes), their photos, and skipped files.

Schema (format 2)::

    items(id INTEGER PRIMARY KEY, key TEXT UNIQUE, attrs TEXT)          attrs: a JSON object
    photos(id INTEGER PRIMARY KEY, item, root, path, size, mtime_ns, phash)   id = the vector's FAISS id
    skipped(root, path, size, mtime_ns, reason)

Every read that takes many ids passes them as one JSON array (``json_each``), never one SQL variable each.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import IndexFormatError

SCHEMA = """
CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, attrs TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS photos(
    id INTEGER PRIMARY KEY, item INTEGER NOT NULL, root INTEGER NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, phash INTEGER, UNIQUE(root, path, item));
CREATE INDEX IF NOT EXISTS photos_item ON photos(item);
CREATE TABLE IF NOT EXISTS skipped(
    root INTEGER NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL, PRIMARY KEY(root, path));
"""


@dataclass(frozen=True)
class Photo:
    """One photo of an item: one vector in the FAISS index (``id`` is its FAISS id)."""

    id: int
    root: str
    path: str  # relative to its root
    size: int
    mtime_ns: int
    phash: int | None = None

    @property
    def abspath(self) -> Path:
        return Path(self.root) / self.path


@dataclass(frozen=True, eq=False)
class Item:
    """One indexed item: a key, typed attributes and one or more photos (a file, in a folder index)."""

    id: int
    key: str
    attributes: dict
    photos: tuple[Photo, ...] = ()

    @property
    def label(self) -> str | None:
        value = self.attributes.get("label")
        return None if value is None else str(value)

    @property
    def path(self) -> str:
        return self.photos[0].path if self.photos else ""

    @property
    def root(self) -> str:
        return self.photos[0].root if self.photos else ""

    @property
    def size(self) -> int:
        return self.photos[0].size if self.photos else 0

    @property
    def mtime_ns(self) -> int:
        return self.photos[0].mtime_ns if self.photos else 0

    @property
    def abspath(self) -> Path:
        return self.photos[0].abspath if self.photos else Path()

    @cached_property
    def photo_paths(self) -> dict[int, tuple[str, str]]:
        """``{photo id: (path relative to its root, absolute path)}``, the first photo first; worked out once per
        item (a search result names the photo that matched, and a service returns the same items again and again)."""
        return {p.id: (p.path, os.path.join(p.root, p.path)) for p in self.photos}


# ---------------------------------------------------------------------------------------------- paths and keys


def db_path(relpath: str) -> str | bytes:
    """A relative path as stored in SQLite: text, or the raw bytes of a name that is not valid UTF-8.

    Paths from the file system may hold lone surrogates (undecodable bytes, PEP 383) that SQLite cannot store
    as text; the bytes round-trip exactly through :func:`py_path`.
    """
    try:
        relpath.encode("utf-8")
        return relpath
    except UnicodeEncodeError:
        return os.fsencode(relpath)


def py_path(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def display_text(text: str) -> str:
    """Text for keys and labels: undecodable bytes of a file name shown as backslash escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def safe_relpath(relpath: str, where: str) -> str:
    """Refuse metadata paths that would lead out of their root (absolute, or with '..')."""
    if not isinstance(relpath, str) or not relpath or relpath.startswith("/") or ".." in relpath.split("/"):
        raise IndexFormatError(f"{where}: invalid item path {relpath!r} in the metadata (tampered?)")
    return relpath


def label_from_path(relpath: str) -> str | None:
    """A folder index's label: the name of the image's parent folder (None for files at the root)."""
    parts = relpath.split("/")
    return display_text(parts[-2]) if len(parts) >= 2 else None


def folder_key(roots: Sequence[str], root_idx: int, relpath: str) -> str:
    """A folder index's item key: the path relative to the first root; under a later root, prefixed with the
    root's index (``1:sub/file.jpg``) so that keys stay unique."""
    rel = display_text(relpath)
    return rel if root_idx == 0 else f"{root_idx}:{rel}"


def ro_uri(path: Path) -> str:
    """SQLite URI opening ``path`` read-only, whatever characters its name holds."""
    return f"file:{urllib.parse.quote(os.fsencode(path.absolute()))}?mode=ro"


def id_list(ids: Iterable[int]) -> str:
    """Ids as one SQL parameter (a JSON array read with ``json_each``)."""
    return json.dumps([int(i) for i in ids])


# ---------------------------------------------------------------------------------------------- reading


class Metadata:
    """Read access to one generation's metadata. Thread-safe for reads (one connection, serialised by SQLite)."""

    def __init__(self, db: sqlite3.Connection, roots: Sequence[str], where: str):
        self.db = db
        self.roots = list(roots)
        self.where = where

    def close(self) -> None:
        self.db.close()

    def _photo(self, row) -> Photo:
        pid, root, path, size, mtime, phash = row
        if not 0 <= root < len(self.roots):
            raise IndexFormatError(f"{self.where}: photo {pid} has no root (tampered metadata?)")
        return Photo(pid, self.roots[root], safe_relpath(py_path(path), self.where), size, mtime, phash)

    def items(self, ids: Iterable[int] | None = None) -> list[Item]:
        """Items by id, in the order given (unknown ids are left out); all items by id when ``ids`` is None."""
        if ids is None:
            rows = self.db.execute("SELECT id, key, attrs FROM items ORDER BY id").fetchall()
            photos = self.db.execute(
                "SELECT item, id, root, path, size, mtime_ns, phash FROM photos ORDER BY item, id"
            ).fetchall()
        else:
            wanted = [int(i) for i in ids]
            arg = id_list(wanted)
            found = self.db.execute(
                "SELECT id, key, attrs FROM items WHERE id IN (SELECT value FROM json_each(?))", (arg,)
            )
            by_id = {r[0]: r for r in found}
            rows = [by_id[i] for i in wanted if i in by_id]
            photos = self.db.execute(
                "SELECT item, id, root, path, size, mtime_ns, phash FROM photos "
                "WHERE item IN (SELECT value FROM json_each(?)) ORDER BY item, id",
                (arg,),
            ).fetchall()
        grouped: dict[int, list[Photo]] = {}
        for r in photos:
            grouped.setdefault(r[0], []).append(self._photo(r[1:]))
        return [Item(i, key, _attrs(attrs, self.where), tuple(grouped.get(i, ()))) for i, key, attrs in rows]

    def item(self, item_id: int) -> Item:
        found = self.items([item_id])
        if not found:
            raise KeyError(item_id)
        return found[0]

    def has_item(self, item_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM items WHERE id=?", (int(item_id),)).fetchone() is not None

    def item_ids(self) -> np.ndarray:
        return np.array([r[0] for r in self.db.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)

    def ids_for_keys(self, keys: Iterable[str]) -> dict[str, int]:
        arg = json.dumps([str(k) for k in keys])
        rows = self.db.execute("SELECT key, id FROM items WHERE key IN (SELECT value FROM json_each(?))", (arg,))
        return dict(rows)

    def item_for_file(self, root_idx: int, relpath: str) -> int | None:
        row = self.db.execute(
            "SELECT item FROM photos WHERE root=? AND path=? ORDER BY id LIMIT 1", (root_idx, db_path(relpath))
        ).fetchone()
        return None if row is None else int(row[0])

    def photo_ids(self, item_ids: Iterable[int]) -> np.ndarray:
        rows = self.db.execute(
            "SELECT id FROM photos WHERE item IN (SELECT value FROM json_each(?)) ORDER BY id", (id_list(item_ids),)
        )
        return np.array([r[0] for r in rows], dtype=np.int64)

    def items_of_photos(self, photo_ids: Iterable[int]) -> dict[int, int]:
        rows = self.db.execute(
            "SELECT id, item FROM photos WHERE id IN (SELECT value FROM json_each(?))", (id_list(photo_ids),)
        )
        return dict(rows)

    def photo_items(self) -> tuple[np.ndarray, np.ndarray]:
        """(photo ids sorted, their item ids): the whole map, for filters and pooling."""
        rows = self.db.execute("SELECT id, item FROM photos ORDER BY id").fetchall()
        arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def attribute_records(self) -> tuple[np.ndarray, list[dict]]:
        """(item ids sorted, their attribute dicts): input of the in-memory attribute table that filters read."""
        ids, records = [], []
        for i, attrs in self.db.execute("SELECT id, attrs FROM items ORDER BY id"):
            ids.append(i)
            records.append(_attrs(attrs, self.where))
        return np.array(ids, dtype=np.int64), records

    def items_with_path_prefix(self, prefix: str) -> np.ndarray:
        rows = self.db.execute(
            "SELECT DISTINCT item FROM photos WHERE substr(path, 1, ?) = ? ORDER BY item", (len(prefix), prefix)
        )
        return np.array([r[0] for r in rows], dtype=np.int64)

    def label_counts(self) -> dict[str | None, int]:
        rows = self.db.execute("SELECT json_extract(attrs, '$.label') AS l, COUNT(*) FROM items GROUP BY l")
        return {(None if label is None else str(label)): n for label, n in rows}

    def count_items(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def count_photos(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM photos").fetchone()[0])

    def skipped(self) -> list[tuple[str, str]]:
        rows = self.db.execute("SELECT root, path, reason FROM skipped ORDER BY root, path")
        return [(str(Path(self.roots[r]) / py_path(p)), reason) for r, p, reason in rows]

    def photo_rows(self, photo_ids: Iterable[int]) -> list[tuple[int, str, str]]:
        """``(photo id, path, item key)`` of the given photos."""
        rows = self.db.execute(
            "SELECT p.id, p.path, i.key FROM photos p JOIN items i ON i.id = p.item "
            "WHERE p.id IN (SELECT value FROM json_each(?))",
            (id_list(photo_ids),),
        )
        return [(pid, py_path(path), key) for pid, path, key in rows]

    def photo_pages(self, batch_size: int = 50_000) -> Iterator[list[tuple]]:
        """Pages of ``(photo id, root, path, size, mtime_ns, label, key, attrs json)`` in photo id order."""
        last = -1
        while True:
            rows = self.db.execute(
                "SELECT p.id, p.root, p.path, p.size, p.mtime_ns, json_extract(i.attrs, '$.label'), i.key, i.attrs "
                "FROM photos p JOIN items i ON i.id = p.item WHERE p.id > ? ORDER BY p.id LIMIT ?",
                (last, int(batch_size)),
            ).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def iter_photo_rows(self) -> Iterator[tuple[int, int, str, int, int]]:
        """(photo id, root, path, size, mtime_ns) of every photo: the build step's view of what is indexed."""
        for pid, root, path, size, mtime in self.db.execute("SELECT id, root, path, size, mtime_ns FROM photos"):
            yield pid, root, py_path(path), size, mtime


def _attrs(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise IndexFormatError(f"{where}: unreadable attributes {str(text)[:60]!r} (tampered metadata?)") from None
    if not isinstance(value, dict):
        raise IndexFormatError(f"{where}: attributes must be a JSON object (tampered metadata?)")
    return value


def attrs_json(attributes: dict) -> str:
    return json.dumps(attributes, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
