"""Reading older index formats: version 1 metadata (items were files) rewritten as version 2.

A version 1 index opens as it is: its metadata is migrated into memory at open (a few seconds per million
items) and into the next generation's file by the first run that writes to it. Nothing on disk is changed
until then, so an older simsearch can keep reading the index until it is next updated.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from .metadata import SCHEMA, attrs_json, folder_key, py_path, ro_uri


def migrate_v1(src: Path, dst: sqlite3.Connection, roots: Sequence[str]) -> None:
    """Copy the version 1 metadata file ``src`` into ``dst`` (an empty database) in the version 2 schema.

    Each file becomes an item with one photo, keeping its id (item id = photo id = FAISS id), its key the path
    relative to its root and its attribute ``label`` the parent folder's name, as a folder index of version 2.
    """
    dst.executescript(SCHEMA)
    old = sqlite3.connect(ro_uri(src), uri=True)
    try:
        rows = old.execute("SELECT id, root, path, size, mtime_ns, label FROM items ORDER BY id")
        while chunk := list(itertools.islice(rows, 10_000)):
            dst.executemany(
                "INSERT INTO items(id, key, attrs) VALUES (?,?,?)",
                [
                    (i, folder_key(roots, r, py_path(p)), attrs_json({} if label is None else {"label": label}))
                    for i, r, p, _, _, label in chunk
                ],
            )
            dst.executemany(
                "INSERT INTO photos(id, item, root, path, size, mtime_ns) VALUES (?,?,?,?,?,?)",
                [(i, i, r, p, s, t) for i, r, p, s, t, _ in chunk],
            )
        dst.executemany(
            "INSERT INTO skipped(root, path, size, mtime_ns, reason) VALUES (?,?,?,?,?)",
            old.execute("SELECT root, path, size, mtime_ns, reason FROM skipped"),
        )
        dst.commit()
    finally:
        old.close()
