"""Export an index for other systems: Parquet (Arrow, via pyarrow) or NumPy ``.npy`` files, streamed in batches.

Each row is one item: ``id``, ``path`` (relative to its root), ``root``, ``label``, ``size``, ``mtime_ns`` and its
``vector`` (float32, unit length; a fixed-size list in Parquet). Vectors come from the FAISS index: exact for
flat, IVF-Flat and exactly re-ranked (``RFlat``) indexes, reconstructions from the codes for compressed ones.
Memory stays bounded by the batch size whatever the size of the index.

Parquet files load directly into vector databases (LanceDB, Milvus, Qdrant, pandas, DuckDB...); see docs/scale.md.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import SimsearchError
from .faissops import is_exact_storage, prepare
from .index import Index, open_index
from .progress import progress_bar

FORMATS = ("parquet", "npy")
MANIFEST_KEY = b"simsearch.manifest"


def text(value) -> str | None:
    """A path or label from the metadata as valid UTF-8 text (undecodable bytes shown as escapes)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def iter_items(index: Index, batch_size: int = 50_000) -> Iterator[list[tuple]]:
    """Pages of ``(photo id, root index, path, size, mtime_ns, label, key, attributes json)`` rows in id order."""
    yield from index.snapshot.meta.photo_pages(batch_size)


def reconstruct(index: Index, ids: np.ndarray) -> np.ndarray:
    """Vectors of ``ids`` from the FAISS index (giving an IVF index a direct map first if it lacks one)."""
    try:
        return np.asarray(index.faiss.reconstruct_batch(ids), dtype=np.float32)
    except RuntimeError:
        try:
            prepare(index.faiss)
            return np.asarray(index.faiss.reconstruct_batch(ids), dtype=np.float32)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1][:160]
            raise SimsearchError(
                f"{index.path}: FAISS index {index.manifest.index_factory!r} cannot return its vectors ({msg})"
            ) from None


def arrow_schema(dim: int, manifest_json: str | None = None):
    import pyarrow as pa

    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("path", pa.string()),
            ("root", pa.string()),
            ("label", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("key", pa.string()),
            ("attributes", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )
    return schema.with_metadata({MANIFEST_KEY: manifest_json.encode()}) if manifest_json else schema


def record_batches(index: Index, batch_size: int = 50_000, progress: bool = False):
    """Arrow record batches of the whole index (see the module docstring for the columns)."""
    import pyarrow as pa

    dim = index.manifest.dim
    schema = arrow_schema(dim)
    roots = [text(r) for r in index.manifest.roots]
    bar = progress_bar(len(index), "exporting", unit="item", enabled=progress)
    try:
        for rows in iter_items(index, batch_size):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = reconstruct(index, ids)
            arrays = [
                pa.array(ids),
                pa.array([text(r[2]) for r in rows], pa.string()),
                pa.array([roots[r[1]] for r in rows], pa.string()),
                pa.array([text(r[5]) for r in rows], pa.string()),
                pa.array([r[3] for r in rows], pa.int64()),
                pa.array([r[4] for r in rows], pa.int64()),
                pa.array([r[6] for r in rows], pa.string()),
                pa.array([r[7] for r in rows], pa.string()),
                pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), dim),
            ]
            bar.update(len(rows))
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
    finally:
        bar.close()


def export_index(
    index: Index | str | Path,
    out: str | Path,
    fmt: str | None = None,
    *,
    batch_size: int = 50_000,
    progress: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write ``index`` to ``out``: a ``.parquet`` file, or (``npy``) a folder with ``vectors.npy`` (n × dim
    float32), ``ids.npy``, ``items.csv`` and ``manifest.json``. Returns a summary dict."""
    if not isinstance(index, (str, Path)):
        return _export(index, Path(out), fmt, batch_size, progress, overwrite)
    with open_index(index) as idx:
        return _export(idx, Path(out), fmt, batch_size, progress, overwrite)


def _export(index: Index, out: Path, fmt: str | None, batch_size: int, progress: bool, overwrite: bool) -> dict:
    fmt = fmt or ("parquet" if out.suffix.lower() in (".parquet", ".pq") else "npy")
    if fmt not in FORMATS:
        raise SimsearchError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if out.exists() and not overwrite:
        raise SimsearchError(f"{out} already exists: remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        count = _write_parquet(index, tmp, batch_size, progress) if fmt == "parquet" else 0
        if fmt == "npy":
            count = _write_npy(index, tmp, batch_size, progress)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
    exact = _exact(index)
    return {
        "index": str(index.path),
        "out": str(out),
        "format": fmt,
        "items": count,
        "dim": index.manifest.dim,
        "exact_vectors": exact,
        "bytes": _size(out),
    }


def _write_parquet(index: Index, path: Path, batch_size: int, progress: bool) -> int:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SimsearchError("Parquet export needs pyarrow: pip install 'simsearch[scale]'") from None
    schema = arrow_schema(index.manifest.dim, index.manifest.to_json())
    count = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in record_batches(index, batch_size, progress):
            writer.write_batch(batch.replace_schema_metadata(schema.metadata))
            count += batch.num_rows
    return count


def _write_npy(index: Index, folder: Path, batch_size: int, progress: bool) -> int:
    folder.mkdir(parents=True)
    n, dim = len(index), index.manifest.dim
    vectors = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    ids_out = np.lib.format.open_memmap(folder / "ids.npy", mode="w+", dtype=np.int64, shape=(n,))
    roots = [text(r) for r in index.manifest.roots]
    pos = 0
    bar = progress_bar(n, "exporting", unit="item", enabled=progress)
    with open(folder / "items.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "id", "path", "root", "label", "size", "mtime_ns", "key", "attributes"])
        for rows in iter_items(index, batch_size):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            if pos + len(ids) > n:
                raise SimsearchError(f"{index.path}: more metadata rows than vectors; run `simsearch verify`")
            vectors[pos : pos + len(ids)] = reconstruct(index, ids)
            ids_out[pos : pos + len(ids)] = ids
            w.writerows(
                [pos + j, r[0], text(r[2]), roots[r[1]], text(r[5]), r[3], r[4], r[6], r[7]] for j, r in enumerate(rows)
            )
            pos += len(ids)
            bar.update(len(rows))
    bar.close()
    vectors.flush()
    ids_out.flush()
    del vectors, ids_out
    (folder / "manifest.json").write_text(index.manifest.to_json(), encoding="utf-8")
    return pos


def read_parquet_manifest(path: str | Path) -> dict | None:
    """The manifest of the index a Parquet export came from (None if absent)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[MANIFEST_KEY]) if MANIFEST_KEY in meta else None


def _exact(index: Index) -> bool:
    try:
        return bool(is_exact_storage(index.faiss))
    except Exception:
        return False


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
