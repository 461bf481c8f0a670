#!/usr/bin/env python
"""Index photos with a fine-tuned checkpoint, reusing its fine-tuning run's feature cache (issues 13 and 16).

``simsearch finetune --cache-dir DIR`` keeps what the frozen part of the network makes of every training photo
(``DIR/<model key>/v0``: the eval transform, the one index and query use). A checkpoint only changes the layers
after that cut, so indexing with it needs, per photo, only the rest of the network on the cached prefix output:
the photos the run saw cost a small fraction of a full pass, the others are computed (and cached) once. This
script does that through the index's own build path (``build_index`` with an engine that reads the files itself,
``embed_paths``), so the result is an ordinary index of the checkpoint (manifest, labels, augmentation by
default); later queries embed end to end with the checkpoint. The prefix output is cached as float16: ``--check N``
embeds N photos end to end too and reports the largest difference (about 1e-3).

    python scripts/index_finetuned.py ../shared/data/caltech101/images --out /work/cache/caltech-ft \\
        --backbone /work/cache/ft/caltech-train --cache-dir /work/cache/ft/cache
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

import simsearch
from simsearch.backbones import CHECKPOINT_CARD
from simsearch.finetuning.cache import FeatureCache, file_key
from simsearch.finetuning.model import Suffix, resolve_precision


class CachedPrefixEngine:
    """An engine (``embed_paths``) for a fine-tuned checkpoint: cached frozen prefix, then the checkpoint's rest."""

    name = "torch"
    batch_size = 64

    def __init__(self, checkpoint: Path, cache_dir: Path, *, workers: int = 2):
        card = json.loads((checkpoint / CHECKPOINT_CARD).read_text())
        self.cut = card["cut"]["first_trained_block"]
        self.precision = resolve_precision(card["hyperparameters"]["precision"])
        base = simsearch.create_backbone(card["base_backbone"])
        if base.weights_sha256 != card["base_weights_sha256"]:
            raise SystemExit(f"{checkpoint} was fine-tuned from other weights than {card['base_backbone']}'s")
        self.base = base
        self.prefix_model = copy.deepcopy(base.model).eval().to(memory_format=torch.channels_last)
        self.cache = FeatureCache(cache_dir, base_sha=base.weights_sha256, arch=base.arch, cut=self.cut,
                                  data_config=base.data_config, precision=self.precision)  # fmt: skip
        self.tuned = simsearch.create_backbone(str(checkpoint))
        self.suffix = Suffix(self.tuned.model.body, self.cut)
        self.workers = workers
        self.cached_before = 0
        self.computed = 0

    def settings(self) -> dict[str, str]:
        return {"engine": "torch", "precision": "fp32"}

    def __call__(self, batch) -> np.ndarray:  # end to end (not used by the build: it reads files itself)
        with torch.inference_mode():
            out = self.tuned.model(torch.as_tensor(np.asarray(batch)))
        return F.normalize(out, dim=1).numpy()

    def _finish(self, h: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(h).float().contiguous(memory_format=torch.channels_last)
            return F.normalize(self.tuned.model.head(self.suffix(x)), dim=1).numpy()

    def embed_paths(self, paths, preprocess=None, *, progress: bool = False):
        step = 256
        done = 0
        for s in range(0, len(paths), step):
            chunk = [Path(p) for p in paths[s : s + step]]
            keys = [file_key(p) for p in chunk]
            d = self.cache.view_dir(0, None)
            have = sum((d / f"{k}.npz").exists() for k in keys)
            self.cached_before += have
            self.computed += len(chunk) - have
            h, _, failed = self.cache.features(
                chunk, keys, view=0, model=self.prefix_model, data_config=self.base.data_config, batch_size=64,
                workers=self.workers, precision=self.precision,
            )  # fmt: skip
            vectors = np.zeros((len(chunk), self.tuned.dim), np.float32)
            ok = [i for i in range(len(chunk)) if i not in failed]
            for b in range(0, len(ok), 128):
                rows = ok[b : b + 128]
                vectors[rows] = self._finish(h[rows])
            done += len(chunk)
            if progress:
                print(f"\r{done}/{len(paths)} photos ({self.cached_before} from the cache)", end="", file=sys.stderr)
            yield vectors, [failed.get(i) for i in range(len(chunk))]
        if progress:
            print(file=sys.stderr)


def check(engine: CachedPrefixEngine, index_path: Path, n: int) -> float:
    """Largest |difference| between the index's vectors and end-to-end embeddings of ``n`` of its photos."""
    with simsearch.open_index(index_path) as idx:
        ids = idx.ids()
        if len(ids) == 0:
            return float("nan")
        pick = np.random.default_rng(0).choice(ids, size=min(n, len(ids)), replace=False)
        _, stored = idx.vectors(pick)
        files = [idx.item(int(i)).abspath for i in pick]
    full = simsearch.Embedder(engine.tuned, batch_size=16, workers=2).embed(files)
    return float(np.abs(full - stored).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backbone", type=Path, required=True, help="fine-tuned checkpoint directory")
    ap.add_argument("--cache-dir", type=Path, required=True, help="the fine-tuning run's --cache-dir")
    ap.add_argument("--augment", help="as `simsearch index --augment` [default: the index default]")
    ap.add_argument("--check", type=int, default=16, help="photos embedded end to end to compare (0: none)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    engine = CachedPrefixEngine(args.backbone, args.cache_dir)
    t0 = time.perf_counter()
    kwargs = {} if args.augment is None else {"augment": args.augment}
    with simsearch.build_index(args.folders, args.out, backbone=engine.tuned, engine=engine, progress=True,
                               **kwargs) as idx:  # fmt: skip
        report = idx.report
    seconds = time.perf_counter() - t0
    diff = check(engine, args.out, args.check) if args.check else float("nan")
    out = {"index": str(args.out), "backbone": str(args.backbone), "added": report.added, "count": report.count,
           "seconds": round(seconds, 1), "prefix_from_cache": engine.cached_before, "prefix_computed": engine.computed,
           "end_to_end_check_max_diff": diff, "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
