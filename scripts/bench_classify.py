"""Few-data classification on Caltech-101: neighbour votes over the index against a linear probe.

Both use the same frozen, global-pooled features of the index. The ``split=test`` photos of labels.csv are the
queries; from the ``split=train`` photos the script keeps 1, 5, 10 and 30 per class (seeded; all of a class when
it has fewer), then all of them, and classifies the queries by

- kNN: the similarity-weighted vote of the k nearest kept photos (simsearch.classify, exact search), and
- a linear probe: scikit-learn's LogisticRegression (lbfgs, multinomial) fitted on the kept photos' features
  (needs the optional extra: pip install 'simsearch[classify]').

It reports accuracy and macro F1 (mean ± standard deviation over the seeds) and the time each takes (kNN: the
search and the vote; probe: fitting and predicting). With ``--backbone CHECKPOINT`` (e.g. one made by
``simsearch finetune --labels labels.csv``) it also measures the photos indexed with that backbone (into
``--backbone-index``, built when it does not exist) and prints its rows beside the pretrained ones. A fine-tuned
checkpoint is checked first: its training images are read again from its card, and the script refuses to run
when any of them is a ``split=test`` photo (a fine-tuning that saw the queries would measure nothing).

    python scripts/bench_classify.py --index /work/cache/caltech101 --json results.json
    python scripts/bench_classify.py --index /work/cache/caltech101 --backbone /work/cache/ft/caltech-train \
        --backbone-index /work/cache/caltech-ft
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


def check_finetuned(checkpoint: Path, data: Path) -> dict:
    """The card's data summary of a fine-tuned ``checkpoint``; exits if it was trained on a ``split=test`` photo.

    The training images are read again from the card (its labels CSV, folder or pairs, with the run's settings),
    as the run itself read them; a checkpoint without a card (not fine-tuned) passes with an empty summary.
    """
    from simsearch.backbones import CHECKPOINT_CARD
    from simsearch.finetuning.data import load_training_data

    card_path = checkpoint / CHECKPOINT_CARD
    if not card_path.is_file():
        return {}

    card = json.loads(card_path.read_text())
    src, hp = card["data"], card["hyperparameters"]
    training = load_training_data(
        Path(src["folder"]) if "folder" in src else None,
        pairs=src.get("pairs_csv"),
        labels=src.get("labels_csv"),
        holdout=hp["holdout"],
        val_fraction=hp["val_fraction"],
        exclude_labels=src.get("excluded_labels", ()),
        classes=src.get("classes_subset", "all"),
        seed=hp["seed"],
    )
    with open(data / "labels.csv", newline="") as f:
        test = {(data / r["path"]).resolve() for r in csv.DictReader(f) if r["split"] == "test"}
    seen = [p for p in training.paths if Path(p).resolve() in test]
    if seen:
        raise SystemExit(f"{checkpoint} was fine-tuned on {len(seen)} split=test photos (e.g. {seen[0]}): "
                         "fine-tune on the split=train rows only")  # fmt: skip
    return {"training_images": len(training.paths), "test_photos_in_training": 0, **src,
            "hyperparameters": hp, "best": card.get("best"), "timings": card.get("timings")}  # fmt: skip


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


def table(rows: list[tuple[str, dict]]) -> str:
    """One markdown table of ``(features, result)`` rows: the same shots of each backbone next to each other."""
    order = {s: n for n, s in enumerate(dict.fromkeys(str(r["shots"]) for _, r in rows))}
    rows = sorted(rows, key=lambda fr: (order[str(fr[1]["shots"])], fr[1]["method"]))
    lines = [
        "| features | photos per class | train photos | method | accuracy | macro F1 | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for features, r in rows:
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
    ap.add_argument("--no-pretrained", action="store_true", help="measure only the --backbone index")
    ap.add_argument("--with-results", type=Path,
                    help="an earlier --json output whose rows are put in the table too (e.g. the pretrained ones)")  # fmt: skip
    args = ap.parse_args()
    shots = [int(s) for s in args.shots.split(",") if s.strip()]
    load_before = os.getloadavg()
    out = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "runs": {},
    }
    sources = [] if args.no_pretrained else [(args.index, None)]
    if args.no_pretrained and not args.backbone:
        ap.error("--no-pretrained needs --backbone")
    if args.backbone:
        finetuned = check_finetuned(Path(args.backbone), args.data)
        if finetuned:
            out["finetuned"] = finetuned
            print(f"{args.backbone}: fine-tuned on {finetuned['training_images']} images, none of them split=test",
                  file=sys.stderr)  # fmt: skip
        sources.append((args.backbone_index or args.index.with_name(args.index.name + "-finetuned"), args.backbone))
    rows = []
    if args.with_results:
        for run in json.loads(args.with_results.read_text())["runs"].values():
            rows.extend((run["features"], r) for r in run["results"])
    for index_path, backbone in sources:
        vecs, y, splits, classes, name = load(index_path, args.data, backbone)
        print(f"{index_path}: {len(y)} photos, {len(classes)} classes, backbone {name}", file=sys.stderr)
        results = bench(vecs, y, splits, len(classes), shots_list=shots, seeds=args.seeds, k=args.k, c=args.C,
                        probe=not args.no_probe)  # fmt: skip
        features = "pretrained " + name if backbone is None else "fine-tuned " + Path(backbone).name
        out["runs"][str(index_path)] = {"backbone": name, "features": features, "classes": len(classes),
                                        "queries": int((splits == "test").sum()), "results": results}  # fmt: skip
        rows.extend((features, r) for r in results)
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(table(rows))
    print(f"\nload average before {out['loadavg_before']}, after {out['loadavg_after']}; {out['cores']} cores")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
