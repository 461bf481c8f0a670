"""A saved index: FAISS vectors + SQLite metadata + a JSON manifest, in one directory.

Layout of ``indexes/<name>/``::

    manifest.json          the commit point: names the current generation's files (replaced atomically)
    vectors-<gen>.faiss    FAISS index (IndexIDMap2 over the factory string; ids are item ids)
    meta-<gen>.sqlite      items(id, root, path, size, mtime_ns, label) and skipped(root, path, ..., reason)
    skipped.csv            human-readable report of files that could not be indexed
    .lock                  held by the one process allowed to write

A writer builds the next generation's files beside the current ones, fsyncs them, then replaces
``manifest.json``; readers always see one complete generation, old or new.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from .errors import IndexFormatError, IndexLockedError, SimsearchError
from .faissops import new_faiss_index
from .images import DEFAULT_MAX_PIXELS, ImageFileInfo, scan

log = logging.getLogger("simsearch")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_FACTORY = "IDMap2,Flat"
DEFAULT_INDEX_DIR = Path("indexes")
METRIC = "inner_product"  # on L2-normalised vectors: cosine similarity


@dataclass
class Manifest:
    """Everything needed to trust and reuse a saved index (written as ``manifest.json``)."""

    format_version: int
    backbone: str
    arch: str
    weights_sha256: str
    preprocessing: dict
    dim: int
    metric: str
    index_factory: str
    count: int
    roots: list[str]
    created: str
    updated: str
    simsearch_version: str
    generation: int = 0
    next_id: int = 0
    skipped: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def vectors_file(self) -> str:
        return f"vectors-{self.generation:06d}.faiss"

    @property
    def metadata_file(self) -> str:
        return f"meta-{self.generation:06d}.sqlite"

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> Manifest:
        if not isinstance(d, dict):
            raise IndexFormatError(f"{where}: not a JSON object")
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise IndexFormatError(
                f"{where}: format version {version!r} is not supported by simsearch {__version__} "
                f"(supports 1..{FORMAT_VERSION}); upgrade simsearch or rebuild the index"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise IndexFormatError(f"{where}: unknown fields {unknown}; was it written by a newer simsearch?")
        try:
            m = cls(**d)
        except TypeError as e:
            raise IndexFormatError(f"{where}: {e}") from None
        for name, typ in _MANIFEST_TYPES.items():  # a tampered manifest must not reach file names or paths
            v = getattr(m, name)
            if not isinstance(v, typ) or (typ is int and (isinstance(v, bool) or v < 0)):
                what = "a non-negative integer" if typ is int else f"a JSON {typ.__name__}"
                raise IndexFormatError(f"{where}: field {name!r} must be {what}, not {str(v)[:60]!r}")
        if not all(isinstance(r, str) and os.path.isabs(r) for r in m.roots):
            raise IndexFormatError(f"{where}: roots must be absolute folder paths")
        if (
            m.metric != METRIC
            or not isinstance(m.dim, int)
            or m.dim <= 0
            or not isinstance(m.count, int)
            or m.count < 0
        ):
            raise IndexFormatError(f"{where}: invalid metric, dim or count")
        return m

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


_MANIFEST_TYPES = {
    "format_version": int,
    "backbone": str,
    "arch": str,
    "weights_sha256": str,
    "preprocessing": dict,
    "dim": int,
    "metric": str,
    "index_factory": str,
    "count": int,
    "roots": list,
    "created": str,
    "updated": str,
    "simsearch_version": str,
    "generation": int,
    "next_id": int,
    "skipped": int,
    "extra": dict,
}


@dataclass(frozen=True)
class Item:
    """One indexed image."""

    id: int
    path: str  # relative to its root
    root: str
    size: int
    mtime_ns: int
    label: str | None

    @property
    def abspath(self) -> Path:
        return Path(self.root) / self.path


@dataclass
class UpdateReport:
    """What an ``index`` run did."""

    path: str
    scanned: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: int = 0
    count: int = 0
    seconds: float = 0.0

    @property
    def embedded(self) -> int:
        return self.added + self.updated

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        d["embedded"] = self.embedded
        return d


def default_index_path(roots: Sequence[str | Path]) -> Path:
    """``indexes/<name of the first folder>``."""
    first = Path(roots[0]).expanduser().resolve()
    return DEFAULT_INDEX_DIR / (first.name or "index")


def label_from_path(relpath: str) -> str | None:
    """Default label: the name of the image's parent folder (None for files at the root).

    A folder name that is not valid UTF-8 is shown with backslash escapes (labels are text for display).
    """
    parts = relpath.split("/")
    if len(parts) < 2:
        return None
    return parts[-2].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _db_path(relpath: str) -> str | bytes:
    """A relative path as stored in SQLite: text, or the raw bytes of a name that is not valid UTF-8.

    Paths from the file system may hold lone surrogates (undecodable bytes, PEP 383) that SQLite cannot
    store as text; the bytes round-trip exactly through :func:`_py_path`.
    """
    try:
        relpath.encode("utf-8")
        return relpath
    except UnicodeEncodeError:
        return os.fsencode(relpath)


def _py_path(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _safe_relpath(relpath: str, where: str) -> str:
    """Refuse metadata paths that would lead out of their root (absolute, or with '..')."""
    if not isinstance(relpath, str) or not relpath or relpath.startswith("/") or ".." in relpath.split("/"):
        raise IndexFormatError(f"{where}: invalid item path {relpath!r} in the metadata (tampered?)")
    return relpath


# ------------------------------------------------------------------------------ FAISS


def _faiss_message(e: Exception) -> str:
    """The useful last line of a FAISS C++ exception."""
    lines = str(e).strip().splitlines()
    return lines[-1][:200] if lines else type(e).__name__


def _published_generation(path: Path) -> int | None:
    """Generation named by the manifest on disk now (None if unreadable)."""
    try:
        return int(json.loads((path / MANIFEST).read_text(encoding="utf-8"))["generation"])
    except Exception:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str, errors: str = "strict") -> None:
    """Write via a temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", errors=errors) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY, root INTEGER NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, label TEXT, UNIQUE(root, path));
