#!/usr/bin/env python3
"""Scale benchmark: flat exact search vs `--index auto` at 100k and 1M vectors (see docs/scale.md).

Vectors: the real embeddings of ../shared/data/caltech101 (default backbone), expanded by a seeded generator that
keeps their structure — each synthetic vector is a random convex mixture (Dirichlet(1) weights) of ``--mix``
embeddings of the same class (class chosen in proportion to the class sizes), re-normalised, plus isotropic
Gaussian noise of norm ``--noise``, re-normalised again. The real embeddings are the first rows. Queries are 1,000
fresh vectors from the same generator (another seed), not in the index. THE VECTORS ARE SYNTHETIC.

For each size it reports, for flat exact search and for the auto choice (default memory budget) and the
memory-lean auto choice (``--lean-bytes`` per vector): build time, bytes/vector (index file size / n), recall@10
against exact search, batched QPS (all queries at once), single-query p50/p99, and the RSS of a fresh query process
that loads the index file. Exact ground truth is computed for the queries only. With 1M in ``--sizes`` it also
times the neighbours table (``simsearch neighbors``) on the 1M auto index.

    .venv/bin/python scripts/bench_scale.py --sizes 100k          # quick
    .venv/bin/python scripts/bench_scale.py --sizes 100k,1M --from-index indexes/caltech101

Embeddings are cached under ``--cache-dir`` (default ~/.cache/simsearch/bench), never in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def parse_n(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "km" else s) * mult)


# ------------------------------------------------------------------------------ data


def base_embeddings(args) -> tuple[np.ndarray, np.ndarray]:
    """Real Caltech-101 embeddings and labels: from the cache, an existing index, or computed once."""
    import simsearch

    cache = Path(args.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    f = cache / f"caltech101-{simsearch.DEFAULT_BACKBONE}.npz"
    if f.exists():
        z = np.load(f)
        return z["vectors"], z["labels"]
    src = Path(args.from_index) if args.from_index else cache / "caltech101-index"
    if not args.from_index:
        images = Path(args.data) / "images"
        print(f"embedding {images} with {simsearch.DEFAULT_BACKBONE} into {src} (once)...", file=sys.stderr)
        simsearch.index.build_index([images], src, index_factory="Flat", progress=True)
    with simsearch.open_index(src) as idx:
        if idx.manifest.backbone != simsearch.DEFAULT_BACKBONE:
            sys.exit(f"{src} was built with {idx.manifest.backbone}, not {simsearch.DEFAULT_BACKBONE}")
        ids, vectors = idx.vectors()
        labels = idx.labels()
        lab = np.array([labels[int(i)] or "" for i in ids])
    np.savez(f, vectors=vectors, labels=lab)
    return vectors, lab


def expand(base: np.ndarray, labels: np.ndarray, n: int, *, seed: int, mix: int, noise: float, keep_real: bool):
    """``n`` synthetic unit vectors with the structure of ``base`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    classes, inv = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inv == c) for c in range(len(classes))]
    p = np.array([len(m) for m in members], float)
    p /= p.sum()
    d = base.shape[1]
    out = np.empty((n, d), np.float32)
    start = 0
    if keep_real:
        start = min(n, len(base))
        out[:start] = base[:start]
    for s in range(start, n, 50_000):
        m = min(50_000, n - s)
        cls = rng.choice(len(classes), size=m, p=p)
        pick = np.stack([members[c][rng.integers(0, len(members[c]), mix)] for c in cls])
        w = rng.dirichlet(np.ones(mix), size=m).astype(np.float32)
        v = np.einsum("nk,nkd->nd", w, base[pick])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v += (noise / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[s : s + m] = v
    return out


# ------------------------------------------------------------------------------ measuring


def query_bench(index_file: str, queries: str, truth: str, single: int, mmap: bool) -> dict:
    """Run in a fresh process: load the index, batched and single-query search, recall, RSS."""
    import faiss

    from simsearch.autoindex import recall_at_k

    rss0 = rss_mb()
    t0 = time.perf_counter()
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    index = faiss.read_index(index_file, flags)
    load = time.perf_counter() - t0
    xq, gt = np.load(queries), np.load(truth)
    index.search(xq[:10], 10)  # warm up
    t0 = time.perf_counter()
    _, found = index.search(xq, 10)
    batched = time.perf_counter() - t0
    lat = []
    for i in range(min(single, len(xq))):
        t = time.perf_counter()
        index.search(xq[i : i + 1], 10)
        lat.append((time.perf_counter() - t) * 1000)
    return {
        "load_s": round(load, 2),
        "recall@10": round(recall_at_k(found, gt), 4),
        "batched_qps": round(len(xq) / batched, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "rss_mb": round(rss_mb(), 1),
        "rss_index_mb": round(rss_mb() - rss0, 1),
    }


def run_query_process(index_file, qfile, gtfile, single, mmap) -> dict:
    cmd = [sys.executable, __file__, "_query", index_file, qfile, gtfile, str(single), "1" if mmap else "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_simsearch_index(path: Path, index, ids: np.ndarray, dim: int) -> None:
    """A real simsearch index directory (manifest + metadata + FAISS) around ``index``, for `simsearch neighbors`."""
    from simsearch import __version__
    from simsearch.store import FORMAT_VERSION, METRIC, GenerationWriter, Manifest, writer_lock

    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    m = Manifest(
        format_version=FORMAT_VERSION, backbone="efficientnet_lite0", arch="synthetic", weights_sha256="synthetic",
        preprocessing={}, dim=dim, metric=METRIC, index_factory="synthetic", count=0, roots=["/synthetic"],
        created=now, updated=now, simsearch_version=__version__, next_id=int(ids.max()) + 1,
    )  # fmt: skip
    with writer_lock(path):
        w = GenerationWriter(path, m, index, None)
        items = [(int(i), f"c{int(i) % 102:03d}/{int(i):07d}.jpg", {"label": f"c{int(i) % 102:03d}"}) for i in ids]
        w.add_items(items)
        w.db.executemany(  # the vectors are already in ``index``: only their metadata rows are written
            "INSERT INTO photos(id, item, root, path, size, mtime_ns) VALUES (?,?,?,?,?,?)",
            ((i, i, 0, key, 0, 0) for i, key, _ in items),
        )
        w.commit()
        w.close()


# ------------------------------------------------------------------------------ main


def _cpu_count() -> int:
    from simsearch.system import cpu_count

    return cpu_count()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_query":
        _, _, f, q, gt, single, mm = sys.argv
        print(json.dumps(query_bench(f, q, gt, int(single), mm == "1")))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "caltech101"))
    ap.add_argument("--from-index", help="Reuse the embeddings of an existing Caltech-101 index (default backbone).")
    ap.add_argument("--cache-dir", default="~/.cache/simsearch/bench")
    ap.add_argument("--work-dir", help="Where index files are written [default: a temp dir under the cache dir].")
    ap.add_argument("--sizes", default="100k,1M")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=1000, help="Single-query latency samples (ANN).")
    ap.add_argument("--flat-single", type=int, default=50, help="Single-query latency samples for flat at >= 1M.")
    ap.add_argument("--mix", type=int, default=3)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lean-bytes", type=int, default=128, help="Memory-lean budget in bytes per vector.")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--neighbors-k", type=int, default=50)
    ap.add_argument("--neighbors-items", type=int, help="Items to compute neighbours for [default: all].")
    ap.add_argument("--out", help="Write the results as JSON here too.")
    args = ap.parse_args()

    import faiss

    from simsearch import autoindex
    from simsearch.config.autoindex import AutoIndexSpec

    base, labels = base_embeddings(args)
    dim = base.shape[1]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-", dir=Path(args.cache_dir).expanduser()))
    work.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {"cpus": _cpu_count(), "faiss": faiss.__version__, "python": platform.python_version()},
        "data": {"real": len(base), "classes": len(set(labels.tolist())), "dim": dim, "mix": args.mix,
                 "noise": args.noise, "seed": args.seed, "synthetic": True},
        "sizes": [],
    }  # fmt: skip
    print(f"base: {len(base)} real embeddings, {results['data']['classes']} classes, dim {dim}", flush=True)
    xq = expand(base, labels, args.queries, seed=args.seed + 1_000_003, mix=args.mix, noise=args.noise, keep_real=False)
    for n in [parse_n(s) for s in args.sizes.split(",")]:
        t0 = time.perf_counter()
        xb = expand(base, labels, n, seed=args.seed, mix=args.mix, noise=args.noise, keep_real=True)
        ids = np.arange(n, dtype=np.int64)
        print(f"\n== {n:,} vectors (generated in {time.perf_counter() - t0:.1f} s)", flush=True)
        t0 = time.perf_counter()
        gt_d, gt = autoindex.exact_neighbors(xq, xb, 10)
        t_exact = time.perf_counter() - t0
        qfile, gtfile = str(work / f"q-{n}.npy"), str(work / f"gt-{n}.npy")
        np.save(qfile, xq)
        np.save(gtfile, gt)
        size = {"n": n, "nn_similarity_median": {"top1": round(float(np.median(gt_d[:, 0])), 4),
                                                  "top10": round(float(np.median(gt_d[:, 9])), 4)}, "rows": []}  # fmt: skip
        # flat, exact: the baseline
        row = {"index": "IDMap2,Flat (exact)", "recall@10": 1.0, "bytes_per_vector": 4 * dim + 8}
        if n <= 200_000:
            t0 = time.perf_counter()
            flat, _ = __import__("simsearch.index", fromlist=["x"]).new_faiss_index(dim, "Flat")
            flat.add_with_ids(xb, ids)
            row["build_s"] = round(time.perf_counter() - t0, 2)
            f = str(work / f"flat-{n}.faiss")
            faiss.write_index(flat, f)
            row["bytes_per_vector"] = round(os.path.getsize(f) / n, 1)
            del flat
            row.update(run_query_process(f, qfile, gtfile, args.single, False))
            os.unlink(f)
        else:  # 5 GB of floats: measured in this process on the generated matrix (the same kernel as IndexFlatIP)
            row["build_s"] = None
            row["batched_qps"] = round(len(xq) / t_exact, 1)
            lat = []
            for i in range(args.flat_single):
                t = time.perf_counter()
                autoindex.exact_neighbors(xq[i : i + 1], xb, 10, chunk=n)
                lat.append((time.perf_counter() - t) * 1000)
            row.update({"p50_ms": round(float(np.percentile(lat, 50)), 1),
                        "p99_ms": round(float(np.percentile(lat, 99)), 1), "rss_mb": round(rss_mb(), 1),
                        "note": f"in-process; latency over {args.flat_single} queries"})  # fmt: skip
        print(json.dumps(row), flush=True)
        size["rows"].append(row)

        for name, budget in (("auto", None), (f"auto, memory-lean {args.lean_bytes} B/vector", args.lean_bytes * n)):
            t0 = time.perf_counter()
            index, record = autoindex.build(
                xb, ids, "auto", AutoIndexSpec(memory_budget=budget, target_recall=args.target_recall)
            )
            factory, rec = record.choice, record.to_dict()
            build_s = time.perf_counter() - t0
            f = str(work / f"auto-{n}-{budget or 0}.faiss")
            faiss.write_index(index, f)
            row = {"index": f"{name}: {factory}", "params": rec["params"], "tuned_recall@10": rec["recall_at_10"],
                   "build_s": round(build_s, 1), "train_s": rec["train_seconds"], "add_s": rec["add_seconds"],
                   "tune_s": rec["tune_seconds"], "bytes_per_vector": round(os.path.getsize(f) / n, 1)}  # fmt: skip
            row.update(run_query_process(f, qfile, gtfile, args.single, False))
            row["mmap_load_s"] = run_query_process(f, qfile, gtfile, 10, True)["load_s"]
            print(json.dumps(row), flush=True)
            size["rows"].append(row)
            if budget is None and n >= 1_000_000 and args.neighbors_k:
                size["neighbors"] = neighbors_bench(work, index, ids, dim, args)
                print(json.dumps(size["neighbors"]), flush=True)
            del index
            os.unlink(f)
        results["sizes"].append(size)
        del xb
    print("\n" + table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def neighbors_bench(work: Path, index, ids: np.ndarray, dim: int, args) -> dict:
    import shutil

    from simsearch.index import open_index
    from simsearch.neighbors import compute_neighbors

    path = work / "neighbors-index"
    shutil.rmtree(path, ignore_errors=True)
    make_simsearch_index(path, index, ids, dim)
    with open_index(path) as idx:
        r = compute_neighbors(idx, work / "neighbors.parquet", k=args.neighbors_k, limit=args.neighbors_items,
                              overwrite=True, progress=True)  # fmt: skip
    r["parquet_bytes"] = (work / "neighbors.parquet").stat().st_size
    shutil.rmtree(path, ignore_errors=True)
    (work / "neighbors.parquet").unlink()
    return r


def table(results: dict) -> str:
    lines = ["| n | index | build s | bytes/vector | recall@10 | batched QPS | p50 ms | p99 ms | query RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for size in results["sizes"]:
        for r in size["rows"]:
            lines.append(
                f"| {size['n']:,} | {r['index']} | {r.get('build_s') or '–'} | {r['bytes_per_vector']} | "
                f"{r['recall@10']} | {r['batched_qps']} | {r['p50_ms']} | {r['p99_ms']} | {r.get('rss_mb') or '–'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
