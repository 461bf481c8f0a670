#!/usr/bin/env python3
"""Benchmark of collection-side augmentation (issue 13; figures in docs/augmentation.md).

    .venv/bin/python scripts/bench_augment.py quality --index indexes/caltech101 --labels ../shared/data/caltech101/labels.csv
    .venv/bin/python scripts/bench_augment.py speed --index indexes/caltech101 [--sizes 100k] [--queries 40]

``quality``: Recall@1/5/10 and MAP@R, raw vs augmented (the default spec unless ``--augment``), with exact search:
Caltech-101 all classes and second half, leave-one-out and ``split=test`` as new queries; a few-neighbours
collection (3 photos per class, ``--seeds`` random draws); the bundled sample photos (labels = folders).

``speed``: on a copy of ``--index``: the augmentation step of an ``index`` run (a run over the same folders that
only augments), query latency of new images (embedding included) and of vectors, with and without augmentation;
the incremental update for 1,000 added and 1,000 removed images; for each of ``--sizes`` synthetic vectors
(the realistic generator of ``simsearch/synthetic.py``): the neighbour graph exact and over the automatic ANN
index, the averaging, and an incremental update of 1,000 over the ANN index. Reports ``uptime`` load with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import simsearch  # noqa: E402
from simsearch import augment as aug  # noqa: E402
from simsearch.config.augment import AugmentSpec  # noqa: E402
from simsearch.evaluate import augmented_metrics, metrics_of, retrieval_metrics  # noqa: E402

KS = (1, 5, 10)


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _labelled(index_path: str, labels_csv: str | None):
    import csv

    with simsearch.open_index(index_path) as idx:
        ids, vectors = idx.vectors()
        items = {it.id: it for it in idx.items()}
        rows = {}
        if labels_csv:
            base = Path(labels_csv).parent
            with open(labels_csv, newline="") as f:
                rows = {str((base / r["path"]).resolve()): r for r in csv.DictReader(f)}
        lab, split = [], []
        for i in ids:
            it = items[int(i)]
            row = rows.get(str(it.abspath.resolve()), {})
            lab.append(row.get("label") or it.label or "")
            split.append(row.get("split", ""))
    return ids, vectors, np.array(lab), np.array(split)


def _row(name: str, raw: dict, augmented: dict, k: int) -> dict:
    keys = [f"recall@{k}" for k in KS] + ["map@r"]
    return {
        "collection": name,
        "k": k,
        **{f"raw {m}": raw[m] for m in keys},
        **{f"aug {m}": augmented[m] for m in keys},
    }


def quality(args) -> None:
    spec = AugmentSpec.parse(args.augment) if args.augment else AugmentSpec()
    ids, vectors, lab, split = _labelled(args.index, args.labels)
    keep = (lab != "") & (lab != "BACKGROUND_Google")
    ids, vectors, lab, split = ids[keep], vectors[keep], lab[keep], split[keep]
    names = sorted(set(lab))
    second = np.isin(lab, names[len(names) // 2 :])
    out = []
    for title, sel in (("Caltech-101 all", np.ones(len(lab), bool)), ("Caltech-101 second half", second)):
        v, l_, s_, i_ = vectors[sel], lab[sel], split[sel], ids[sel]
        a, used = augmented_metrics(v, i_, l_, spec, KS)
        out.append(_row(f"{title}, leave-one-out ({len(v)})", retrieval_metrics(v, l_, KS), a, used["k"]))
        q = s_ == "test"
        if q.any():
            from simsearch.evaluate import exact_knn

            counts = np.unique(l_[~q], return_counts=True)[1]
            _, nb = exact_knn(v[q], v[~q], max(*KS, int(counts.max())))
            raw = metrics_of(l_[q], l_[~q], nb, KS)
            a, used = augmented_metrics(v, i_, l_, spec, KS, queries=q)
            out.append(_row(f"{title}, split=test as new queries ({int(q.sum())} vs {int((~q).sum())})", raw, a,
                            used["k"]))  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
    acc: dict[str, list] = {}
    ks = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        sel = np.concatenate([rng.choice(np.flatnonzero(lab == c), 3, replace=False) for c in names])
        a, used = augmented_metrics(vectors[sel], ids[sel], lab[sel], spec, KS)
        r = retrieval_metrics(vectors[sel], lab[sel], KS)
        ks.append(used["k"])
        for m in a:
            acc.setdefault("aug " + m, []).append(a[m])
            acc.setdefault("raw " + m, []).append(r[m])
    mean = {m: round(float(np.mean(v)), 4) for m, v in acc.items()}
    out.append({"collection": f"3 photos per class, leave-one-out ({args.seeds} draws, mean)", "k": int(np.median(ks)),
                **mean})  # fmt: skip
    print(json.dumps(out[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(simsearch.__file__).parent / "sample"
        with simsearch.build_index([sample], Path(tmp) / "sample", augment="none") as idx:
            sids, sv = idx.vectors()
            sl = np.array([idx.item(int(i)).label for i in sids])
        a, used = augmented_metrics(sv, sids, sl, spec, KS)
        out.append(_row(f"bundled sample, leave-one-out ({len(sv)})", retrieval_metrics(sv, sl, KS), a, used["k"]))
        print(json.dumps(out[-1]), flush=True)
    print(f"\nspec: {spec.to_dict()}  ({load()})")
    _table(out)


def _table(rows: list[dict]) -> None:
    keys = [f"recall@{k}" for k in KS] + ["map@r"]
    print("| collection | k | " + " | ".join(f"{m} raw → aug" for m in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for r in rows:
        cells = " | ".join(f"{r['raw ' + m]:.4f} → {r['aug ' + m]:.4f}" for m in keys)
        print(f"| {r['collection']} | {r['k']} | {cells} |")


# ------------------------------------------------------------------------------------------------ speed


def speed(args) -> None:
    results: dict = {"cpu": _cpu(), "rows": []}

    def report(what: str, seconds: float, **extra) -> None:
        row = {"what": what, "seconds": round(seconds, 3), **extra, "load": load()}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)

    if args.parts.strip():  # the runs on a copy of --index (--parts '' for the synthetic sizes only)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "index"
            shutil.copytree(args.index, copy, ignore=shutil.ignore_patterns(".lock", "augmented-*", "graph-*"))
            m = simsearch.index.read_manifest(copy)
            m_roots = list(m.roots)
            t = time.perf_counter()
            with simsearch.build_index(m_roots, copy, augment="none", progress=False):
                pass  # the run that only writes the index again (a format-1 index is migrated): baseline of a no-op run
            report("index run over unchanged folders, no augmentation", time.perf_counter() - t)
            t = time.perf_counter()
            with simsearch.build_index(m_roots, copy, progress=False, augment="dba") as idx:
                rec = idx.manifest.augment_record
            report("index run that augments (default spec) from scratch", time.perf_counter() - t,
                   augmentation_seconds=rec["seconds"], k=rec["k"], items=len(idx))  # fmt: skip
            if "latency" in args.parts:
                _latency(copy, args, report)
            if "incremental" in args.parts:
                _incremental(copy, report)
    for size in args.sizes:
        _synthetic(_n(size), args, report)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def _latency(path: Path, args, report) -> None:
    from PIL import Image

    with simsearch.open_index(path) as idx:
        files = [it.abspath for it in idx.items()][:: max(1, len(idx) // args.queries)][: args.queries]
        images = [Image.open(f).convert("RGB").resize((200, 150)) for f in files]  # new images (not indexed)
        idx.search(images[0], k=10)  # warm: model load
        for mode in ("none", "auto", "none", "auto"):
            lat = []
            for im in images:
                t = time.perf_counter()
                idx.search(im, k=10, augment=mode)
                lat.append(time.perf_counter() - t)
            report(f"new image query (embed + search), augment={mode}", float(np.median(lat)),
                   p90=round(float(np.percentile(lat, 90)), 4), queries=len(lat))  # fmt: skip
        vecs = idx.embed(images)
        for mode in ("none", "auto"):
            lat = []
            for v in vecs:
                t = time.perf_counter()
                idx.search(v, k=10, augment=mode)
                lat.append(time.perf_counter() - t)
            report(f"vector query (search only), augment={mode}", float(np.median(lat)), queries=len(lat))
        ids = idx.ids()[:: max(1, len(idx) // args.queries)][: args.queries]
        for mode in ("none", "auto"):
            lat = []
            for i in ids:
                t = time.perf_counter()
                idx.search(int(i), k=10, augment=mode)
                lat.append(time.perf_counter() - t)
            report(f"item query ('more like this'), augment={mode}", float(np.median(lat)), queries=len(lat))


def _incremental(path: Path, report) -> None:
    with simsearch.open_index(path) as idx:
        ids, vectors = idx.vectors()
        spec = AugmentSpec().resolved(int(idx.manifest.augment_record["k"]))
    n = len(ids)
    base = np.arange(n - 1000)
    graph = aug.knn_graph(vectors[base], ids[base], spec.max_k)
    t = time.perf_counter()
    up = aug.update(graph, vectors, ids, spec)
    report(f"incremental update: +1,000 to {n - 1000:,} (exact graph)", time.perf_counter() - t,
           recomputed=len(up.ids), relisted=up.relisted)  # fmt: skip
    full = up.graph
    t = time.perf_counter()
    down = aug.update(full, vectors[base], ids[base], spec)
    report(f"incremental update: -1,000 from {n:,} (exact graph)", time.perf_counter() - t,
           recomputed=len(down.ids), relisted=down.relisted)  # fmt: skip
    t = time.perf_counter()
    g = aug.knn_graph(vectors, ids, spec.max_k)
    t_graph = time.perf_counter() - t
    t = time.perf_counter()
    aug.propagate(vectors, g, spec, np.arange(n))
    report(f"from scratch: {n:,} (exact graph + averaging)", t_graph + time.perf_counter() - t,
           graph_seconds=round(t_graph, 3))  # fmt: skip


def _n(s: str) -> int:
    s = s.strip().lower()
    return int(float(s[:-1]) * {"k": 1_000, "m": 1_000_000}[s[-1]]) if s[-1] in "km" else int(s)


def _synthetic(n: int, args, report) -> None:
    from simsearch import autoindex, synthetic
    from simsearch.config.autoindex import AutoIndexSpec

    _, base, _, _ = _labelled(args.index, None)
    xb = synthetic.PcaNoise.fit(base).sample(n, seed=0, keep_real=True)  # the realistic generator (docs/scale.md)
    ids = np.arange(n, dtype=np.int64)
    spec = AugmentSpec(k=10)
    t = time.perf_counter()
    factory = autoindex.plan(n, xb.shape[1], AutoIndexSpec()).factory  # what `auto` picks for n (ANN above 100k)
    index, record = autoindex.build(xb[:-1000], ids[:-1000], factory, AutoIndexSpec())
    report(f"{n:,} synthetic: build the ANN index ({record.choice})", time.perf_counter() - t)
    t = time.perf_counter()
    graph = aug.knn_graph(xb[:-1000], ids[:-1000], spec.max_k, search=aug.index_search(index))
    t_graph = time.perf_counter() - t
    report(f"{n:,} synthetic: neighbour graph over the ANN index (k={spec.max_k})", t_graph)
    t = time.perf_counter()
    aug.propagate(xb[:-1000], graph, spec, np.arange(n - 1000))
    report(f"{n:,} synthetic: averaging (2 rounds, k=10)", time.perf_counter() - t)
    if args.exact_graph:
        t = time.perf_counter()
        exact = aug.knn_graph(xb[:-1000], ids[:-1000], spec.max_k)
        same = float((exact.neighbors == graph.neighbors).all(axis=1).mean())
        report(f"{n:,} synthetic: exact neighbour graph (flat)", time.perf_counter() - t,
               ann_rows_equal_exact=round(same, 4))  # fmt: skip
    index.add_with_ids(xb[-1000:], ids[-1000:])
    t = time.perf_counter()
    up = aug.update(graph, xb, ids, spec, search=aug.index_search(index), exact=False)
    report(f"{n:,} synthetic: incremental +1,000 over the ANN index (approximate entrants)", time.perf_counter() - t,
           recomputed=len(up.ids), relisted=up.relisted)  # fmt: skip
    del index, xb


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores visible"
    except OSError:
        pass
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--index", required=True)
    q.add_argument("--labels")
    q.add_argument("--augment", help="spec text (default: AugmentSpec())")
    q.add_argument("--seeds", type=int, default=20)
    s = sub.add_parser("speed")
    s.add_argument("--index", required=True)
    s.add_argument("--queries", type=int, default=40)
    s.add_argument("--sizes", type=lambda x: [v for v in x.split(",") if v], default=[])
    s.add_argument("--exact-graph", action="store_true", help="also the exact graph of the synthetic vectors")
    s.add_argument(
        "--parts",
        default="latency,incremental",
        help="latency,incremental (after the index runs); '' skips the runs on --index",
    )
    s.add_argument("--out")
    args = ap.parse_args()
    quality(args) if args.cmd == "quality" else speed(args)


if __name__ == "__main__":
    main()
