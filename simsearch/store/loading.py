"""Loading a generation: its FAISS index (read or memory-mapped) and metadata, checked against each other and the
manifest, and its augmented index; the file layout is described in :mod:`simsearch.store.generation`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from ..config.autoindex import INDEX_AUTO_KEY
from ..errors import IndexFormatError
from .manifest import Manifest
from .metadata import Metadata, ro_uri
from .migrate import migrate_v1


def faiss_message(e: Exception) -> str:
    """The useful last line of a FAISS C++ exception."""
    lines = str(e).strip().splitlines()
    return lines[-1][:200] if lines else type(e).__name__


def open_metadata(path: Path, m: Manifest) -> Metadata:
    """The metadata of generation ``m`` read-only (a version 1 file is migrated into memory)."""
    meta_path = path / m.metadata_file
    if not meta_path.exists():
        raise FileNotFoundError(meta_path)
    try:
        if m.format_version == 1:
            db = sqlite3.connect(":memory:", check_same_thread=False)
            migrate_v1(meta_path, db, m.roots)
        else:
            db = sqlite3.connect(ro_uri(meta_path), uri=True, check_same_thread=False)
            db.execute("SELECT 1 FROM photos LIMIT 1").fetchall()
    except sqlite3.Error as e:
        if not meta_path.exists():
            raise FileNotFoundError(meta_path) from None
        raise IndexFormatError(f"{meta_path}: cannot read metadata ({e})") from None
    return Metadata(db, m.roots, str(path))


def read_flags(m: Manifest, *, mmap: bool, read_only: bool) -> int:
    """FAISS read flags: with ``mmap``, and for a reader (``read_only``) of an index whose record asks for
    ``vectors_on_disk``, the whole file is mapped instead of read: inverted lists, codes and flat vector storage
    (exact vectors, re-ranking floats) are views of it (FAISS's ``IO_FLAG_MMAP_IFC``; its older ``IO_FLAG_MMAP``
    maps inverted lists only, and fails combined with it). A mapped index cannot be written to (FAISS aborts on
    an add): writers load with neither."""
    import faiss

    record = (m.extra or {}).get(INDEX_AUTO_KEY)  # read as is: a reader does not validate the whole record
    on_disk = read_only and isinstance(record, dict) and record.get("vectors_on_disk") is True
    if mmap or on_disk:
        return faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
    return 0


def load_generation(path: Path, m: Manifest, *, mmap: bool = False, read_only: bool = False) -> tuple[object, Metadata]:
    """The FAISS index and metadata of generation ``m``, checked against each other and the manifest.
    ``mmap`` and ``read_only``: see :func:`read_flags` (a writer passes neither).

    A file that vanishes meanwhile (a writer removing an old generation) raises FileNotFoundError: retry.
    """
    import faiss

    vec_path = path / m.vectors_file
    if not vec_path.exists():
        raise FileNotFoundError(vec_path)
    # the metadata first: on Linux an open file survives a writer deleting it
    meta = open_metadata(path, m)
    try:
        index = faiss.read_index(str(vec_path), read_flags(m, mmap=mmap, read_only=read_only))
    except RuntimeError as e:
        meta.close()
        if not vec_path.exists():
            raise FileNotFoundError(vec_path) from None
        raise IndexFormatError(f"{vec_path}: cannot read FAISS index ({faiss_message(e)})") from None
    try:
        photos = meta.count_photos()
    except sqlite3.DatabaseError as e:
        meta.close()
        raise IndexFormatError(f"{path / m.metadata_file}: cannot read metadata ({e})") from None
    if index.d != m.dim:
        meta.close()
        raise IndexFormatError(f"{path}: FAISS index has dim {index.d}, manifest says {m.dim}")
    if not (index.ntotal == photos == m.count):
        meta.close()
        raise IndexFormatError(
            f"{path}: inconsistent index: {index.ntotal} vectors, {photos} metadata rows, manifest count {m.count}"
        )
    return index, meta


def load_augmented(path: Path, m: Manifest, *, mmap: bool = False, read_only: bool = False, graph: bool = False):
    """The augmented FAISS index of generation ``m`` (and with ``graph`` its neighbour-graph arrays), or None
    when the generation has none. Checked against the raw index's size. ``mmap``, ``read_only``: as
    :func:`load_generation`."""
    import faiss

    if not m.augmented:
        return None
    aug_path = path / m.augmented_file
    try:
        index = faiss.read_index(str(aug_path), read_flags(m, mmap=mmap, read_only=read_only))
    except RuntimeError as e:
        if not aug_path.exists():
            raise FileNotFoundError(aug_path) from None
        raise IndexFormatError(f"{aug_path}: cannot read FAISS index ({faiss_message(e)})") from None
    if index.ntotal != m.count or index.d != m.dim:
        raise IndexFormatError(f"{aug_path}: {index.ntotal} augmented vectors of dim {index.d}, expected {m.count}")
    if not graph:
        return index
    try:
        with np.load(path / m.graph_file) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{path / m.graph_file}: cannot read neighbour graph ({e})") from None
    return index, arrays
