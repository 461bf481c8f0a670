"""Few-data classification on Caltech-101: neighbour votes over the index against a linear probe.

Both use the same frozen, global-pooled features of the index. The ``split=test`` photos of labels.csv are the
queries; from the ``split=train`` photos the script keeps 1, 5, 10 and 30 per class (seeded; all of a class when
it has fewer), then all of them, and classifies the queries by

- kNN: the similarity-weighted vote of the k nearest kept photos (simsearch.classify, exact search), and
- a linear probe: scikit-learn's LogisticRegression (lbfgs, multinomial) fitted on the kept photos' features
  (needs the optional extra: pip install 'simsearch[classify]').

It reports accuracy and macro F1 (mean ± standard deviation over the seeds) and the time each takes (kNN: the
search and the vote; probe: fitting and predicting). With ``--backbone CHECKPOINT`` it also indexes the photos
with that (e.g. fine-tuned) backbone into ``--backbone-index`` and measures again.

    python scripts/bench_classify.py --index /work/cache/caltech101 --json results.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import simsearch
from simsearch.classify import decide, knn_shares
from simsearch.classify_eval import classification_metrics

EXCLUDE = "BACKGROUND_Google"  # a clutter class, not a category


def load(index_path: Path, data: Path, backbone: str | None = None):
    """(vectors, class index per row, split per row, class names) of the labelled photos in the index."""
    if not (index_path / "manifest.json").exists():
        print(f"indexing {data / 'images'} into {index_path} ...", file=sys.stderr)
        simsearch.index.build_index([data / "images"], index_path, backbone=backbone, progress=True)
    rows = {}
    with open(data / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows[(data / r["path"]).resolve()] = (r["label"], r["split"])
    with simsearch.open_index(index_path) as idx:
        ids, labels, splits = [], [], []
        for it in idx.items():
            found = rows.get(it.abspath.resolve())
            if found and found[0] != EXCLUDE:
                ids.append(it.id)
                labels.append(found[0])
                splits.append(found[1])
        _, vectors = idx.vectors(ids)
        backbone_name = idx.manifest.backbone
    classes, y = np.unique(np.array(labels), return_inverse=True)
    return vectors, y, np.array(splits), list(classes), backbone_name


def keep_per_class(y: np.ndarray, pool: np.ndarray, shots: int | None, seed: int) -> np.ndarray:
    """Indices of ``shots`` random rows of each class among ``pool`` (all of them when ``shots`` is None)."""
    if shots is None:
        return pool
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y[pool]):
        rows = pool[y[pool] == c]
        out.append(rng.choice(rows, size=min(shots, len(rows)), replace=False))
    return np.sort(np.concatenate(out))


def score(y_true, y_pred, n_classes) -> tuple[float, float]:
    m = classification_metrics(y_true, y_pred, n_classes)
    return m["accuracy"], m["macro_f1"]


def run_knn(vecs, y, kept, queries, n_classes, k):
    t = time.perf_counter()
    shares = knn_shares(vecs[queries], vecs[kept], y[kept], n_classes, k)
    pred, _ = decide(shares)
    return (*score(y[queries], pred, n_classes), time.perf_counter() - t)


def run_probe(vecs, y, kept, queries, n_classes, c):
    from sklearn.linear_model import LogisticRegression

    t = time.perf_counter()
    if len(np.unique(y[kept])) < 2:
        raise SystemExit("the linear probe needs two classes")
    with warnings.catch_warnings():  # one photo per class: "more classes than half the samples" is expected
        warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
        model = LogisticRegression(C=c, max_iter=2000).fit(vecs[kept], y[kept])
    pred = model.predict(vecs[queries])
    return (*score(y[queries], pred, n_classes), time.perf_counter() - t)


def bench(vecs, y, splits, n_classes, *, shots_list, seeds, k, c, probe=True) -> list[dict]:
    pool = np.flatnonzero(splits == "train")
    queries = np.flatnonzero(splits == "test")
    results = []
    for shots in [*shots_list, None]:
        runs = {"knn": [], "probe": []}
        for seed in range(seeds if shots is not None else 1):
            kept = keep_per_class(y, pool, shots, seed)
            runs["knn"].append(run_knn(vecs, y, kept, queries, n_classes, k))
            if probe:
                runs["probe"].append(run_probe(vecs, y, kept, queries, n_classes, c))
        for method, got in runs.items():
            if not got:
                continue
            a = np.array(got)
            row = {
                "shots": shots if shots is not None else "all",
                "train_images": len(keep_per_class(y, pool, shots, 0)),
                "method": f"kNN k={k}" if method == "knn" else f"linear probe C={c}",
                "seeds": len(got),
                "accuracy": round(float(a[:, 0].mean()), 4),
                "accuracy_sd": round(float(a[:, 0].std()), 4),
                "macro_f1": round(float(a[:, 1].mean()), 4),
                "macro_f1_sd": round(float(a[:, 1].std()), 4),
                "seconds": round(float(a[:, 2].mean()), 3),
            }
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return results


def table(results: list[dict], features: str) -> str:
    lines = [
        "| features | photos per class | train photos | method | accuracy | macro F1 | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sd = r["seeds"] > 1
        acc = f"{r['accuracy']:.4f}" + (f" ± {r['accuracy_sd']:.4f}" if sd else "")
        f1 = f"{r['macro_f1']:.4f}" + (f" ± {r['macro_f1_sd']:.4f}" if sd else "")
        lines.append(
            f"| {features} | {r['shots']} | {r['train_images']} | {r['method']} | {acc} | {f1} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", type=Path, default=Path("/work/cache/caltech101"), help="index of the photos")
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[1].parent / "shared/data/caltech101",
        help="Caltech-101 folder with images/ and labels.csv [default: beside the repository]",
    )
    ap.add_argument("--shots", default="1,5,10,30", help="photos kept per class, comma-separated")
    ap.add_argument("--seeds", type=int, default=3, help="random draws per number of shots")
    ap.add_argument("-k", type=int, default=10, help="voters for kNN")
    ap.add_argument("--C", type=float, default=10.0, help="inverse regularisation of the linear probe")
    ap.add_argument("--no-probe", action="store_true", help="kNN only (no scikit-learn needed)")
    ap.add_argument("--backbone", help="also measure with this backbone (e.g. a fine-tuned checkpoint)")
    ap.add_argument("--backbone-index", type=Path, help="index built with --backbone [default: INDEX-finetuned]")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    shots = [int(s) for s in args.shots.split(",") if s.strip()]
    load_before = os.getloadavg()
    out = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "runs": {},
    }
    sources = [(args.index, None)]
    if args.backbone:
        sources.append((args.backbone_index or args.index.with_name(args.index.name + "-finetuned"), args.backbone))
    tables = []
    for index_path, backbone in sources:
        vecs, y, splits, classes, name = load(index_path, args.data, backbone)
        print(f"{index_path}: {len(y)} photos, {len(classes)} classes, backbone {name}", file=sys.stderr)
        results = bench(vecs, y, splits, len(classes), shots_list=shots, seeds=args.seeds, k=args.k, c=args.C,
                        probe=not args.no_probe)  # fmt: skip
        out["runs"][str(index_path)] = {"backbone": name, "classes": len(classes), "queries": int((splits == "test").sum()),
                                        "results": results}  # fmt: skip
        tables.append(table(results, name))
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print("\n\n".join(tables))
    print(f"\nload average before {out['loadavg_before']}, after {out['loadavg_after']}; {out['cores']} cores")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