CREATE INDEX IF NOT EXISTS items_label ON items(label);
CREATE TABLE IF NOT EXISTS skipped(
    root INTEGER NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL, PRIMARY KEY(root, path));
"""


# ------------------------------------------------------------------------------ reading


class Index:
    """An opened index. Search methods live in :mod:`simsearch.search`; this class owns the storage.

    The backbone (needed only to embed new images) is created on first use and checked against the manifest.
    """

    def __init__(self, path: Path, manifest: Manifest, faiss_index, db: sqlite3.Connection, backbone: Backbone | None):
        self.path = path
        self.manifest = manifest
        self.faiss = faiss_index
        self._db = db
        self._backbone = backbone
        self._embedder = None
        self.embedder_options: dict = {}

    # -- opening
    @classmethod
    def open(cls, path: str | Path, *, backbone: Backbone | str | None = None, mmap: bool = False) -> Index:
        path = Path(path).expanduser()
        if not (path / MANIFEST).exists():
            if not path.exists():
                raise IndexFormatError(f"no index at {path}: create one with `simsearch index FOLDER --out {path}`")
            raise IndexFormatError(f"{path} is not a simsearch index (no {MANIFEST})")
        for attempt in range(5):  # a writer may replace the generation between reading the manifest and its files
            manifest = read_manifest(path)
            try:
                faiss_index, db = _load_generation(path, manifest, mmap=mmap)
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise IndexFormatError(f"{path}: files of generation {manifest.generation} are missing") from None
                time.sleep(0.05)
        idx = cls(path, manifest, faiss_index, db, None)
        if backbone is not None:
            idx.set_backbone(backbone)
        return idx

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.faiss.ntotal)

    def __repr__(self) -> str:
        m = self.manifest
        return f"<simsearch.Index {self.path} count={m.count} backbone={m.backbone} dim={m.dim}>"

    # -- backbone and embedding
    def set_backbone(self, backbone: Backbone | str) -> None:
        bb = create_backbone(backbone) if isinstance(backbone, str) else backbone
        check_backbone(self.manifest, bb, where=str(self.path))
        self._backbone, self._embedder = bb, None

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self.set_backbone(self.manifest.backbone)
        return self._backbone

    @property
    def embedder(self):
        if self._embedder is None:
            from .embed import cached_embedder_for_index, embedder_for_index

            # the engine, precision and decoding recorded at index time (see simsearch.engines); without loading
            # torch when the OpenVINO model converted from the index's weights is cached
            if self._backbone is None:
                self._embedder = cached_embedder_for_index(self.manifest, **self.embedder_options)
            if self._embedder is None:
                self._embedder, _ = embedder_for_index(
                    self.backbone, self.manifest.extra, self.manifest.count, where=str(self.path),
                    **self.embedder_options,
                )  # fmt: skip
        return self._embedder

    def embed(self, images: Sequence) -> np.ndarray:
        """Embed images (paths, bytes or PIL images) exactly as the index's items were embedded."""
        return self.embedder.embed(images)

    # -- metadata
    def _row_to_item(self, row) -> Item:
        if not 0 <= row[1] < len(self.manifest.roots):
            raise IndexFormatError(f"{self.path}: item {row[0]} has no root (tampered metadata?)")
        path = _safe_relpath(_py_path(row[2]), str(self.path))
        return Item(row[0], path, self.manifest.roots[row[1]], row[3], row[4], _py_path(row[5]))

    def item_file(self, item_id: int) -> Path:
        """The file of an indexed item, for serving it: refused when it now leads outside its indexed root.

        Symlinks are resolved, so a file replaced by a link to elsewhere since indexing is not served.
        """
        it = self.item(item_id)
        root = Path(it.root).resolve()
        try:
            real = it.abspath.resolve(strict=True)
        except (OSError, RuntimeError):
            raise SimsearchError(f"file of item {item_id} is missing: {it.abspath}") from None
        if not real.is_relative_to(root) or not real.is_file():
            raise SimsearchError(f"file of item {item_id} is outside the indexed folder {root}; not served")
        return real

    def item(self, item_id: int) -> Item:
        row = self._db.execute(
            "SELECT id, root, path, size, mtime_ns, label FROM items WHERE id=?", (int(item_id),)
        ).fetchone()
        if row is None:
            raise KeyError(item_id)
        return self._row_to_item(row)

    def items(self, ids: Iterable[int] | None = None) -> list[Item]:
        if ids is None:
            rows = self._db.execute("SELECT id, root, path, size, mtime_ns, label FROM items ORDER BY id")
            return [self._row_to_item(r) for r in rows]
        out = []
        for i in ids:
            try:
                out.append(self.item(i))
            except KeyError:
                continue
        return out

    def has_id(self, item_id: int) -> bool:
        return self._db.execute("SELECT 1 FROM items WHERE id=?", (int(item_id),)).fetchone() is not None

    def id_for_path(self, path: str | Path) -> int | None:
        """Id of an indexed file given its absolute path or its path relative to a root."""
        p = Path(path).expanduser()
        candidates = []
        if p.is_absolute() or p.exists():  # a file on disk: only the indexed file at that very place
            ap = p.resolve() if p.exists() else p
            for i, root in enumerate(self.manifest.roots):
                with contextlib.suppress(ValueError):
                    candidates.append((i, ap.relative_to(root).as_posix()))
        else:  # a path relative to one of the roots, as shown in results
            candidates = [(i, p.as_posix()) for i in range(len(self.manifest.roots))]
        for root_idx, rel in candidates:
            row = self._db.execute("SELECT id FROM items WHERE root=? AND path=?", (root_idx, _db_path(rel))).fetchone()
            if row:
                return int(row[0])
        return None

    def ids(self) -> np.ndarray:
        return np.array([r[0] for r in self._db.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)

    def ids_matching(self, *, label=None, path_prefix: str | None = None) -> np.ndarray:
        """Ids of items with one of the given labels and/or whose relative path starts with ``path_prefix``."""
        clauses, args = [], []
        if label is not None:
            labels = [str(x) for x in (label if isinstance(label, (list, tuple)) else [label])]
            clauses.append(f"label IN ({','.join('?' * len(labels))})")
            args += labels
        if path_prefix:
            clauses.append("substr(path, 1, ?) = ?")
            args += [len(path_prefix), str(path_prefix)]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(f"SELECT id FROM items {where} ORDER BY id", args)
        return np.array([r[0] for r in rows], dtype=np.int64)

    def labels(self) -> dict[int, str | None]:
        return dict(self._db.execute("SELECT id, label FROM items"))

    def skipped(self) -> list[tuple[str, str]]:
        rows = self._db.execute("SELECT root, path, reason FROM skipped ORDER BY root, path")
        return [(str(Path(self.manifest.roots[r]) / _py_path(p)), reason) for r, p, reason in rows]

    def vector(self, item_id: int) -> np.ndarray:
        if not self.has_id(item_id):
            raise KeyError(item_id)
        return self.faiss.reconstruct(int(item_id)).astype(np.float32)

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) for the given ids (default: all, sorted by id)."""
        ids = self.ids() if ids is None else np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return ids, np.zeros((0, self.manifest.dim), np.float32)
        return ids, np.asarray(self.faiss.reconstruct_batch(ids), dtype=np.float32)

    # -- searching (see simsearch.search)
    def search(self, query, k: int = 10, **kwargs):
        from .search import search

        return search(self, query, k=k, **kwargs)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, **kwargs):
        from .search import search_vectors

        return search_vectors(self, vectors, k=k, **kwargs)

    def recommend(self, positive=(), negative=(), exclude=(), k: int = 20, **kwargs):
        from .search import recommend

        return recommend(self, positive=positive, negative=negative, exclude=exclude, k=k, **kwargs)

    # -- writing
    def update(self, roots: Sequence[str | Path] | None = None, **kwargs) -> UpdateReport:
        """Add new or changed files under ``roots`` (default: the index's roots); see :func:`build_index`."""
        return build_index(roots or self.manifest.roots, self.path, backbone=self._backbone, **kwargs)

    def info(self) -> dict:
        d = asdict(self.manifest)
        d["path"] = str(self.path)
        d["labels"] = self._db.execute("SELECT COUNT(DISTINCT label) FROM items").fetchone()[0]
        d["faiss_ntotal"] = int(self.faiss.ntotal)
        d["size_bytes"] = sum(
            (self.path / f).stat().st_size for f in (self.manifest.vectors_file, self.manifest.metadata_file, MANIFEST)
        )
        return d


def read_manifest(path: Path) -> Manifest:
    where = str(path / MANIFEST)
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{where}: cannot read ({e})") from None
    return Manifest.from_dict(data, where)


def _ro_uri(path: Path) -> str:
    """SQLite URI opening ``path`` read-only, whatever characters its name holds."""
    return f"file:{urllib.parse.quote(os.fsencode(path.absolute()))}?mode=ro"


def _load_generation(path: Path, m: Manifest, *, mmap: bool = False):
    import faiss

    vec_path, meta_path = path / m.vectors_file, path / m.metadata_file
    for p in (vec_path, meta_path):
        if not p.exists():
            raise FileNotFoundError(p)
    # A read-only SQLite connection, opened first: on Linux an open file survives a writer deleting it.
    # A file that vanishes meanwhile (a writer removing an old generation) raises FileNotFoundError: retried.
    try:
        db = sqlite3.connect(_ro_uri(meta_path), uri=True, check_same_thread=False)
    except sqlite3.Error as e:
        if not meta_path.exists():
            raise FileNotFoundError(meta_path) from None
        raise IndexFormatError(f"{meta_path}: cannot open metadata ({e})") from None
    try:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(vec_path), flags)
    except RuntimeError as e:
        db.close()
        if not vec_path.exists():
            raise FileNotFoundError(vec_path) from None
        raise IndexFormatError(
            f"{vec_path}: cannot read FAISS index ({str(e).strip().splitlines()[-1][:200]})"
        ) from None
    try:
        (count,) = db.execute("SELECT COUNT(*) FROM items").fetchone()
    except sqlite3.DatabaseError as e:
        db.close()
        raise IndexFormatError(f"{meta_path}: cannot read metadata ({e})") from None
    if index.d != m.dim:
        db.close()
        raise IndexFormatError(f"{path}: FAISS index has dim {index.d}, manifest says {m.dim}")
    if not (index.ntotal == count == m.count):
        db.close()
        raise IndexFormatError(
            f"{path}: inconsistent index: {index.ntotal} vectors, {count} metadata rows, manifest count {m.count}"
        )
    return index, db


