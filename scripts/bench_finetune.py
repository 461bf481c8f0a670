#!/usr/bin/env python
"""Fine-tuning benchmark on Caltech-101 (issue 6): frozen vs fine-tuned Recall@1 and MAP@R on unseen images.

1. same classes, new images: fine-tune on the ``split=train`` rows of labels.csv, evaluate leave-one-out on the
   ``split=test`` images (validation: held-out train images of every class).
2. unseen classes: fine-tune on the first half of the classes (sorted by name, all their images), evaluate on the
   second half (validation: held-out classes of the first half).
3. pairs: a pairs CSV from the train split (2 random positives within the class and 2 hard negatives across
   classes per image, mined with the frozen backbone), fine-tune from the pairs alone, evaluate as 1.

4. augmentation (issue 13), ``--augment-indexes FROZEN_INDEX,FINETUNED_INDEX``: Caltech indexed with the frozen
   backbone and with a checkpoint fine-tuned on the ``split=train`` rows (e.g. experiment 1's, or one made by
   ``simsearch finetune --labels labels.csv``, then ``simsearch index ... --backbone CHECKPOINT``); for each,
   Recall@1/5/10 and MAP@R raw vs augmented (the default ``AugmentSpec``: DBA + alpha-QE, ``k`` auto, exact
   search), on the ``split=test`` photos leave-one-out among themselves (as experiment 1) and as new queries
   against the ``split=train`` photos (left out of the collection and its augmentation). Only ``split=test``
   photos are queries: the fine-tuned model saw the others. Runs alone with ``--only 4``.

BACKGROUND_Google is left out everywhere. Each fine-tuned model is evaluated at the end of stage 1 (head only)
and of stage 2 (unfrozen blocks). The frozen part's outputs are cached once in --work/cache and shared by the
runs (the first pass over the 8677 images is the slow part; its time is reported apart from the runs).
Evaluation embeds the test images from that cache with each checkpoint as saved; --check N also embeds N test
images end to end with the checkpoint (create_backbone + Embedder) and reports the largest difference.

Usage: .venv/bin/python scripts/bench_finetune.py [--data ../shared/data/caltech101] [--work DIR] [--only 1,3]
       [--augment-indexes FROZEN_INDEX,FINETUNED_INDEX]
       [any `simsearch finetune` setting as --name value, e.g. --stage2-epochs 2 --views 1]
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

import simsearch
from simsearch.evaluate import retrieval_metrics
from simsearch.finetuning import FinetuneConfig
from simsearch.finetuning.cache import FeatureCache, file_key
from simsearch.finetuning.data import make_pairs
from simsearch.finetuning.model import Suffix, cut_point, resolve_precision

REPO = Path(__file__).resolve().parents[1]
EXCLUDE = "BACKGROUND_Google"
log = logging.getLogger("bench")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "caltech101")
    ap.add_argument("--work", type=Path, default=Path("/tmp/simsearch-bench-finetune"))
    ap.add_argument("--only", default="1,2,3", help="Experiments to run, e.g. 1,3 (4: with --augment-indexes).")
    ap.add_argument("--check", type=int, default=32, help="Test images embedded end to end per checkpoint (0: none).")
    ap.add_argument("--fresh", action="store_true", help="Delete earlier fine-tuned models in --work first.")
    ap.add_argument("--augment-indexes", default="",
                    help="Experiment 4: comma-separated indexes of Caltech (frozen, fine-tuned backbone).")  # fmt: skip
    args, rest = ap.parse_known_args()
    fields = FinetuneConfig.__dataclass_fields__
    settings = {}
    it = iter(rest)
    for flag in it:
        name = flag.lstrip("-").replace("-", "_")
        if not flag.startswith("--") or name not in fields:
            ap.error(f"unknown option {flag}")
        value = next(it)
        kind = type(getattr(FinetuneConfig(), name))
        kind = int if name in ("workers", "dim") else kind  # default None
        settings[name] = (
            (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value) if kind in (int, float) else value
        )
    return args, settings


def read_rows(data: Path) -> list[dict]:
    with open(data / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] != EXCLUDE]
    for r in rows:
        r["abspath"] = (data / r["path"]).resolve()
    return rows


class Features:
    """Frozen-part outputs (view 0) of every image, from the same cache the fine-tuning runs use."""

    def __init__(self, rows, cache_root: Path, cfg: FinetuneConfig):
        self.base = simsearch.create_backbone(cfg.backbone)
        model = copy.deepcopy(self.base.model).eval().to(memory_format=torch.channels_last)
        self.cut = cut_point(model, cfg.unfreeze)
        precision = resolve_precision(cfg.precision)
        fc = FeatureCache(cache_root, base_sha=self.base.weights_sha256, arch=self.base.arch, cut=self.cut,
                          data_config=self.base.data_config, precision=precision)  # fmt: skip
        paths = [r["abspath"] for r in rows]
        t0 = time.perf_counter()
        self.h, self.p, failed = fc.features(
            paths, [file_key(p) for p in paths], view=0, model=model, data_config=self.base.data_config,
            batch_size=64, workers=2, precision=precision, progress=sys.stderr.isatty(), desc="caching all images",
        )  # fmt: skip
        if failed:
            raise SystemExit(f"{len(failed)} unreadable images, e.g. {next(iter(failed.values()))}")
        self.seconds = time.perf_counter() - t0
        self.row = {str(p): i for i, p in enumerate(paths)}

    def frozen(self, idx) -> np.ndarray:
        return F.normalize(torch.from_numpy(self.p[idx]), dim=1).numpy()

    def with_checkpoint(self, path: Path, idx) -> np.ndarray:
        """Embeddings of rows ``idx`` by the checkpoint at ``path``, from the cached prefix outputs."""
        bb = simsearch.create_backbone(str(path))
        body, head = bb.model.body, bb.model.head
        suffix = Suffix(body, self.cut)
        out = []
        with torch.inference_mode():
            for s in range(0, len(idx), 256):
                sel = idx[s : s + 256]
                if self.cut is None:
                    pooled = torch.from_numpy(self.p[sel])
                else:
                    pooled = suffix(torch.from_numpy(self.h[sel]).float().contiguous(memory_format=torch.channels_last))
                out.append(F.normalize(head(pooled), dim=1).numpy())
        return np.concatenate(out)


def metrics(vectors, labels) -> dict:
    m = retrieval_metrics(vectors, labels, ks=(1, 5))
    return {"R@1": m["recall@1"], "MAP@R": m["map@r"], "items": m["items"], "classes": m["classes"]}


def end_to_end_check(path: Path, feats: Features, rows, idx, n: int) -> float:
    """Largest |difference| between cached-path and end-to-end embeddings of ``n`` test images."""
    if n <= 0:
        return float("nan")
    pick = np.random.default_rng(0).choice(idx, size=min(n, len(idx)), replace=False)
    bb = simsearch.create_backbone(str(path))
    full = simsearch.Embedder(bb, batch_size=16, workers=2).embed([rows[i]["abspath"] for i in pick])
    return float(np.abs(full - feats.with_checkpoint(path, pick)).max())


AUG_KS = (1, 5, 10)


def index_rows(index_path: Path, data: Path):
    """(vectors, labels, splits, backbone) of the labelled Caltech photos (raw vectors) of an index."""
    by_path = {r["abspath"]: r for r in read_rows(data)}
    with simsearch.open_index(index_path) as idx:
        ids, vectors = idx.vectors()
        paths = {it.id: it.abspath.resolve() for it in idx.items()}
        backbone = idx.manifest.backbone
    keep = np.array([paths[int(i)] in by_path for i in ids], bool)
    found = [by_path[paths[int(i)]] for i in ids[keep]]
    return vectors[keep], np.array([r["label"] for r in found]), np.array([r["split"] for r in found]), backbone


def augmentation(index_paths: list[Path], data: Path) -> list[dict]:
    """Experiment 4: raw vs augmented retrieval of the ``split=test`` photos of each index (see the docstring)."""
    from simsearch.config.augment import AugmentSpec
    from simsearch.evaluate import augmented_metrics, exact_knn, metrics_of

    spec = AugmentSpec()
    keys = [f"recall@{k}" for k in AUG_KS] + ["map@r"]
    out = []
    for path in index_paths:
        t0 = time.perf_counter()
        vectors, labels, splits, backbone = index_rows(path, data)
        test = splits == "test"
        ids = np.arange(len(vectors))
        v, lab = vectors[test], labels[test]
        raw = retrieval_metrics(v, lab, AUG_KS)
        aug, used = augmented_metrics(v, ids[test], lab, spec, AUG_KS)
        rows = [("test split, leave-one-out", int(test.sum()), raw, aug, used)]
        depth = max(*AUG_KS, int(np.unique(labels[~test], return_counts=True)[1].max()))
        _, nb = exact_knn(vectors[test], vectors[~test], depth)
        raw = metrics_of(labels[test], labels[~test], nb, AUG_KS)
        aug, used = augmented_metrics(vectors, ids, labels, spec, AUG_KS, queries=test)
        rows.append((f"test as new queries vs {int((~test).sum())} train", int(test.sum()), raw, aug, used))
        for protocol, n, r, a, u in rows:
            out.append({"index": str(path), "backbone": backbone, "protocol": protocol, "queries": n, "k": u["k"],
                        **{f"raw {m}": round(r[m], 4) for m in keys}, **{f"aug {m}": round(a[m], 4) for m in keys},
                        "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
            log.info("%s", json.dumps(out[-1]))
    print(f"\n| backbone | protocol | k | {' | '.join(f'{m} raw → aug' for m in keys)} |")
    print("|---|---|---|" + "---|" * len(keys))
    for x in out:
        cells = " | ".join(f"{x['raw ' + m]:.4f} → {x['aug ' + m]:.4f}" for m in keys)
        print(f"| {x['backbone']} | {x['protocol']} ({x['queries']}) | {x['k']} | {cells} |")
    print("load average " + ", ".join(f"{a:.2f}" for a in os.getloadavg()))
    return out


def main() -> None:
    args, settings = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = FinetuneConfig(**settings)
    data, work = args.data.resolve(), args.work
    work.mkdir(parents=True, exist_ok=True)
    only = {int(x) for x in args.only.split(",")}
    if only == {4}:  # experiment 4 alone needs no fine-tuning run and no feature cache
        aug_rows = augmentation([Path(p) for p in args.augment_indexes.split(",") if p], data)
        (work / "results-augment.json").write_text(json.dumps(aug_rows, indent=2) + "\n")
        return
    rows = read_rows(data)
    labels = [r["label"] for r in rows]
    classes = sorted(set(labels))
    first_half = set(classes[: (len(classes) + 1) // 2])
    train = np.array([i for i, r in enumerate(rows) if r["split"] == "train"])
    test = np.array([i for i, r in enumerate(rows) if r["split"] == "test"])
    second = np.array([i for i, r in enumerate(rows) if r["label"] not in first_half])
    log.info("%d images in %d classes (%d train, %d test); settings %s", len(rows), len(classes), len(train),
             len(test), settings or "default")  # fmt: skip

    feats = Features(rows, work / "cache", cfg)
    log.info("frozen outputs of all images cached in %.0f s", feats.seconds)
    lab = np.array(labels)
    results = []

    # inputs of the three experiments
    all_csv = work / "all.csv"
    with open(all_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([r["path"], r["label"]] for r in rows)
    pairs_csv = work / "pairs.csv"
    if 3 in only:
        pairs = make_pairs(list(lab[train]), feats.frozen(train), positives=2, negatives=2, seed=0)
        with open(pairs_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["left", "right", "label"])
            w.writerows([rows[train[i]]["path"], rows[train[j]]["path"], y] for i, j, y in pairs)
        log.info("pairs: %d similar, %d dissimilar (hard negatives)", sum(y for *_, y in pairs),
                 sum(1 - y for *_, y in pairs))  # fmt: skip

    experiments = {
        1: ("same classes, new images", dict(labels=data / "labels.csv", exclude_labels=[EXCLUDE], holdout="images"), test),
        2: ("unseen classes", dict(labels=all_csv, root=data, classes="first-half", holdout="classes"), second),
        3: ("pairs", dict(pairs=pairs_csv, root=data, holdout="images"), test),
    }  # fmt: skip
    for n, (name, source, eval_idx) in experiments.items():
        if n not in only:
            continue
        frozen = metrics(feats.frozen(eval_idx), lab[eval_idx])
        results.append({"exp": n, "name": name, "model": "frozen", **frozen, "seconds": None})
        out = work / f"exp{n}"
        if args.fresh and out.exists():
            import shutil

            shutil.rmtree(out)
        t0 = time.perf_counter()
        r = simsearch.finetune(out=out, cache_dir=work / "cache", resume=out.exists(), progress=sys.stderr.isatty(),
                               **source, **settings)  # fmt: skip
        wall = time.perf_counter() - t0
        timings = r.card.get("timings", {})
        for label, path in (("stage 1 (head)", r.stage1_path), ("final", r.path)):
            if path is None:
                continue
            m = metrics(feats.with_checkpoint(path, eval_idx), lab[eval_idx])
            results.append({"exp": n, "name": name, "model": label, **m,
                            "seconds": round(timings.get("total_seconds", wall)) if label == "final" else None})  # fmt: skip
        diff = end_to_end_check(r.path, feats, rows, eval_idx, args.check)
        b = r.best
        log.info("exp %d: best validation epoch: stage %s epoch %s; run %.0f s (this call %.0f s); "
                 "end-to-end check max |diff| %.2g", n, b["stage"], b["epoch"], timings.get("total_seconds", wall),
                 wall, diff)  # fmt: skip
        results[-1]["check_max_diff"] = diff

    print(f"\n{'exp':<4}{'evaluated on':<34}{'model':<16}{'R@1':>8}{'MAP@R':>8}{'run s':>8}")
    for x in results:
        where = {1: "test split (same classes)", 2: "second-half classes", 3: "test split (same classes)"}[x["exp"]]
        print(f"{x['exp']:<4}{where + ' (' + str(x['items']) + ')':<34}{x['model']:<16}{x['R@1']:>8.4f}"
              f"{x['MAP@R']:>8.4f}{'' if x['seconds'] is None else x['seconds']:>8}")  # fmt: skip
    aug_rows = augmentation([Path(p) for p in args.augment_indexes.split(",") if p], data) if 4 in only else []
    (work / "results.json").write_text(json.dumps({"settings": settings, "results": results, "augmentation": aug_rows,
                                                   "cache_seconds": feats.seconds}, indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
