"""Precomputed item-to-item neighbours for offline recommendation.

``compute_neighbors(index, "neighbors.parquet", k=50)`` writes one row per (item, neighbour) pair:
``item_id, item_path, neighbor_id, neighbor_path, rank, score, item_key, neighbor_key`` for every item of the index, using the index's
own search (exact for a flat index, ANN with its tuned parameters otherwise). Items are processed in batches, so
memory stays bounded by ``batch_size × k`` rows whatever the size of the index; output is streamed to Parquet
(or CSV when ``out`` ends in ``.csv``). ``limit`` stops after that many items (a sample, e.g. for timing).

* the item itself is left out of its own list (``self_exclude``, the default);
* ``min_score`` drops neighbours scoring below it (lists may then be shorter than ``k``);
* on an index with augmented vectors the lists follow the augmented ranking as searches do (scores stay raw
  cosines; ``augment="none"`` gives the raw-vector lists, see :mod:`simsearch.search_augment`);
* ``exclude_duplicates`` drops the item's near-duplicates: neighbours scoring at or above it (a cosine), and those
  whose perceptual hash is close with a cosine above the rule's lower bar (:mod:`simsearch.duplicates`: the same
  pair rule as ``simsearch duplicates --threshold``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .config import DUPLICATES
from .duplicates import make_rule, pair_hash_distances
from .errors import SimsearchError
from .export import iter_items, reconstruct, text
from .index import Index, open_index
from .phash import duplicate_mask
from .progress import progress_bar
from .search_augment import photo_rows, search_spec

COLUMNS = ("item_id", "item_path", "neighbor_id", "neighbor_path", "rank", "score", "item_key", "neighbor_key")


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("item_id", pa.int64()),
            ("item_path", pa.string()),
            ("neighbor_id", pa.int64()),
            ("neighbor_path", pa.string()),
            ("rank", pa.int32()),
            ("score", pa.float32()),
            ("item_key", pa.string()),
            ("neighbor_key", pa.string()),
        ]
    )


def select_neighbors(
    query_ids: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
    k: int,
    *,
    self_exclude: bool = True,
    min_score: float | None = None,
    exclude_duplicates: float | None = None,
    hash_distances: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From raw search results (best first), keep up to ``k`` per row: returns (ids, scores, valid) ``(n, k)``.

    ``hash_distances`` (same shape, -1 unknown) lets ``exclude_duplicates`` also drop hash-close duplicates."""
    keep = ids >= 0
    if self_exclude:
        keep &= ids != query_ids[:, None]
    if min_score is not None:
        keep &= scores >= min_score
    if exclude_duplicates is not None:
        if hash_distances is None:
            keep &= scores < exclude_duplicates
        else:
            keep &= ~duplicate_mask(scores, hash_distances, make_rule(exclude_duplicates))
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept ones first, in their original order
    ids_k = np.take_along_axis(ids, order, 1)
    scores_k = np.take_along_axis(scores, order, 1)
    valid = np.take_along_axis(keep, order, 1)
    if ids_k.shape[1] < k:
        pad = k - ids_k.shape[1]
        ids_k = np.pad(ids_k, ((0, 0), (0, pad)), constant_values=-1)
        scores_k = np.pad(scores_k, ((0, 0), (0, pad)))
        valid = np.pad(valid, ((0, 0), (0, pad)))
    return ids_k, scores_k, valid


def _paths(index: Index, ids: np.ndarray) -> dict[int, tuple[str, str]]:
    """``{photo id: (path, item key)}``."""
    return {pid: (text(path) or "", key) for pid, path, key in index.snapshot.meta.photo_rows(ids.tolist())}


