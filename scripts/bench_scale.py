#!/usr/bin/env python3
"""Scale benchmark: flat exact search vs `--index auto` at 100k and 1M vectors (see docs/scale.md).

Vectors: the real embeddings of ../shared/data/caltech101 (default backbone) are the first rows; the rest are
synthetic (``simsearch/synthetic.py``), from one of two seeded generators (``--generator``, default both):
``realistic`` (fitted to the real vectors: a real vector plus Gaussian noise along each PCA direction at
``--factor`` × that direction's std, re-normalised) and ``mixture`` (the first generator: a Dirichlet mixture of
``--mix`` same-class embeddings plus isotropic noise of norm ``--noise``). Each generator's PCA spectrum and median
top-1/top-10 neighbour cosine are printed beside the real set's. Queries are 1,000 fresh vectors from the same
generator (another seed), not in the index. THE VECTORS ARE SYNTHETIC.

For each generator and size it reports, for flat exact search and, for each ``--chooser`` (``fixed``: the rule of
commit fe4a9e6, the baseline; ``measured``: every candidate family tried), the auto choice (default memory budget)
and the memory-lean auto choice (``--lean-bytes`` per vector): build time, bytes/vector (index file size / n), recall@10
against exact search, batched QPS (all queries at once), single-query p50/p99, and the RSS of a fresh query process
that loads the index file. Memory per vector, two ways: "B/vector in memory" is the index file's size over n (for a
``vectors on disk`` row: without the re-ranking floats, which stay on disk), the accounting of every earlier figure;
"RssAnon B/vector" is the heap the loaded index takes before searching (FAISS's own tables and id maps included;
mapped file pages, which the kernel can drop and read again, are not in it).
``--vectors-on-disk`` adds memory-lean rows whose re-ranking vectors stay in the file, memory-mapped
(``AutoIndexSpec.vectors_on_disk``): the file is dropped from the page cache before the query process searches,
and its first batched pass is reported cold beside the warm figure. Exact ground truth is computed for the queries
only. With 1M in ``--sizes`` it also times the neighbours table (``simsearch neighbors``) on the 1M auto index.

    .venv/bin/python scripts/bench_scale.py --sizes 100k          # quick
    .venv/bin/python scripts/bench_scale.py --sizes 100k,1M --from-index indexes/caltech101
    .venv/bin/python scripts/bench_scale.py --sizes 100k --generator realistic --chooser fixed,measured

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


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory in MB: all of it (``VmRSS``), anonymous (``RssAnon``: heap, not reclaimable
    without swap) or file-backed (``RssFile``: mapped file pages, which the kernel can drop and read again)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def evict(path: str) -> None:
    """Drop ``path``'s pages from the page cache (unmapped clean pages; no root needed), for a cold-cache run."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


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


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile")
    return " ".join(f for f in wanted if f in flags)


# ------------------------------------------------------------------------------ measuring


