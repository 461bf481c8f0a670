"""Generations: the one writer that publishes the next (loading the current one: :mod:`simsearch.store.loading`).

Layout of ``indexes/<name>/``::

    manifest.json          the commit point: names the current generation's files (replaced atomically)
    vectors-<gen>.faiss    FAISS index (IndexIDMap2 over the factory string; ids are photo ids)
    augmented-<gen>.faiss  the same ids' augmented vectors (only with augmentation, see simsearch.augment_index)
    graph-<gen>.npz        the raw vectors' neighbour graph they were computed from (for incremental updates)
    meta-<gen>.sqlite      items, photos and skipped files (see :mod:`simsearch.store.metadata`)
    delta.sqlite           live writes not yet folded into a generation (see :mod:`simsearch.store.delta`)
    skipped.csv            human-readable report of files that could not be indexed
    .lock                  held by the one process allowed to write a generation

A writer builds the next generation's files beside the current ones, fsyncs them, then replaces
``manifest.json``; readers always see one complete generation, old or new.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import io
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text, fsync_dir, fsync_file
from ..errors import IndexLockedError, SimsearchError
from ..faissops import search_params, set_search_params
from .loading import faiss_message
from .manifest import AUGMENT_KEY, FORMAT_VERSION, MANIFEST, Manifest, published_generation
from .metadata import SCHEMA, Metadata, attrs_json, py_path
from .migrate import migrate_v1

log = logging.getLogger("simsearch")

DEFAULT_FACTORY = "IDMap2,Flat"
TRAIN_BATCH = 10_000  # vectors gathered before an untrained index is trained

RemoveIds = Callable[[object, np.ndarray], bool]  # (faiss index, ids) -> handled; see autoindex.remove_ids


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def idmap_ids(index) -> np.ndarray:
    """The external ids of an ``IndexIDMap2``, in its internal order."""
    import faiss

    return faiss.vector_to_array(getattr(faiss.downcast_index(index), "id_map")).astype(np.int64)  # noqa: B009


def new_faiss_index(dim: int, factory: str = DEFAULT_FACTORY):
    """An inner-product FAISS index from a factory string, always wrapped in ``IndexIDMap2``."""
    import faiss

    if factory.startswith("IDMap,"):
        factory = factory.replace("IDMap,", "IDMap2,", 1)
    if not factory.startswith("IDMap"):
        factory = f"IDMap2,{factory}"
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT), factory
    except RuntimeError as e:
        raise SimsearchError(f"invalid FAISS factory string {factory!r}: {faiss_message(e)}") from None


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Exclusive, non-blocking lock for writers of one index (released when the process dies)."""
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise IndexLockedError(
                f"{path} is being written by another simsearch process (pid {other}); wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


class GenerationWriter:
    """Holds the next generation in memory (FAISS) and in a temp SQLite copy; :meth:`commit` publishes it.

    Use under :func:`writer_lock`. ``remove_ids`` handles index types whose own ``remove_ids`` is wrong or
    missing (the build layer passes :func:`simsearch.autoindex.remove_ids`); others are rebuilt without the ids.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        faiss_index,
        base: Manifest | None,
        *,
        remove_ids: RemoveIds | None = None,
    ):
        self.path, self.m, self.faiss = path, manifest, faiss_index
        self.tmp_meta = path / f".meta-next-{os.getpid()}.sqlite"
        self._remove_ids = remove_ids
        self._deferred_drop: set[int] = set()  # ids to remove from an index type that cannot (one rebuild for all)
        self._remove_stale_files()
        if base is not None and base.format_version == 1:
            db = sqlite3.connect(self.tmp_meta)
            migrate_v1(path / base.metadata_file, db, base.roots)
            db.close()
        elif base is not None:
            shutil.copyfile(path / base.metadata_file, self.tmp_meta)
        self.db = sqlite3.connect(self.tmp_meta, check_same_thread=False)
        self.db.executescript(SCHEMA)
        self.meta = Metadata(self.db, self.m.roots, str(path))
        self.pending_train: list[tuple[np.ndarray, np.ndarray]] = []
        self.dirty = base is None or base.format_version != FORMAT_VERSION  # new or older: written even if unchanged
        self.augmented: tuple[Any, dict[str, np.ndarray], dict] | None = None  # for the next commit only

    # -- manifest fields the build step changes
    def update_manifest(self, **changes) -> None:
        self.m = dataclasses.replace(self.m, **changes)
        self.meta.roots = list(self.m.roots)
        self.dirty = True

    def allocate_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self.m.next_id, self.m.next_id + n, dtype=np.int64)
        self.m = dataclasses.replace(self.m, next_id=self.m.next_id + n)
        return ids

    # -- items and photos
    def add_items(self, rows: Sequence[tuple[int, str, dict]]) -> None:
        """Insert items ``(id, key, attributes)``."""
        if rows:
            self.dirty = True
            self.db.executemany(
                "INSERT INTO items(id, key, attrs) VALUES (?,?,?)", [(i, k, attrs_json(a)) for i, k, a in rows]
            )

    def set_attributes(self, rows: Sequence[tuple[int, dict]]) -> None:
        if rows:
            self.dirty = True
            self.db.executemany("UPDATE items SET attrs=? WHERE id=?", [(attrs_json(a), i) for i, a in rows])

    def add_photos(self, ids: np.ndarray, vectors: np.ndarray, rows: Sequence[tuple]) -> None:
        """Add vectors with their photo rows ``(id, item, root, path, size, mtime_ns, phash)``."""
        if len(ids) == 0:
            return
        self.dirty = True
        if not self.faiss.is_trained:
            self.pending_train.append((ids, vectors))
        else:
            self.faiss.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
        self.db.executemany(
            "INSERT INTO photos(id, item, root, path, size, mtime_ns, phash) VALUES (?,?,?,?,?,?,?)", rows
        )

    def remove_photos(self, ids: Sequence[int] | np.ndarray) -> None:
        if not len(ids):
            return
        import faiss

        self.dirty = True
        arr = np.asarray(sorted(int(i) for i in ids), dtype=np.int64)
        if self.pending_train:  # vectors not yet in FAISS (waiting for training): dropped from the buffer
            buffered = np.concatenate([i for i, _ in self.pending_train])
            self.pending_train = [(i[~np.isin(i, arr)], v[~np.isin(i, arr)]) for i, v in self.pending_train]
            arr = arr[~np.isin(arr, buffered)]
        try:
            if len(arr) and (self._remove_ids is None or not self._remove_ids(self.faiss, arr)):
                self.faiss.remove_ids(faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr)))
        except RuntimeError:  # cannot remove (HNSW, flat PQ): rebuilt once, before the index is next used
            self._deferred_drop.update(arr.tolist())
        self.db.execute("DELETE FROM photos WHERE id IN (SELECT value FROM json_each(?))", (_ids(ids),))

    def remove_items(self, item_ids: Sequence[int] | np.ndarray) -> None:
        """Remove items with all their photos."""
        if not len(item_ids):
            return
        self.remove_photos(self.meta.photo_ids(item_ids))
        self.db.execute("DELETE FROM items WHERE id IN (SELECT value FROM json_each(?))", (_ids(item_ids),))
        self.dirty = True

    def _rebuild_without(self, drop: set[int]) -> None:
        """For index types that cannot remove: re-create and re-add the remaining vectors."""

        ids = idmap_ids(self.faiss)
        keep = np.array([i for i in ids if int(i) not in drop], dtype=np.int64)
        vecs = np.asarray(self.faiss.reconstruct_batch(keep), dtype=np.float32) if len(keep) else None
        params = search_params(self.faiss)  # e.g. a tuned efSearch: kept by the rebuilt index
        log.warning(
            "%s cannot remove vectors: rebuilding it from the %d kept (for frequent removals choose an IVF index, "
            "e.g. `simsearch rebuild PATH --index IVF1024,PQ160x4fs,RFlat` for 1M 1280-d vectors)",
            self.m.index_factory,
            len(keep),
        )
        self.faiss, _ = new_faiss_index(self.m.dim, self.m.index_factory)
        if vecs is not None:
            if not self.faiss.is_trained:
                self.faiss.train(vecs)
            self.faiss.add_with_ids(vecs, keep)
        set_search_params(self.faiss, params)

    def replace_index(self, faiss_index, index_factory: str, extra: dict | None = None) -> None:
        """Swap in another FAISS index holding the same ids (e.g. the automatic choice retrained)."""
        self.faiss = faiss_index
        self.update_manifest(index_factory=index_factory, extra=dict(extra if extra is not None else self.m.extra))

    def set_augmented(self, faiss_index: Any, graph: dict[str, np.ndarray], record: dict) -> None:
        """Augmented vectors (same ids as the raw index), their neighbour graph and record, written by the next
        commit. A commit without them publishes a generation without augmented vectors (searches use raw)."""
        self.augmented = (faiss_index, graph, dict(record))
        self.dirty = True

    # -- skipped files
    def skip(self, rows: Sequence[tuple]) -> None:
        self.dirty = self.dirty or bool(rows)
        self.db.executemany(
            "INSERT OR REPLACE INTO skipped(root, path, size, mtime_ns, reason) VALUES (?,?,?,?,?)", rows
        )

    def unskip(self, keys: Sequence[tuple[int, object]]) -> None:
        self.dirty = self.dirty or bool(keys)
        self.db.executemany("DELETE FROM skipped WHERE root=? AND path=?", keys)

    # -- publishing
    def flush_training(self, final: bool) -> None:
        if self._deferred_drop:
            drop, self._deferred_drop = self._deferred_drop, set()
            self._rebuild_without(drop)
        if not self.pending_train or (not final and sum(len(i) for i, _ in self.pending_train) < TRAIN_BATCH):
            return
        ids = np.concatenate([i for i, _ in self.pending_train])
        vecs = np.vstack([v for _, v in self.pending_train])
        if len(ids) == 0:
            self.pending_train = []
            return
        try:
            self.faiss.train(np.ascontiguousarray(vecs, np.float32))
        except RuntimeError as e:
            raise SimsearchError(
                f"cannot train FAISS index {self.m.index_factory!r} on {len(vecs)} vectors: "
                f"{faiss_message(e)}; use more images or a simpler --index"
            ) from None
        self.faiss.add_with_ids(vecs, ids)
        self.pending_train = []

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of everything added so far (for retraining at the end of a run)."""

        self.flush_training(final=True)
        ids = idmap_ids(self.faiss)
        return ids, np.asarray(self.faiss.reconstruct_batch(ids), dtype=np.float32)

    def commit(self) -> bool:
        """Publish everything added so far as a new generation (atomic: manifest replaced last).

        Returns False when there was nothing to publish (or an untrained index cannot be saved yet).
        """
        import faiss

        self.flush_training(final=False)
        if self.pending_train or not self.dirty:
            return False
        try:
            self.db.commit()
        except sqlite3.Error as e:
            raise SimsearchError(
                f"could not save {self.path} ({e}); the previous version of the index ({self.m.count} items) is intact"
            ) from None
        photos, items = self.meta.count_photos(), self.meta.count_items()
        (skipped,) = self.db.execute("SELECT COUNT(*) FROM skipped").fetchone()
        if photos != self.faiss.ntotal:
            raise SimsearchError(f"internal error: {self.faiss.ntotal} vectors but {photos} photo rows; nothing saved")
        old = self.m
        new = dataclasses.replace(
            old,
            format_version=FORMAT_VERSION,
            generation=old.generation + 1,
            count=photos,
            items=items,
            skipped=int(skipped),
            updated=now(),
        )
        augmented = self.augmented
        if augmented is not None:
            if augmented[0].ntotal != photos:
                raise SimsearchError(f"internal error: {augmented[0].ntotal} augmented vectors but {photos} photos")
            new = dataclasses.replace(
                new, extra={**new.extra, AUGMENT_KEY: {**augmented[2], "generation": new.generation}}
            )
        elif new.augment_record is not None:  # the spec stays; this generation has no augmented vectors
            new = dataclasses.replace(new, extra={**new.extra, AUGMENT_KEY: {**new.augment_record, "generation": None}})
        vec_tmp = self.path / f".{new.vectors_file}.tmp"
        db_closed = False
        written: list[Path] = [vec_tmp, self.path / new.vectors_file, self.path / new.metadata_file]
        try:
            try:
                faiss.write_index(self.faiss, str(vec_tmp))
                if augmented is not None:
                    aug_tmp = self.path / f".{new.augmented_file}.tmp"
                    graph_tmp = self.path / f".{new.graph_file}.tmp"
                    written += [aug_tmp, graph_tmp, self.path / new.augmented_file, self.path / new.graph_file]
                    faiss.write_index(augmented[0], str(aug_tmp))
                    with open(graph_tmp, "wb") as out:
                        np.savez(out, **augmented[1])  # type: ignore[arg-type]
                    for tmp, final in ((aug_tmp, new.augmented_file), (graph_tmp, new.graph_file)):
                        fsync_file(tmp)
                        os.replace(tmp, self.path / final)
            except RuntimeError as e:  # FAISS reports write errors (disk full, permissions) as RuntimeError
                raise OSError(faiss_message(e)) from None
            fsync_file(vec_tmp)
            os.replace(vec_tmp, self.path / new.vectors_file)
            self.db.close()
            db_closed = True
            fsync_file(self.tmp_meta)
            shutil.copyfile(self.tmp_meta, self.path / new.metadata_file)
            fsync_file(self.path / new.metadata_file)
            fsync_dir(self.path)
            atomic_write_text(self.path / MANIFEST, new.to_json())  # the commit point
        except (OSError, sqlite3.Error) as e:
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            if published_generation(self.path) != new.generation:
                for f in written:
                    with contextlib.suppress(OSError):
                        f.unlink()
                raise SimsearchError(
                    f"could not save {self.path} ({reason}); "
                    f"the previous version of the index ({old.count} items) is intact"
                ) from None
            # the manifest was replaced, only syncing the folder failed: the new version is in place
            log.warning("saved %s but could not make sure it reached the disk (%s)", self.path, reason)
        finally:
            if db_closed:
                self.db = sqlite3.connect(self.tmp_meta, check_same_thread=False)
                self.meta = Metadata(self.db, new.roots, str(self.path))
        self.m = new
        self.dirty = False
        self.augmented = None
        self._write_skip_report()
        self._remove_old_generations(keep={old.generation, new.generation})
        return True

    def _write_skip_report(self) -> None:
        rows = self.db.execute("SELECT root, path, reason FROM skipped ORDER BY root, path").fetchall()
        lines = [("path", "reason")] + [(str(Path(self.m.roots[r]) / py_path(p)), reason) for r, p, reason in rows]
        buf = io.StringIO()
        csv.writer(buf).writerows(lines)
        with contextlib.suppress(OSError):  # names that are not UTF-8 are written as their original bytes
            atomic_write_text(self.path / "skipped.csv", buf.getvalue(), errors="surrogateescape")

    def _remove_stale_files(self) -> None:
        """Leftovers of writers that were killed (we hold the lock: no other writer is running)."""
        patterns = (".meta-next-*", ".vectors-*.tmp", ".augmented-*.tmp", ".graph-*.tmp", f".{MANIFEST}.tmp-*")
        for pattern in (*patterns, ".skipped.csv.tmp-*"):
            for f in self.path.glob(pattern):
                with contextlib.suppress(OSError):
                    f.unlink()
        # generations newer than the manifest's were never published; older ones are no longer needed
        self._remove_old_generations(keep={self.m.generation, self.m.generation - 1})

    def _remove_old_generations(self, keep: set[int]) -> None:
        for f in self.path.iterdir():
            name = f.name
            if name.startswith(("vectors-", "meta-", "augmented-", "graph-")) and name.endswith(
                (".faiss", ".sqlite", ".npz")
            ):
                try:
                    gen = int(name.split("-", 1)[1].split(".")[0])
                except ValueError:
                    continue
                if gen not in keep:
                    with contextlib.suppress(OSError):
                        f.unlink()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_meta.unlink()
        for pattern in (".vectors-*.tmp", ".augmented-*.tmp", ".graph-*.tmp"):
            for f in self.path.glob(pattern):
                with contextlib.suppress(OSError):
                    f.unlink()


def _ids(ids) -> str:
    return "[" + ",".join(str(int(i)) for i in ids) + "]"