def check_backbone(m: Manifest, bb: Backbone, where: str = "index") -> None:
    """Refuse a backbone that would embed differently from the one the index was built with."""
    if bb.weights_sha256 != m.weights_sha256 or bb.dim != m.dim:
        raise IndexFormatError(
            f"{where} was built with backbone '{m.backbone}' (weights {m.weights_sha256[:12]}, dim {m.dim}), "
            f"not '{bb.name}' (weights {bb.weights_sha256[:12]}, dim {bb.dim}); "
            "query it with the same backbone or build a new index"
        )
    if bb.preprocessing() != m.preprocessing:
        raise IndexFormatError(f"{where}: preprocessing of backbone '{bb.name}' differs from the index's")


def open_index(path: str | Path, *, backbone: Backbone | str | None = None, mmap: bool = False) -> Index:
    """Open a saved index for searching. The backbone is loaded lazily (only to embed new images)."""
    return Index.open(path, backbone=backbone, mmap=mmap)


# ------------------------------------------------------------------------------ writing


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


class _Writer:
    """Holds the next generation in memory (FAISS) and in a temp SQLite copy; ``commit`` publishes it."""

    def __init__(self, path: Path, manifest: Manifest, faiss_index, base_meta: Path | None):
        self.path, self.m, self.faiss = path, manifest, faiss_index
        self.tmp_meta = path / f".meta-next-{os.getpid()}.sqlite"
        self._remove_stale_files()
        if base_meta is not None:
            shutil.copyfile(base_meta, self.tmp_meta)
        self.db = sqlite3.connect(self.tmp_meta)
        self.db.executescript(_SCHEMA)
        self.pending_train: list[tuple[np.ndarray, np.ndarray]] = []
        self.dirty = base_meta is None  # a new index is written even when empty

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: list[tuple]) -> None:
        if len(ids) == 0:
            return
        self.dirty = True
        if not self.faiss.is_trained:
            self.pending_train.append((ids, vectors))
        else:
            self.faiss.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
        self.db.executemany("INSERT INTO items(id, root, path, size, mtime_ns, label) VALUES (?,?,?,?,?,?)", rows)

    def remove(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        self.dirty = True
        import faiss

        arr = np.asarray(sorted(ids), dtype=np.int64)
        from .autoindex import remove_ids as _remove_ivf_ids

        try:
            # FAISS's own IDMap2.remove_ids breaks the id mapping of IVF indexes: those are handled in autoindex
            if not _remove_ivf_ids(self.faiss, arr):
                self.faiss.remove_ids(faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr)))
        except RuntimeError:
            self._rebuild_without(set(int(i) for i in arr))
        self.db.executemany("DELETE FROM items WHERE id=?", [(int(i),) for i in arr])

    def _rebuild_without(self, drop: set[int]) -> None:
        """For index types that cannot remove: re-create and re-add the remaining vectors."""
        import faiss

        ids = faiss.vector_to_array(self.faiss.id_map)
        keep = np.array([i for i in ids if int(i) not in drop], dtype=np.int64)
        vecs = np.vstack([self.faiss.reconstruct(int(i)) for i in keep]) if len(keep) else None
        self.faiss, _ = new_faiss_index(self.m.dim, self.m.index_factory)
        if vecs is not None:
            self._train(vecs)
            self.faiss.add_with_ids(vecs, keep)

    def _train(self, vectors: np.ndarray) -> None:
        if not self.faiss.is_trained:
            self.faiss.train(np.ascontiguousarray(vectors, np.float32))

    def skip(self, rows: list[tuple]) -> None:
        self.dirty = self.dirty or bool(rows)
        self.db.executemany(
            "INSERT OR REPLACE INTO skipped(root, path, size, mtime_ns, reason) VALUES (?,?,?,?,?)", rows
        )

    def unskip(self, keys: list[tuple[int, str]]) -> None:
        self.dirty = self.dirty or bool(keys)
        self.db.executemany("DELETE FROM skipped WHERE root=? AND path=?", keys)

    def flush_training(self, final: bool) -> None:
        if not self.pending_train or (not final and sum(len(i) for i, _ in self.pending_train) < 10_000):
            return
        ids = np.concatenate([i for i, _ in self.pending_train])
        vecs = np.vstack([v for _, v in self.pending_train])
        try:
            self._train(vecs)
        except RuntimeError as e:
            raise SimsearchError(
                f"cannot train FAISS index {self.m.index_factory!r} on {len(vecs)} vectors: "
                f"{str(e).strip().splitlines()[-1][:160]}; use more images or a simpler --index"
            ) from None
        self.faiss.add_with_ids(vecs, ids)
        self.pending_train = []

    def commit(self, final: bool = False) -> None:
        """Publish everything added so far as a new generation (atomic: manifest replaced last)."""
        import faiss

        self.flush_training(final)
        if final and self.dirty and not self.pending_train:
            from .autoindex import finalize as _finalize_auto
            from .config.autoindex import INDEX_AUTO_KEY, AutoIndexRecord

            # `--index auto`: choose (again) for the final number of vectors
            done = _finalize_auto(self.faiss, AutoIndexRecord.from_extra(self.m.extra, str(self.path / MANIFEST)))
            if done is not None:
                new_index, record = done
                if new_index is not None:
                    self.faiss, self.m.index_factory = new_index, str(record.choice)
                self.m.extra[INDEX_AUTO_KEY] = record.to_dict()
        if self.pending_train or not self.dirty:
            return  # nothing new, or an untrained index that cannot be saved yet (committed once trained)
        try:
            self.db.commit()
        except sqlite3.Error as e:
            raise SimsearchError(
                f"could not save {self.path} ({e}); the previous version of the index ({self.m.count} items) is intact"
            ) from None
        (count,) = self.db.execute("SELECT COUNT(*) FROM items").fetchone()
        (skipped,) = self.db.execute("SELECT COUNT(*) FROM skipped").fetchone()
        if count != self.faiss.ntotal:
            raise SimsearchError(
                f"internal error: {self.faiss.ntotal} vectors but {count} metadata rows; nothing saved"
            )
        old = dataclasses.replace(self.m)
        new = dataclasses.replace(
            self.m,
            generation=self.m.generation + 1,
            count=int(count),
            skipped=int(skipped),
            updated=_now(),
        )
        vec_tmp = self.path / f".{new.vectors_file}.tmp"
        db_closed = False
        try:
            try:
                faiss.write_index(self.faiss, str(vec_tmp))
            except RuntimeError as e:  # FAISS reports write errors (disk full, permissions) as RuntimeError
                raise OSError(_faiss_message(e)) from None
            _fsync_file(vec_tmp)
            os.replace(vec_tmp, self.path / new.vectors_file)
            self.db.close()
            db_closed = True
            _fsync_file(self.tmp_meta)
            shutil.copyfile(self.tmp_meta, self.path / new.metadata_file)
            _fsync_file(self.path / new.metadata_file)
            _fsync_dir(self.path)
            atomic_write_text(self.path / MANIFEST, new.to_json())  # the commit point
        except (OSError, sqlite3.Error) as e:
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            if _published_generation(self.path) != new.generation:
                for f in (vec_tmp, self.path / new.vectors_file, self.path / new.metadata_file):
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
                self.db = sqlite3.connect(self.tmp_meta)
        self.m = new
        self.dirty = False
        self._write_skip_report()
        self._remove_old_generations(keep={old.generation, new.generation})

    def _write_skip_report(self) -> None:
        rows = self.db.execute("SELECT root, path, reason FROM skipped ORDER BY root, path").fetchall()
        lines = [("path", "reason")] + [(str(Path(self.m.roots[r]) / _py_path(p)), reason) for r, p, reason in rows]
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows(lines)
        with contextlib.suppress(OSError):  # names that are not UTF-8 are written as their original bytes
            atomic_write_text(self.path / "skipped.csv", buf.getvalue(), errors="surrogateescape")

    def _remove_stale_files(self) -> None:
        """Leftovers of writers that were killed (we hold the lock: no other writer is running)."""
        for pattern in (".meta-next-*", ".vectors-*.tmp", f".{MANIFEST}.tmp-*", ".skipped.csv.tmp-*"):
            for f in self.path.glob(pattern):
                with contextlib.suppress(OSError):
                    f.unlink()
        # generations newer than the manifest's were never published; older ones are no longer needed
        self._remove_old_generations(keep={self.m.generation, self.m.generation - 1})

    def _remove_old_generations(self, keep: set[int]) -> None:
        for f in self.path.iterdir():
            name = f.name
            if name.startswith(("vectors-", "meta-")) and name.endswith((".faiss", ".sqlite")):
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
        for f in self.path.glob(".vectors-*.tmp"):
            with contextlib.suppress(OSError):
                f.unlink()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def build_index(
    roots: Sequence[str | Path] | str | Path,
    out: str | Path | None = None,
    *,
    backbone: Backbone | str | None = None,
    index_factory: str | None = None,
    prune: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    engine=None,
    precision: str | None = None,
    draft: bool | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    follow_symlinks: bool = False,
    commit_every: int = 2048,
    progress: bool = False,
    embedder=None,
    strict: bool = False,
    memory_budget: int | str | None = None,
    target_recall: float | None = None,
    engine_options: dict | None = None,
) -> UpdateReport:
    """Index every image under ``roots`` into ``out`` (default ``indexes/<folder name>``), incrementally.

    On an existing index only new or changed files (path, size, mtime) are embedded; with ``prune`` the
    entries of files that disappeared from the scanned roots are removed. Progress is committed every
    ``commit_every`` images, so an interrupted run (even by ``kill -9``) resumes where it stopped, re-embedding
    at most the last uncommitted chunk. Files that cannot be used are skipped with a reason (logged, in the
    report and in ``skipped.csv``); with ``strict`` any skipped file makes the run fail once the rest is saved.
    Raises :class:`IndexLockedError` when another process is writing the index. Returns an :class:`UpdateReport`.

    ``engine`` (auto|openvino|torch, or a callable), ``precision`` (auto|fp32|bf16), ``draft`` (reduced-size JPEG
    decoding, default on) and ``batch_size`` (default: the engine's) choose how a new index is embedded; they are
    recorded in the manifest (``extra["embedding"]``) and an existing index keeps its own (see
    :func:`simsearch.embed.embedder_for_index`). ``engine_options`` go to the engine's factory (e.g.
    ``{"address": "auto"}`` for ``engine="ray"``).
    """
    if commit_every < 1:
        raise SimsearchError(f"commit_every must be at least 1, not {commit_every}")
    t0 = time.perf_counter()
    if isinstance(roots, (str, Path)):
        roots = [roots]
    roots = [Path(r).expanduser().resolve() for r in roots]
    if not roots:
        raise SimsearchError("give at least one folder to index")
    for r in roots:
        if not r.exists():
            raise SimsearchError(f"folder not found: {r}")
    path = Path(out).expanduser() if out is not None else default_index_path(roots)
    report = UpdateReport(path=str(path))
    with writer_lock(path):
        existing = read_manifest(path) if (path / MANIFEST).exists() else None
        if embedder is not None:
            backbone = embedder.backbone
        if existing is None or backbone is not None:
            bb = backbone if isinstance(backbone, Backbone) else create_backbone(backbone or DEFAULT_BACKBONE)
        else:
            bb = None  # reuse the index's backbone, loaded only if something needs embedding
        if existing is not None:
            if bb is not None:
                check_backbone(existing, bb, where=str(path))
            if "index_auto" in existing.extra and (memory_budget is not None or target_recall is not None):
                from .config.autoindex import AutoIndexRecord

                record = AutoIndexRecord.from_extra(existing.extra, str(path / MANIFEST))
                existing.extra["index_auto"] = record.with_settings(memory_budget, target_recall).to_dict()
            if index_factory == "auto" and "index_auto" in existing.extra:
                index_factory = None  # the index is already automatic
            if index_factory and new_faiss_index(existing.dim, index_factory)[1] != existing.index_factory:
                raise SimsearchError(
                    f"{path} uses FAISS index {existing.index_factory!r}, not {index_factory!r}; "
                    "write to a new --out to change it"
                )
            manifest = dataclasses.replace(existing)
            faiss_index, db = _load_generation(path, existing)
            db.close()
            base_meta = path / existing.metadata_file
        else:
            auto = (index_factory or "auto").strip().lower() == "auto"  # decided at the final commit: autoindex.py
            faiss_index, factory = new_faiss_index(bb.dim, DEFAULT_FACTORY if auto else index_factory)
            now = _now()
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                backbone=bb.name,
                arch=bb.arch,
                weights_sha256=bb.weights_sha256,
                preprocessing=bb.preprocessing(),
                dim=bb.dim,
                metric=METRIC,
                index_factory=factory,
                count=0,
                roots=[],
                created=now,
                updated=now,
                simsearch_version=__version__,
                extra=dict(bb.extra),
            )
            if auto:
                from .config.autoindex import AutoIndexRecord, AutoIndexSpec

                spec = AutoIndexSpec.from_options(memory_budget, target_recall)
                manifest.extra["index_auto"] = AutoIndexRecord.new(spec).to_dict()
            base_meta = None
        for r in roots:
            if str(r) not in manifest.roots:
                manifest.roots.append(str(r))
        root_idx = {r: manifest.roots.index(str(r)) for r in roots}

        def get_embedder():
            nonlocal bb, embedder
            if embedder is None:
                if bb is None:
                    bb = create_backbone(manifest.backbone)
                    check_backbone(manifest, bb, where=str(path))
                from .embed import embedder_for_index

                embedder, settings = embedder_for_index(
                    bb, manifest.extra, manifest.count, engine=engine, precision=precision, draft=draft,
                    where=str(path), batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                    engine_options=engine_options,
                )  # fmt: skip
            else:
                from .embed import recorded_settings

                settings = recorded_settings(manifest.extra, manifest.count) or embedder.settings()
            writer.m.extra["embedding"] = settings.to_dict()  # query time embeds the same way (Index.embedder)
            report.embedding = settings.to_dict()
            return embedder

        writer = None
        try:
            writer = _Writer(path, manifest, faiss_index, base_meta)
            _update(
                writer,
                roots,
                root_idx,
                report,
                prune,
                follow_symlinks,
                commit_every,
                progress,
                get_embedder,
                max_pixels,
            )
            writer.commit(final=True)
        except (OSError, sqlite3.Error) as e:  # e.g. disk full while writing the next version's temp files
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            saved = writer.m.count if writer is not None else manifest.count
            raise SimsearchError(
                f"indexing stopped: {reason}{f' ({e.filename})' if getattr(e, 'filename', None) else ''}; "
                f"{path} is intact at its last saved version ({saved} items)"
            ) from None
        except KeyboardInterrupt:
            if writer is not None:  # save what is done, so the next run goes on from here
                with contextlib.suppress(Exception):
                    writer.commit()
            raise
        finally:
            if writer is not None:
                writer.close()
        report.count = writer.m.count
    report.backbone = bb  # not a field: lets callers reuse the loaded model (None if none was loaded)
    report.seconds = round(time.perf_counter() - t0, 3)
    if strict and report.skipped:
        first_path, first_reason = report.skipped[0]
        raise SimsearchError(
            f"{len(report.skipped)} file(s) could not be indexed (--strict), e.g. {first_path}: {first_reason}; "
            f"all are listed in {path / 'skipped.csv'} (the other images were saved)"
        )
    return report