def compute_neighbors(
    index: Index | str | Path,
    out: str | Path,
    *,
    k: int = 50,
    min_score: float | None = None,
    exclude_duplicates: float | None = None,
    self_exclude: bool = True,
    batch_size: int = 2048,
    progress: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    augment: bool | str | None = None,
) -> dict:
    """Write the item-to-item neighbour table of ``index`` to ``out`` (see the module docstring)."""
    if isinstance(index, (str, Path)):
        with open_index(index) as idx:
            return compute_neighbors(
                idx, out, k=k, min_score=min_score, exclude_duplicates=exclude_duplicates,
                self_exclude=self_exclude, batch_size=batch_size, progress=progress, overwrite=overwrite, limit=limit,
                augment=augment,
            )  # fmt: skip
    if not 1 <= int(k) <= 10_000:
        raise SimsearchError(f"k must be between 1 and 10000, not {k}")
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        raise SimsearchError("the neighbours table needs pyarrow: pip install 'simsearch[scale]'") from None
    out = Path(out)
    if out.exists() and not overwrite:
        raise SimsearchError(f"{out} already exists: remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(index)
    use_hash = DUPLICATES.uses_hash
    fetch = min(n, int(k) + (1 if self_exclude else 0) + (int(k) if exclude_duplicates is not None else 0))
    schema = _schema()
    spec = search_spec(index.snapshot, augment)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    t0 = time.perf_counter()
    t_search = 0.0
    rows_written = items = 0

    bar = progress_bar(min(n, limit or n), "neighbours", unit="item", enabled=progress)
    writer = (
        pacsv.CSVWriter(tmp, schema)
        if out.suffix.lower() == ".csv"
        else pq.ParquetWriter(tmp, schema, compression="zstd")
    )
    try:
        for rows in iter_items(index, batch_size):
            if limit is not None:
                if items >= limit:
                    break
                rows = rows[: limit - items]
            qids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            qpaths = np.array([text(r[2]) for r in rows], dtype=object)
            qkeys = np.array([r[6] for r in rows], dtype=object)
            if fetch == 0:
                break
            ts = time.perf_counter()
            if spec is None:
                scores, found = index.faiss.search(reconstruct(index, qids), fetch)
            else:  # the item itself is already left out: select_neighbors sees a list without it
                scores, found = photo_rows(index.snapshot, qids, fetch, spec, self_exclude=self_exclude)
            t_search += time.perf_counter() - ts
            hd = pair_hash_distances(index, qids, found) if exclude_duplicates is not None and use_hash else None
            nid, nscore, valid = select_neighbors(
                qids, found, scores, int(k), self_exclude=self_exclude, min_score=min_score,
                exclude_duplicates=exclude_duplicates, hash_distances=hd,
            )  # fmt: skip
            row_idx, col_idx = np.nonzero(valid)
            flat_ids = nid[row_idx, col_idx]
            uniq, inv = np.unique(flat_ids, return_inverse=True)
            lookup = _paths(index, uniq)
            described = [lookup.get(int(u), (None, None)) for u in uniq]
            npaths: np.ndarray | list = np.array([d[0] for d in described], dtype=object)[inv] if len(uniq) else []
            nkeys: np.ndarray | list = np.array([d[1] for d in described], dtype=object)[inv] if len(uniq) else []
            ranks = np.cumsum(valid, axis=1)[row_idx, col_idx].astype(np.int32)
            batch = pa.RecordBatch.from_arrays(
                [
                    pa.array(qids[row_idx]),
                    pa.array(qpaths[row_idx], pa.string()),
                    pa.array(flat_ids),
                    pa.array(npaths, pa.string()),
                    pa.array(ranks),
                    pa.array(nscore[row_idx, col_idx].astype(np.float32)),
                    pa.array(qkeys[row_idx], pa.string()),
                    pa.array(nkeys, pa.string()),
                ],
                schema=schema,
            )
            writer.write_batch(batch)
            rows_written += batch.num_rows
            items += len(rows)
            bar.update(len(rows))
        writer.close()
        os.replace(tmp, out)
    finally:
        bar.close()
        if tmp.exists():
            writer.close()
            tmp.unlink()
    seconds = time.perf_counter() - t0
    return {
        "index": str(index.path),
        "out": str(out),
        "items": items,
        "rows": rows_written,
        "k": int(k),
        "index_factory": index.manifest.index_factory,
        "augmented": spec is not None,
        "seconds": round(seconds, 2),
        "search_seconds": round(t_search, 2),
        "rows_per_second": round(rows_written / seconds, 1) if seconds else None,
    }