def query_bench(index_file: str, queries: str, truth: str, single: int, mmap: bool, on_disk: bool = False) -> dict:
    """Run in a fresh process: load the index, batched and single-query search, recall, RSS. ``on_disk``: the
    index is read as simsearch reads a ``vectors_on_disk`` index (the flat re-ranking vectors memory-mapped); its
    file is dropped from the page cache first, and the first batched pass is timed cold, then a second warm."""
    import faiss

    from simsearch.autoindex import recall_at_k

    xq, gt = np.load(queries), np.load(truth)
    rss0, anon0 = rss_mb(), rss_mb("RssAnon")
    t0 = time.perf_counter()
    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap or on_disk else 0  # as simsearch maps files
    if on_disk:
        evict(index_file)
    index = faiss.read_index(index_file, flags)
    load = time.perf_counter() - t0
    out = {"rss_anon_load_mb": round(rss_mb("RssAnon") - anon0, 1)}  # the index's own structures, before searching
    if on_disk:
        t0 = time.perf_counter()
        _, found = index.search(xq, 10)
        out["cold_batched_qps"] = round(len(xq) / (time.perf_counter() - t0), 1)
        out["cold_recall@10"] = round(recall_at_k(found, gt), 4)
        out["rss_file_after_cold_mb"] = round(rss_mb("RssFile"), 1)
    index.search(xq[:10], 10)  # warm up
    t0 = time.perf_counter()
    _, found = index.search(xq, 10)
    batched = time.perf_counter() - t0
    lat = []
    for i in range(min(single, len(xq))):
        t = time.perf_counter()
        index.search(xq[i : i + 1], 10)
        lat.append((time.perf_counter() - t) * 1000)
    return out | {
        "load_s": round(load, 2),
        "recall@10": round(recall_at_k(found, gt), 4),
        "batched_qps": round(len(xq) / batched, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "rss_mb": round(rss_mb(), 1),
        "rss_index_mb": round(rss_mb() - rss0, 1),
        "rss_anon_index_mb": round(rss_mb("RssAnon") - anon0, 1),
        "rss_file_mb": round(rss_mb("RssFile"), 1),
    }


def run_query_process(index_file, qfile, gtfile, single, mmap, on_disk=False) -> dict:
    cmd = [sys.executable, __file__, "_query", index_file, qfile, gtfile, str(single), "1" if mmap else "0"]
    cmd += ["1" if on_disk else "0"]
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
        f, q, gt, single, mm, *disk = sys.argv[2:]
        print(json.dumps(query_bench(f, q, gt, int(single), mm == "1", disk == ["1"])))
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
    ap.add_argument("--generator", default="realistic,mixture", help="Comma-separated: realistic, mixture.")
    ap.add_argument(
        "--factor", type=float, default=None, help="Realistic generator: noise × PCA std [default: fitted]."
    )
    ap.add_argument("--mix", type=int, default=3)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--chooser", default="fixed,measured", help="`auto` choosers to compare: fixed (fe4a9e6), measured."
    )
    ap.add_argument(
        "--families", default="", help="Candidate families the measured chooser may try [default: AutoIndexSpec's]."
    )
    ap.add_argument("--trial-size", type=int, help="Vectors each candidate is tried on [default: AutoIndexSpec's].")
    ap.add_argument("--flat-below", type=int, help="Exact search below this many vectors [default: 100k].")
    ap.add_argument("--lean-bytes", type=int, default=128, help="Memory-lean budget in bytes per vector.")
    ap.add_argument("--no-default-budget", action="store_true", help="Only the memory-lean rows.")
    ap.add_argument("--no-lean", action="store_true", help="No memory-lean rows.")
    ap.add_argument(
        "--vectors-on-disk", action="store_true",
        help="Also memory-lean rows with the re-ranking vectors on disk (AutoIndexSpec.vectors_on_disk).",
    )  # fmt: skip
    ap.add_argument("--skip-flat", action="store_true", help="No exact-search row.")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--neighbors-k", type=int, default=50)
    ap.add_argument("--neighbors-items", type=int, help="Items to compute neighbours for [default: all].")
    ap.add_argument("--out", help="Write the results as JSON here too.")
    ap.add_argument("--table", metavar="JSON", help="Only print the table of the results saved by an earlier --out.")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return

    import faiss

    from simsearch import autoindex, synthetic
    from simsearch.config.autoindex import AutoIndexSpec

    base, labels = base_embeddings(args)
    dim = base.shape[1]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-", dir=Path(args.cache_dir).expanduser()))
    work.mkdir(parents=True, exist_ok=True)
    fitted = synthetic.PcaNoise.fit(base, args.factor or synthetic.REALISTIC_FACTOR)
    real = {"pca_share": synthetic.pca_shares(base),
            "nn_similarity_median": dict(zip(("top1", "top10"), map(lambda v: round(v, 4),
                                         synthetic.neighbour_similarity(base, base, exclude_self=True)), strict=True))}  # fmt: skip
    results = {
        "machine": {"cpus": _cpu_count(), "cpu_flags": cpu_flags(), "faiss": faiss.__version__,
                    "python": platform.python_version(), "load_average_start": load_average()},
        "data": {"real": len(base), "classes": len(set(labels.tolist())), "dim": dim, "mix": args.mix,
                 "noise": args.noise, "factor": fitted.factor, "seed": args.seed, "synthetic": True, "real_set": real},
        "sizes": [],
    }  # fmt: skip
    print(f"base: {len(base)} real embeddings, {results['data']['classes']} classes, dim {dim}", flush=True)
    print(f"real set: PCA variance share {real['pca_share']}, median top-1/top-10 cosine (leave-one-out) "
          f"{real['nn_similarity_median']}; CPU {cpu_flags()}; load {load_average()}", flush=True)  # fmt: skip

    def generate(gen: str, n: int, seed: int, keep_real: bool) -> np.ndarray:
        if gen == "realistic":
            return fitted.sample(n, seed=seed, keep_real=keep_real)
        return synthetic.mixture_vectors(
            base, labels, n, seed=seed, mix=args.mix, noise=args.noise, keep_real=keep_real
        )

    trial = {"trial_size": args.trial_size} if args.trial_size else {}
    if args.families:
        trial["families"] = tuple(f.strip() for f in args.families.split(",") if f.strip())
    choosers = [c.strip() for c in args.chooser.split(",") if c.strip()]
    for gen in [g.strip() for g in args.generator.split(",") if g.strip()]:
        xq = generate(gen, args.queries, args.seed + 1_000_003, False)
        for n in [parse_n(s) for s in args.sizes.split(",")]:
            t0 = time.perf_counter()
            xb = generate(gen, n, args.seed, True)
            ids = np.arange(n, dtype=np.int64)
            print(f"\n== {gen}: {n:,} vectors (generated in {time.perf_counter() - t0:.1f} s)", flush=True)
            t0 = time.perf_counter()
            gt_d, gt = autoindex.exact_neighbors(xq, xb, 10)
            t_exact = time.perf_counter() - t0
            qfile, gtfile = str(work / f"q-{gen}-{n}.npy"), str(work / f"gt-{gen}-{n}.npy")
            np.save(qfile, xq)
            np.save(gtfile, gt)
            size = {"generator": gen, "n": n, "load_average_start": load_average(),
                    "nn_similarity_median": {"top1": round(float(np.median(gt_d[:, 0])), 4),
                                             "top10": round(float(np.median(gt_d[:, 9])), 4)},
                    "pca_share": synthetic.pca_shares(xb), "rows": []}  # fmt: skip
            print(f"{gen} at {n:,}: PCA variance share {size['pca_share']}, median top-1/top-10 cosine of the "
                  f"queries {size['nn_similarity_median']} (real set: {real['nn_similarity_median']})", flush=True)  # fmt: skip
            if not args.skip_flat:
                size["rows"].append(flat_row(xb, ids, xq, t_exact, work, n, dim, qfile, gtfile, args))
                print(json.dumps(size["rows"][-1]), flush=True)
            budgets = [] if args.no_default_budget else [("auto", None, False)]
            if not args.no_lean:
                budgets.append((f"auto, memory-lean {args.lean_bytes} B/vector", args.lean_bytes * n, False))
            if args.vectors_on_disk:
                lean = f"auto, memory-lean {args.lean_bytes} B/vector, vectors on disk"
                budgets.append((lean, args.lean_bytes * n, True))
            for name, budget, on_disk in budgets:
                for chooser in choosers:
                    spec = AutoIndexSpec(memory_budget=budget, target_recall=args.target_recall, chooser=chooser,
                                         flat_below=args.flat_below, vectors_on_disk=on_disk, **trial)  # fmt: skip
                    t0 = time.perf_counter()
                    index, record = autoindex.build(xb, ids, "auto", spec)
                    factory, rec = record.choice, record.to_dict()
                    build_s = time.perf_counter() - t0
                    f = str(work / f"auto-{n}-{budget or 0}{'-disk' if on_disk else ''}.faiss")
                    faiss.write_index(index, f)
                    row = {"index": f"{name} [{chooser}]: {factory}", "chooser": chooser,
                           "lean": "disk" if on_disk else budget is not None,
                           "params": rec["params"], "tuned_recall@10": rec["recall_at_10"],
                           "build_s": round(build_s, 1), "train_s": rec["train_seconds"], "add_s": rec["add_seconds"],
                           "tune_s": rec["tune_seconds"], "bytes_per_vector": round(os.path.getsize(f) / n, 1),
                           "reason": rec.get("reason"), "load_average": load_average()}  # fmt: skip
                    keep = budget is None and chooser == choosers[-1] and n >= 1_000_000 and args.neighbors_k
                    if not keep:
                        del index  # at 1M the floats are 5 GB: not held twice while the query process loads them
                    row.update(run_query_process(f, qfile, gtfile, args.single, False, on_disk))
                    row["rss_anon_bytes_per_vector"] = round(row["rss_anon_load_mb"] * 2**20 / n, 1)
                    if on_disk:  # the file without the floats: codes, ids, centroids (what every query scans)
                        row["memory_bytes_per_vector"] = round(row["bytes_per_vector"] - 4 * dim, 1)
                    if not on_disk:
                        row["mmap_load_s"] = run_query_process(f, qfile, gtfile, 10, True)["load_s"]
                    print(json.dumps(row), flush=True)
                    size["rows"].append(row)
                    if keep:
                        size["neighbors"] = neighbors_bench(work, index, ids, dim, args)
                        print(json.dumps(size["neighbors"]), flush=True)
                        del index
                    os.unlink(f)
            results["sizes"].append(size)
            del xb
            if args.out:  # after every size: a long run keeps what it measured
                Path(args.out).write_text(json.dumps(results, indent=2))
    results["machine"]["load_average_end"] = load_average()
    print("\n" + table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def flat_row(xb, ids, xq, t_exact, work, n, dim, qfile, gtfile, args) -> dict:
    """Exact search, the baseline: a fresh query process up to 200k vectors, in-process above."""
    import faiss

    from simsearch import autoindex
    from simsearch.store import new_faiss_index

    row = {"index": "IDMap2,Flat (exact)", "recall@10": 1.0, "bytes_per_vector": 4 * dim + 8}
    if n <= 200_000:
        t0 = time.perf_counter()
        flat, _ = new_faiss_index(dim, "Flat")
        flat.add_with_ids(xb, ids)
        row["build_s"] = round(time.perf_counter() - t0, 2)
        f = str(work / f"flat-{n}.faiss")
        faiss.write_index(flat, f)
        row["bytes_per_vector"] = round(os.path.getsize(f) / n, 1)
        del flat
        row.update(run_query_process(f, qfile, gtfile, min(args.single, 200), False))
        os.unlink(f)
        return row
    row["build_s"] = None  # 5 GB of floats: measured in this process (the same kernel as IndexFlatIP)
    row["batched_qps"] = round(len(xq) / t_exact, 1)
    lat = []
    for i in range(args.flat_single):
        t = time.perf_counter()
        autoindex.exact_neighbors(xq[i : i + 1], xb, 10, chunk=n)
        lat.append((time.perf_counter() - t) * 1000)
    row.update({"p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1), "rss_mb": round(rss_mb(), 1),
                "note": f"in-process; latency over {args.flat_single} queries"})  # fmt: skip
    return row


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
    """Markdown rows; ``× fixed``: batched QPS over the fixed chooser's in the same run (same budget)."""
    lines = ["| generator | n | index | build s | B/vector in memory | RssAnon B/vector | recall@10 | batched QPS | × fixed | "
             "p50 ms | p99 ms | query RSS MB | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for size in results["sizes"]:
        base = {r.get("lean"): r["batched_qps"] for r in size["rows"] if r.get("chooser") == "fixed"}
        for r in size["rows"]:
            ratio = f"{r['batched_qps'] / base[r.get('lean')]:.2f}" if r.get("lean") in base else "–"
            qps = r["batched_qps"]
            if "cold_batched_qps" in r:
                qps = f"{qps} (cold {r['cold_batched_qps']})"
            lines.append(
                f"| {size['generator']} | {size['n']:,} | {r['index']} {r.get('params') or ''} | "
                f"{r.get('build_s') or '–'} | {r.get('memory_bytes_per_vector', r['bytes_per_vector'])} | "
                f"{r.get('rss_anon_bytes_per_vector', '–')} | "
                f"{r['recall@10']} | {qps} | "
                f"{ratio} | {r['p50_ms']} | {r['p99_ms']} | {r.get('rss_mb') or '–'} | {r.get('load_average', '')} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