def _update(
    writer: _Writer,
    roots,
    root_idx,
    report: UpdateReport,
    prune,
    follow,
    commit_every,
    progress,
    get_embedder,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
):
    db = writer.db
    found: list[tuple[int, ImageFileInfo]] = []
    scan_skips: list[tuple[int, ImageFileInfo, str]] = []
    for r in roots:
        found += [
            (root_idx[r], f)
            for f in scan(
                [r], follow_symlinks=follow, on_skip=lambda f, why, i=root_idx[r]: scan_skips.append((i, f, why))
            )
        ]
    report.scanned = len(found)
    scanned_roots = set(root_idx.values())
    known = {
        (r, _py_path(p)): (i, s, t) for i, r, p, s, t in db.execute("SELECT id, root, path, size, mtime_ns FROM items")
    }
    known_skips = {
        (r, _py_path(p)): (s, t, why)
        for r, p, s, t, why in db.execute("SELECT root, path, size, mtime_ns, reason FROM skipped")
    }
    seen, skip_seen = set(), set()
    to_embed: list[tuple[int, ImageFileInfo, int | None]] = []
    for r, f, why in scan_skips:  # broken symlinks, loops, links leading outside the root...
        skip_seen.add((r, f.relpath))
        report.skipped.append((str(f.path), why))
        if known_skips.get((r, f.relpath)) != (f.size, f.mtime_ns, why):
            log.warning("skipped %s: %s", f.path, why)
            writer.skip([(r, _db_path(f.relpath), f.size, f.mtime_ns, why)])
        else:
            log.info("skipped %s: %s (unchanged since the last run)", f.path, why)
    for r, f in found:
        key = (r, f.relpath)
        seen.add(key)
        old = known.get(key)
        prev_skip = known_skips.get(key) if old is None else None
        if old is not None and old[1] == f.size and old[2] == f.mtime_ns:
            report.unchanged += 1
        elif prev_skip is not None and prev_skip[:2] == (f.size, f.mtime_ns) and _still_unreadable(f, max_pixels):
            log.info("skipped %s: %s (unchanged since the last run)", f.path, prev_skip[2])
            report.skipped.append((str(f.path), f"{prev_skip[2]} (unchanged since it was skipped)"))
        else:
            to_embed.append((r, f, old[0] if old else None))
    gone = [key for key in known if key[0] in scanned_roots and key not in seen]
    report.missing = len(gone)
    if prune:
        writer.remove([known[k][0] for k in gone])
        present = seen | skip_seen
        writer.unskip([(r, _db_path(p)) for r, p in known_skips if r in scanned_roots and (r, p) not in present])
        report.removed = len(gone)
    elif gone:
        log.warning("%d indexed files no longer exist; run with --prune to remove them", len(gone))

    if not to_embed:
        return
    pending = 0
    for batch in get_embedder().embed_files(to_embed, path_of=lambda t: t[1].path, progress=progress):
        replaced = [old_id for _, _, old_id in batch.items if old_id is not None]
        replaced += [old_id for (_, _, old_id), _ in batch.skipped if old_id is not None]
        writer.remove(replaced)
        ids = np.arange(writer.m.next_id, writer.m.next_id + len(batch.items), dtype=np.int64)
        writer.m.next_id += len(batch.items)
        rows = [
            (int(i), r, _db_path(f.relpath), f.size, f.mtime_ns, label_from_path(f.relpath))
            for i, (r, f, _) in zip(ids, batch.items, strict=True)
        ]
        writer.add(ids, batch.vectors, rows)
        writer.unskip([(r, _db_path(f.relpath)) for r, f, _ in batch.items])
        writer.skip([(r, _db_path(f.relpath), f.size, f.mtime_ns, reason) for (r, f, _), reason in batch.skipped])
        report.skipped += [(str(f.path), reason) for (_, f, _), reason in batch.skipped]
        report.added += sum(1 for *_, old in batch.items if old is None)
        report.updated += sum(1 for *_, old in batch.items if old is not None)
        report.removed += len(replaced) - sum(1 for *_, old in batch.items if old is not None)
        pending += len(batch.items) + len(batch.skipped)
        if pending >= commit_every:
            writer.commit()
            pending = 0


