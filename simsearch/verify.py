"""``simsearch verify``: an index's internal consistency, checked from its files alone (layer: build)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from .errors import IndexFormatError
from .store import Manifest, faiss_message, read_manifest, safe_relpath
from .store.delta import LIVE_ID_BASE
from .store.generation import idmap_ids
from .store.metadata import py_path, ro_uri


def verify_index(path: str | Path) -> tuple[list[str], dict]:
    """Check an index's internal consistency; returns (problems, stats). An empty problem list means ok."""
    import faiss

    path = Path(path)
    try:
        m = read_manifest(path)
    except IndexFormatError as e:
        return [str(e)], {}
    stats: dict = {"generation": m.generation, "count": m.count, "items": m.items, "format_version": m.format_version}
    vec_path, meta_path = path / m.vectors_file, path / m.metadata_file
    problems = [f"missing {p.name}" for p in (vec_path, meta_path) if not p.exists()]
    if problems:
        return problems, stats
    try:
        index = faiss.read_index(str(vec_path))
    except RuntimeError as e:
        return [f"{vec_path.name}: unreadable ({faiss_message(e)})"], stats
    try:
        db = sqlite3.connect(ro_uri(meta_path), uri=True)
    except sqlite3.Error as e:
        return [f"{meta_path.name}: cannot open ({e})"], stats
    try:
        photo_table = "items" if m.format_version == 1 else "photos"
        problems += _check_metadata(db, m, photo_table, meta_path.name)
        joined = (
            "SELECT id FROM items ORDER BY id"
            if photo_table == "items"
            else "SELECT p.id FROM photos p JOIN items i ON i.id = p.item ORDER BY p.id"
        )
        db_ids = np.array([r[0] for r in db.execute(joined)], dtype=np.int64)
        (n_skipped,) = db.execute("SELECT COUNT(*) FROM skipped").fetchone()
        if n_skipped != m.skipped:
            problems.append(f"skipped files: {n_skipped} in the metadata, manifest {m.skipped}")
        stats["skipped"] = int(n_skipped)
    except sqlite3.DatabaseError as e:
        return [*problems, f"{meta_path.name}: {e}"], stats
    finally:
        db.close()
    problems += _check_vectors(index, m, db_ids)
    stats["vectors"] = int(index.ntotal)
    return problems, stats


def _check_metadata(db: sqlite3.Connection, m: Manifest, photos: str, name: str) -> list[str]:
    problems = []
    (check,) = db.execute("PRAGMA integrity_check").fetchone()
    if check != "ok":
        problems.append(f"{name}: {check}")
    group = "root, path" if photos == "items" else "item, root, path"  # one photo may serve several items
    (dups,) = db.execute(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {photos} GROUP BY {group} HAVING COUNT(*) > 1)"
    ).fetchone()
    if dups:
        problems.append(f"{dups} paths appear more than once in the metadata")
    (rootless,) = db.execute(f"SELECT COUNT(*) FROM {photos} WHERE root < 0 OR root >= ?", (len(m.roots),)).fetchone()
    if rootless:
        problems.append(f"{rootless} photos refer to no root of the manifest")
    unsafe = 0
    for (p,) in db.execute(f"SELECT path FROM {photos}"):
        try:
            safe_relpath(py_path(p), "")
        except IndexFormatError:
            unsafe += 1
    if unsafe:
        problems.append(f"{unsafe} photo paths are absolute or lead out of their root")
    if photos == "photos":
        (orphans,) = db.execute("SELECT COUNT(*) FROM photos WHERE item NOT IN (SELECT id FROM items)").fetchone()
        if orphans:
            problems.append(f"counts differ: {orphans} photos belong to no item")
        (empty,) = db.execute("SELECT COUNT(*) FROM items WHERE id NOT IN (SELECT item FROM photos)").fetchone()
        if empty:
            problems.append(f"{empty} items have no photo")
        (items,) = db.execute("SELECT COUNT(*) FROM items").fetchone()
        if items != m.items:
            problems.append(f"counts differ: {items} items in the metadata, manifest {m.items}")
    return problems


def _check_vectors(index, m: Manifest, db_ids: np.ndarray) -> list[str]:

    problems = []
    if index.d != m.dim:
        problems.append(f"FAISS dim {index.d} != manifest dim {m.dim}")
    if not (index.ntotal == len(db_ids) == m.count):
        problems.append(f"counts differ: {index.ntotal} vectors, {len(db_ids)} metadata rows, manifest {m.count}")
    try:
        faiss_ids = idmap_ids(index)
    except AttributeError:
        return [*problems, "FAISS index is not an IndexIDMap2"]
    if len(np.unique(faiss_ids)) != len(faiss_ids):
        problems.append(f"{len(faiss_ids) - len(np.unique(faiss_ids))} duplicate ids in the FAISS index")
    if not np.array_equal(np.sort(faiss_ids), db_ids):
        problems.append("ids in the FAISS index and in the metadata differ")
    batch_ids = db_ids[db_ids < LIVE_ID_BASE]  # ids of live writes come from a range of their own
    if len(batch_ids) and batch_ids.max() >= m.next_id:
        problems.append(f"id {batch_ids.max()} >= next_id {m.next_id}")
    if index.ntotal:
        sample = faiss_ids[:: max(1, len(faiss_ids) // 1000)]
        vecs = np.asarray(index.reconstruct_batch(sample))
        norms = np.linalg.norm(vecs, axis=1)
        if not np.isfinite(vecs).all():
            problems.append("non-finite vectors")
        elif "Flat" in m.index_factory and np.abs(norms - 1).max() > 1e-3:
            problems.append(f"vectors are not unit length (norms {norms.min():.4f}..{norms.max():.4f})")
    return problems