def rebuild_index(
    path,
    index_factory: str = "auto",
    *,
    memory_budget=None,
    target_recall: float | None = None,
    progress: bool = False,
) -> dict:
    """Retrain the FAISS index of the saved index at ``path`` on all its vectors, re-tune it and save a new
    generation (metadata unchanged). ``index_factory`` is ``"auto"`` or any factory string."""
    from .autoindex import rebuild
    from .config.autoindex import AutoIndexRecord

    t0 = time.perf_counter()
    path = Path(path).expanduser()
    if not (path / MANIFEST).exists():
        raise IndexFormatError(f"no index at {path}")
    with writer_lock(path):
        m = read_manifest(path)
        index, db = _load_generation(path, m)
        db.close()
        previous = AutoIndexRecord.from_extra(m.extra, str(path / MANIFEST))
        new_index, record = rebuild(
            index, index_factory, previous, memory_budget=memory_budget, target_recall=target_recall,
            progress=progress,
        )  # fmt: skip
        del index
        new_m = dataclasses.replace(
            m, index_factory=str(record.choice), extra={**m.extra, "index_auto": record.to_dict()}
        )
        writer = _Writer(path, new_m, new_index, path / m.metadata_file)
        try:
            writer.dirty = True
            writer.commit()
        finally:
            writer.close()
    return {
        "path": str(path),
        "count": int(new_index.ntotal),
        "index_factory": record.choice,
        "record": record.to_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _still_unreadable(f: ImageFileInfo, max_pixels: int | None) -> bool:
    """Whether a file skipped by an earlier run still fails to decode (it may have become readable, or
    --max-pixels may have been raised). Decoding is tried without loading the model."""
    from .images import load_image

    try:
        load_image(f.path, max_pixels=max_pixels).close()
    except SimsearchError:
        return True
    return False


def verify_index(path: str | Path) -> tuple[list[str], dict]:
    """Check an index's internal consistency; returns (problems, stats). An empty problem list means ok."""
    import faiss

    path = Path(path)
    problems: list[str] = []
    try:
        m = read_manifest(path)
    except IndexFormatError as e:
        return [str(e)], {}
    stats = {"generation": m.generation, "count": m.count}
    vec_path, meta_path = path / m.vectors_file, path / m.metadata_file
    for p in (vec_path, meta_path):
        if not p.exists():
            problems.append(f"missing {p.name}")
    if problems:
        return problems, stats
    try:
        index = faiss.read_index(str(vec_path))
    except RuntimeError as e:
        return [f"{vec_path.name}: unreadable ({str(e).strip().splitlines()[-1][:160]})"], stats
    try:
        db = sqlite3.connect(_ro_uri(meta_path), uri=True)
    except sqlite3.Error as e:
        return [f"{meta_path.name}: cannot open ({e})"], stats
    try:
        (check,) = db.execute("PRAGMA integrity_check").fetchone()
        if check != "ok":
            problems.append(f"{meta_path.name}: {check}")
        db_ids = np.array([r[0] for r in db.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)
        (dups,) = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM items GROUP BY root, path HAVING COUNT(*) > 1)"
        ).fetchone()
        if dups:
            problems.append(f"{dups} paths appear more than once in the metadata")
        (rootless,) = db.execute("SELECT COUNT(*) FROM items WHERE root < 0 OR root >= ?", (len(m.roots),)).fetchone()
        if rootless:
            problems.append(f"{rootless} items refer to no root of the manifest")
        unsafe = 0
        for (p,) in db.execute("SELECT path FROM items"):
            try:
                _safe_relpath(_py_path(p), "")
            except IndexFormatError:
                unsafe += 1
        if unsafe:
            problems.append(f"{unsafe} item paths are absolute or lead out of their root")
        (n_skipped,) = db.execute("SELECT COUNT(*) FROM skipped").fetchone()
        if n_skipped != m.skipped:
            problems.append(f"skipped files: {n_skipped} in the metadata, manifest {m.skipped}")
        stats["skipped"] = int(n_skipped)
    except sqlite3.DatabaseError as e:
        return [*problems, f"{meta_path.name}: {e}"], stats
    finally:
        db.close()
    if index.d != m.dim:
        problems.append(f"FAISS dim {index.d} != manifest dim {m.dim}")
    if not (index.ntotal == len(db_ids) == m.count):
        problems.append(f"counts differ: {index.ntotal} vectors, {len(db_ids)} metadata rows, manifest {m.count}")
    try:
        faiss_ids = faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)
    except AttributeError:
        problems.append("FAISS index is not an IndexIDMap2")
        return problems, stats
    if len(np.unique(faiss_ids)) != len(faiss_ids):
        problems.append(f"{len(faiss_ids) - len(np.unique(faiss_ids))} duplicate ids in the FAISS index")
    if not np.array_equal(np.sort(faiss_ids), db_ids):
        problems.append("ids in the FAISS index and in the metadata differ")
    if len(db_ids) and db_ids.max() >= m.next_id:
        problems.append(f"id {db_ids.max()} >= next_id {m.next_id}")
    if index.ntotal:
        sample = faiss_ids[:: max(1, len(faiss_ids) // 1000)]
        vecs = np.asarray(index.reconstruct_batch(sample))
        norms = np.linalg.norm(vecs, axis=1)
        if not np.isfinite(vecs).all():
            problems.append("non-finite vectors")
        elif "Flat" in m.index_factory and np.abs(norms - 1).max() > 1e-3:
            problems.append(f"vectors are not unit length (norms {norms.min():.4f}..{norms.max():.4f})")
    stats["vectors"] = int(index.ntotal)
    return problems, stats
