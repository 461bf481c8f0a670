"""The fine-tuning run: check data, cache frozen outputs, stage 1 (head), stage 2 (last stages), checkpoints.

Output directory::

    backbone.json        card: arch, data_config, head (what load_checkpoint needs) + base backbone, data digest,
                         hyper-parameters, validation history, best epoch, timings
    model.safetensors    weights of the best epoch so far ("body.*" timm model, "head.*" projection)
    stage1/              the best checkpoint of stage 1 (head only), same layout
    train_state.pt       state of the last finished epoch, for --resume (plain tensors, loads with weights_only)
    cache/               cached frozen outputs (removed at the end unless kept or given as cache_dir)

Both checkpoint files are replaced atomically, so an interrupt or a crash leaves the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from .. import __version__
from ..backbones import CHECKPOINT_CARD, create_backbone
from ..errors import SimsearchError
from ..evaluate import retrieval_metrics
from ..progress import progress_bar
from . import FinetuneConfig, FinetuneResult, default_stage2_epochs
from .cache import FeatureCache, ImageDataset, augment_transform, file_key
from .data import TrainingData, load_training_data
from .losses import LOSSES, ProxyAnchor, contrastive, multi_similarity, similarity_drift
from .model import (
    Prefix,
    Suffix,
    autocast,
    cut_point,
    identity_head,
    lr_factor,
    pca_projection,
    resolve_precision,
    set_bn_modes,
    set_trainable,
)

log = logging.getLogger("simsearch")

WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
CARD_FORMAT = "simsearch-finetune/1"
# Settings that must not change when a run is resumed (the others, e.g. epochs or patience, may).
FIXED_ON_RESUME = (
    "backbone",
    "dim",
    "loss",
    "unfreeze",
    "augment",
    "views",
    "cache",
    "holdout",
    "val_fraction",
    "seed",
)


# ------------------------------------------------------------------------------------------ helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_checkpoint(out: Path, body, head, card: dict) -> None:
    """Write weights then card, each atomically (a reader sees the previous or the new complete file)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"body.{k}": v.detach().contiguous().clone() for k, v in body.state_dict().items()}
    tensors.update({f"head.{k}": v.detach().contiguous().clone() for k, v in head.state_dict().items()})
    _atomic_write(out / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    text = json.dumps(card, indent=2, default=str) + "\n"
    _atomic_write(out / CHECKPOINT_CARD, lambda p: p.write_text(text, encoding="utf-8"))


def _default_workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, n))


class _Bar:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = progress_bar(total, desc, unit="batch", enabled=enabled, dynamic_ncols=True)

    def __enter__(self):
        return self.bar

    def __exit__(self, *exc):
        self.bar.close()


# ------------------------------------------------------------------------------------------ the run


class Run:
    def __init__(self, cfg: FinetuneConfig, data: TrainingData, out: Path, progress: bool):
        self.cfg, self.data, self.out, self.progress = cfg, data, out, progress
        self.precision = resolve_precision(cfg.precision)
        self.workers = _default_workers() if cfg.workers is None else int(cfg.workers)
        self.history: list[dict] = []
        self.best: dict = {}
        self.timings: dict = {}
        self.stage1_done = False
        self.epoch = {1: 0, 2: 0}
        self.bad_epochs = 0
        self.t_start = time.perf_counter()
        self.elapsed_before = 0.0

    # -- setup
    def setup(self, cache_root: Path) -> None:
        cfg, data = self.cfg, self.data
        t0 = time.perf_counter()
        base = create_backbone(cfg.backbone)
        self.base = base
        self.model = copy.deepcopy(base.model)  # never train a shared (registered) instance in place
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model = self.model.to(memory_format=torch.channels_last)
        # the cut does not depend on whether stage 2 runs, so that runs with and without it share the cache
        self.cut = cut_point(self.model, cfg.unfreeze)
        if cfg.stage2_epochs != 0 and self.cut is None:
            log.info("%s cannot be cut between stages: stage 2 runs the whole network on images", base.arch)
        self.prefix, self.suffix = Prefix(self.model, self.cut), Suffix(self.model, self.cut)
        self.loss_name = loss_for(cfg, data)
        self.use_cache = cfg.cache
        self.n_views = max(1, cfg.views) if (cfg.augment and cfg.cache) else 1
        self.aug = {"seed": cfg.seed, "scale": (0.35, 1.0), "jitter": 0.2}
        self.fcache = FeatureCache(
            cache_root, base_sha=base.weights_sha256, arch=base.arch, cut=self.cut, data_config=base.data_config,
            precision=self.precision,
        )  # fmt: skip

        paths = data.paths
        self.keys = [file_key(p) for p in paths]
        every = np.concatenate([data.train, data.val])
        common = dict(
            model=self.model, data_config=base.data_config, batch_size=cfg.batch_size_infer, workers=self.workers,
            precision=self.precision, progress=self.progress, load_h=cfg.stage2_epochs != 0,
        )  # fmt: skip
        h0, p0, failed = self.fcache.features(
            [paths[i] for i in every], [self.keys[i] for i in every], view=0, desc="caching features", **common
        )
        bad = {int(every[j]) for j in failed}
        if bad:
            log.warning("%d image(s) cannot be read and are left out", len(bad))
            keep_t = np.array([i not in bad for i in data.train])
            keep_v = np.array([i not in bad for i in data.val])
            data.train, data.val = data.train[keep_t], data.val[keep_v]
            pos = {int(i): j for j, i in enumerate(every)}
            sel_t = [pos[int(i)] for i in data.train]
            sel_v = [pos[int(i)] for i in data.val]
            if data.pairs is not None:
                ok = np.array([a not in bad and b not in bad for a, b, _ in data.pairs])
                data.pairs = data.pairs[ok]
            from .data import _check_sizes

            if data.kind == "classes":
                _check_sizes(data.groups, data.train, data.val, data.group_names)
        else:
            sel_t = list(range(len(data.train)))
            sel_v = list(range(len(data.train), len(every)))
        self.train_p = [torch.from_numpy(p0[sel_t])]
        self.train_h = [torch.from_numpy(h0[sel_t])] if h0 is not None else None
        self.val_p = torch.from_numpy(p0[sel_v])
        self.val_h = torch.from_numpy(h0[sel_v]) if h0 is not None else None
        self.train_pos = {int(i): j for j, i in enumerate(data.train)}
        for v in range(1, self.n_views):
            h, p, _ = self.fcache.features(
                [paths[i] for i in data.train], [self.keys[i] for i in data.train], view=v, aug=self.aug,
                desc=f"caching augmented view {v}/{self.n_views - 1}", **common,
            )  # fmt: skip
            self.train_p.append(torch.from_numpy(p))
            if self.train_h is not None:
                self.train_h.append(torch.from_numpy(h))
        self.dim_in = int(self.train_p[0].shape[1])
        self.dim_out = int(cfg.dim or self.dim_in)
        # training groups renumbered 0..n-1 (validation classes get no proxy)
        _, inverse = np.unique(data.groups[data.train], return_inverse=True)
        self.train_groups = torch.from_numpy(inverse.astype(np.int64))
        if cfg.stage2_epochs is None:  # resolved here, from the images an epoch really has; the card records it
            per_epoch = sum(len(b) for b in self.batches(2, 0))
            self.cfg = cfg = dataclasses.replace(cfg, stage2_epochs=default_stage2_epochs(per_epoch))
            log.info("stage 2: %d epochs of %d images (default)", cfg.stage2_epochs, per_epoch)
        self.stage = 1
        self.head = self._initial_head()
        self.head0 = copy.deepcopy(self.head).requires_grad_(False)  # what the drift penalty compares with
        self.proxies = None
        if self.loss_name == "proxy_anchor":
            self.proxies = ProxyAnchor(int(inverse.max()) + 1, self.dim_out, init=self._class_means())
        self.timings["cache_seconds"] = round(time.perf_counter() - t0, 1)
        log.info(
            "training on %d images (%d groups), validating on %d images (%d groups, %s hold-out); "
            "%d cached view(s), loss %s, precision %s",
            len(data.train), len(set(data.groups[data.train].tolist())), len(data.val),
            len(set(data.groups[data.val].tolist())), data.source.get("validation"), self.n_views,
            self.loss_name, self.precision,
        )  # fmt: skip

    def _initial_head(self):
        """The starting projection, chosen on the validation set among the identity (the frozen embedding) and
        supervised whitening of the training groups at a few shrinkages (``init``).

        Whitening by the within-group covariance (as in Radenovic et al., "Fine-tuning CNN image retrieval with
        no human annotation", 2018, learned whitening) damps the directions in which images of the same class
        differ; it is closed-form and carries over to unseen classes better than a trained head.
        """
        cfg = self.cfg
        init = None if self.dim_out == self.dim_in else pca_projection(self.train_p[0], self.dim_out)
        candidates = {"identity" if init is None else "pca": identity_head(self.dim_in, self.dim_out, init)}
        if cfg.init in ("auto", "whiten"):
            for alpha in (0.1, 1.0, 10.0):
                candidates[f"whiten({alpha:g})"] = self._whitening_head(alpha)
        elif cfg.init != "identity":
            raise SimsearchError(f"init must be auto, identity or whiten, not {cfg.init!r}")
        if cfg.init == "whiten":
            candidates.pop("identity" if init is None else "pca")
        scores = {}
        for name, head in candidates.items():
            self.head = head
            scores[name] = self.validate()["map@r"]
        chosen = max(scores, key=lambda k: scores[k])
        self.init_choice = {"chosen": chosen, "validation_map@r": scores}
        if len(scores) > 1:
            log.info(
                "initial head: %s (validation MAP@R %s)", chosen, ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            )
        return candidates[chosen]

    def _whitening_head(self, alpha: float):
        x = self.train_p[0].double()
        g = self.train_groups
        n_groups = int(g.max()) + 1
        counts = torch.bincount(g, minlength=n_groups).double()
        means = (
            torch.zeros(n_groups, x.shape[1], dtype=torch.float64).index_add_(0, g, x) / counts.clamp(min=1)[:, None]
        )
        multi = counts[g] >= 2  # singletons say nothing about how a group varies
        xc = (x - means[g])[multi]
        cov = xc.T @ xc / max(1, len(xc))
        w, v = torch.linalg.eigh(cov)
        w = w.clamp(min=0)
        white = v @ torch.diag((w + alpha * w.mean()).rsqrt()) @ v.T
        mu = x.mean(0)
        if self.dim_out < self.dim_in:  # then keep the top principal directions of the whitened features
            white = pca_projection(((x - mu) @ white.T).float(), self.dim_out).double() @ white
        scale = (x - mu).norm(dim=1).mean() / ((x - mu) @ white.T).norm(dim=1).mean()
        white = white * scale  # keep feature magnitudes (and so step sizes) close to the identity's
        return identity_head(self.dim_in, self.dim_out, white.float(), bias=(-(white @ mu)).float())

    def _class_means(self) -> torch.Tensor:
        """Proxies start at the class means of the initial embedding (unseen classes stay random)."""
        with torch.no_grad():
            emb = F.normalize(self.head(self.train_p[0]), dim=1)
        means = torch.randn(int(self.train_groups.max()) + 1, self.dim_out) * 0.01
        means.index_add_(0, self.train_groups, emb)
        return means

    # -- batches
    def batches(self, stage: int, epoch: int) -> list[np.ndarray]:
        """Training positions (into ``data.train``) of each batch of an epoch, deterministic per epoch."""
        cfg, data = self.cfg, self.data
        rng = np.random.default_rng([cfg.seed, stage, epoch])
        bs = max(2, cfg.batch_size)
        if data.kind == "pairs":
            order = rng.permutation(len(data.pairs))
            per = max(1, bs // 2)
            out = []
            for s in range(0, len(order), per):
                chunk = data.pairs[order[s : s + per]]
                out.append(np.array([self.train_pos[int(i)] for i in chunk[:, :2].reshape(-1)], np.int64))
            return out
        groups = data.groups[data.train]
        m = max(2, cfg.per_class)
        chunks = []
        for g in np.unique(groups):
            members = rng.permutation(np.flatnonzero(groups == g))
            if len(members) < 2:
                continue
            for s in range(0, len(members), m):
                c = members[s : s + m]
                if len(c) < 2:
                    c = np.concatenate([c, rng.choice(members[members != c[0]], 1)])
                chunks.append(c)
        order = rng.permutation(len(chunks))
        out, cur = [], []
        for j in order:
            cur.append(chunks[j])
            if sum(len(c) for c in cur) >= bs:
                out.append(np.concatenate(cur))
                cur = []
        if cur and sum(len(c) for c in cur) >= 4:
            out.append(np.concatenate(cur))
        return out

    # -- forward
    def embed_val(self) -> np.ndarray:
        """Normalised embeddings of the validation images with the current model (eval mode, view 0)."""
        self.head.eval()
        set_bn_modes(self.model, self.suffix, self.cfg.train_bn, training=False)
        out = []
        bs = self.cfg.batch_size_infer
        with torch.inference_mode(), autocast(self.precision):
            for s in range(0, len(self.val_p), bs):
                if self.stage == 2 and self.cut is not None:
                    x = self.suffix(self.val_h[s : s + bs].float().contiguous(memory_format=torch.channels_last))
                elif self.stage == 2:
                    x = self._online_val_features(s, bs)
                else:
                    x = self.val_p[s : s + bs]
                out.append(F.normalize(self.head(x.float()).float(), dim=1).numpy())
        return np.concatenate(out)

    def _online_val_features(self, s: int, bs: int):
        from timm.data import create_transform

        tf = create_transform(**self.base.data_config, is_training=False)
        paths = [self.data.paths[i] for i in self.data.val[s : s + bs]]
        ds = ImageDataset(paths, tf, self.base.data_config["input_size"])
        return self.model(torch.stack([ds[i][1] for i in range(len(ds))]).contiguous(memory_format=torch.channels_last))

    def validate(self) -> dict:
        emb = self.embed_val()
        names = [self.data.group_names[g] for g in self.data.groups[self.data.val]]
        m = retrieval_metrics(emb, names, ks=(1, 5))
        return {"recall@1": m["recall@1"], "recall@5": m["recall@5"], "map@r": m["map@r"]}

    def loss(self, emb: torch.Tensor, pos_idx: np.ndarray, frozen: torch.Tensor) -> tuple[torch.Tensor, float]:
        groups = self.train_groups[torch.from_numpy(pos_idx)]
        if self.loss_name == "proxy_anchor":
            main = self.proxies(emb, groups)
        else:
            pos = groups[:, None] == groups[None, :]
            g = self.data.groups[self.data.train][pos_idx]
            neg = torch.from_numpy(self.data.is_negative(g[:, None], g[None, :]))
            fn = multi_similarity if self.loss_name == "multi_similarity" else contrastive
            main = fn(emb, pos, neg)
        total = main
        if self.cfg.regularize > 0:
            with torch.no_grad():
                start = F.normalize(self.head0(frozen), dim=1)
            total = total + self.cfg.regularize * similarity_drift(emb, start)
        return total, float(main.detach())

    # -- stages
    def make_optimizer(self, stage: int, steps: int):
        cfg = self.cfg
        lr = cfg.lr if stage == 1 else cfg.stage2_lr
        groups = [{"params": list(self.head.parameters()), "lr": lr, "weight_decay": cfg.weight_decay}]
        if stage == 2:
            body = set_trainable(self.model, self.suffix, cfg.unfreeze)
            groups.append({"params": body, "lr": lr, "weight_decay": cfg.weight_decay})
        if self.proxies is not None:
            plr = cfg.proxy_lr if stage == 1 else cfg.proxy_lr * cfg.stage2_lr / cfg.lr
            groups.append({"params": list(self.proxies.parameters()), "lr": plr, "weight_decay": 0.0})
        for g in groups:
            g["initial_lr"] = g["lr"]
        opt = torch.optim.AdamW(groups)
        warm = round(cfg.warmup * steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warm))
        return opt, sched

    def train_epoch(self, stage: int, epoch: int, opt, sched, bar_desc: str) -> float:
        batches = self.batches(stage, epoch)
        rng = np.random.default_rng([self.cfg.seed, stage, epoch, 1])
        self.head.train()
        set_bn_modes(self.model, self.suffix, self.cfg.train_bn, training=(stage == 2))
        online = stage == 2 and (self.cut is None or not self.use_cache)
        online_iter = self._online_batches(batches, epoch) if online or (stage == 1 and not self.use_cache) else None
        losses = []
        with _Bar(len(batches), bar_desc, self.progress) as bar:
            for b in batches:
                with autocast(self.precision):
                    if online_iter is not None:
                        feats, frozen = next(online_iter)
                    else:
                        views = torch.from_numpy(rng.integers(0, self.n_views, len(b)))
                        feats, frozen = self._cached_batch(stage, b, views)
                    emb = F.normalize(self.head(feats).float(), dim=1)
                loss, main = self.loss(emb, b, frozen.float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(main)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", best=f"{self.best.get('map@r', 0):.4f}")
                bar.update()
        return float(np.mean(losses)) if losses else float("nan")

    def _cached_batch(self, stage: int, b: np.ndarray, views: torch.Tensor):
        idx = torch.from_numpy(b)
        frozen = _gather(self.train_p, idx, views)
        if stage == 1:
            return frozen, frozen
        h = _gather(self.train_h, idx, views).float()
        return self.suffix(h.contiguous(memory_format=torch.channels_last)), frozen

    def _online_batches(self, batches, epoch):
        """Images decoded and augmented afresh for every batch; frozen features from an untouched copy."""
        from timm.data import create_transform

        cfg, data = self.cfg, self.data
        if cfg.augment:
            tf = augment_transform(self.base.data_config, scale=self.aug["scale"], jitter=self.aug["jitter"])
        else:
            tf = create_transform(**self.base.data_config, is_training=False)
        paths = [data.paths[i] for i in data.train]
        ds = ImageDataset(paths, tf, self.base.data_config["input_size"])
        if not hasattr(self, "_frozen_model"):
            self._frozen_model = copy.deepcopy(self.base.model).eval()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        dl = torch.utils.data.DataLoader(
            ds, batch_sampler=[b.tolist() for b in batches], num_workers=self.workers, generator=gen
        )
        for _, x, _ in dl:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                frozen = self._frozen_model(x)
                h = self.prefix(x)
            yield (self.suffix(h) if self.stage == 2 else frozen), frozen

    # -- bookkeeping
    def card(self) -> dict:
        cfg, base = self.cfg, self.base
        return {
            "format": CARD_FORMAT,
            "arch": base.arch,
            "data_config": base.data_config,
            "head": {"in": self.dim_in, "out": self.dim_out},
            "base_backbone": base.name,
            "base_weights_sha256": base.weights_sha256,
            "loss": self.loss_name,
            "init": self.init_choice,
            "cut": {"unfrozen_blocks": cfg.unfreeze, "first_trained_block": self.cut},
            "data": {**self.data.summary(), "digest": self.data_digest},
            "hyperparameters": dataclasses.asdict(cfg),
            "precision": self.precision,
            "best": self.best,
            "history": self.history,
            "timings": {**self.timings, "total_seconds": round(self.elapsed(), 1)},
            "simsearch_version": __version__,
            "created": self.created,
            "updated": _now(),
        }

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def record(self, stage: int, epoch: int, loss: float | None, lr: float | None, seconds: float) -> bool:
        metrics = self.validate()
        entry = {"stage": stage, "epoch": epoch, "loss": None if loss is None else round(loss, 5),
                 "lr": lr, **metrics, "seconds": round(seconds, 1)}  # fmt: skip
        improved = not self.best or metrics["map@r"] > self.best["map@r"] + 1e-5
        entry["best"] = improved
        self.history.append(entry)
        if improved:
            self.best = {"stage": stage, "epoch": epoch, **metrics}
            self.best_head = copy.deepcopy(self.head.state_dict())
            self.best_proxies = None if self.proxies is None else copy.deepcopy(self.proxies.state_dict())
            save_checkpoint(self.out, self.model, self.head, self.card())
        what = "frozen start" if stage == 0 else f"stage {stage} epoch {epoch}"
        log.info(
            "%s: %sR@1 %.4f  MAP@R %.4f%s",
            what, "" if loss is None else f"loss {loss:.4f}  ", metrics["recall@1"], metrics["map@r"],
            "  (best, saved)" if improved else "",
        )  # fmt: skip
        return improved

    def save_state(self, stage: int, opt, sched) -> None:
        state = {
            "stage": stage,
            "epoch": dict(self.epoch),
            "stage1_done": self.stage1_done,
            "bad_epochs": self.bad_epochs,
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "best_head": self.best_head,
            "best_proxies": self.best_proxies,
            "proxies": None if self.proxies is None else self.proxies.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            "history": json.dumps(self.history),
            "best": json.dumps(self.best),
            "timings": json.dumps(self.timings),
            "elapsed": self.elapsed(),
            "created": self.created,
            "config": json.dumps(dataclasses.asdict(self.cfg)),
            "data_digest": self.data_digest,
            "done": False,
        }
        _atomic_write(self.out / STATE, lambda p: torch.save(state, p))

    def run_stage(self, stage: int, state: dict | None) -> None:
        cfg = self.cfg
        epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
        patience = cfg.patience if stage == 1 else cfg.stage2_patience
        self.stage = stage
        if epochs <= 0:
            return
        steps = epochs * len(self.batches(stage, 0))
        opt, sched = self.make_optimizer(stage, steps)
        if state is not None and state["stage"] == stage and state.get("optimizer") is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        t_stage = time.perf_counter()
        threads = torch.get_num_threads()
        if stage == 1 and self.use_cache:
            # Small matmuls on cached features: one thread is as fast, and much faster on a busy machine
            # (OpenMP threads waiting for each other while other processes hold the cores).
            torch.set_num_threads(1)
        try:
            while self.epoch[stage] < epochs and self.bad_epochs < patience:
                e = self.epoch[stage] + 1
                t0 = time.perf_counter()
                loss = self.train_epoch(stage, e, opt, sched, f"stage {stage} epoch {e}/{epochs}")
                lr = round(opt.param_groups[0]["lr"], 8)
                improved = self.record(stage, e, loss, lr, time.perf_counter() - t0)
                self.bad_epochs = 0 if improved else self.bad_epochs + 1
                self.epoch[stage] = e
                self.save_state(stage, opt, sched)
        finally:
            torch.set_num_threads(threads)
        if self.bad_epochs >= patience and self.epoch[stage] < epochs:
            log.info("stage %d: early stop after %d epochs without a better MAP@R", stage, patience)
        key = f"stage{stage}_seconds"
        self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - t_stage, 1)


def loss_for(cfg: FinetuneConfig, data: TrainingData) -> str:
    # contrastive by default, for classes too: on Caltech-101 (same classes, new images; 16 stage 2 epochs) it gave
    # R@1 0.934 / MAP@R 0.852 against proxy_anchor's 0.928 / 0.845 and multi_similarity's 0.928 / 0.828
    name = cfg.loss or "contrastive"
    if name not in LOSSES:
        raise SimsearchError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    if name == "proxy_anchor" and data.kind == "pairs":
        raise SimsearchError("proxy_anchor needs class labels; for pairs use contrastive or multi_similarity")
    return name


def _gather(per_view: list[torch.Tensor], idx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` taken from the view given for each row."""
    out = per_view[0].new_empty((len(idx), *per_view[0].shape[1:]))
    for v in views.unique().tolist():
        sel = views == v
        out[sel] = per_view[v][idx[sel]]
    return out


def _check_out(out: Path, resume: bool) -> dict | None:
    """The saved state to resume from, or None to start afresh; refuses to overwrite another run."""
    state_file = out / STATE
    if resume:
        if state_file.exists():
            return torch.load(state_file, map_location="cpu", weights_only=True)
        log.info("%s has no interrupted run to resume: starting afresh", out)
        return None
    if (out / CHECKPOINT_CARD).exists() or state_file.exists():
        raise SimsearchError(
            f"{out} already holds a fine-tuned model: continue it with --resume, or choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise SimsearchError(f"{out} exists and is not a folder")
    return None


def run(cfg: FinetuneConfig, *, data, out, pairs, labels, root, val, exclude_labels, classes, resume, cache_dir,
        keep_cache, progress) -> FinetuneResult:  # fmt: skip
    t0 = time.perf_counter()
    out = Path(out).expanduser()
    state = _check_out(out, resume)
    if state is not None and state.get("done"):
        log.info("%s: the run is already complete", out)
        card = json.loads((out / CHECKPOINT_CARD).read_text())
        stage1 = out / "stage1" if (out / "stage1" / CHECKPOINT_CARD).exists() else None
        return FinetuneResult(path=out, history=card["history"], best=card["best"], card=card, stage1_path=stage1)
    if state is not None:
        saved = FinetuneConfig(**json.loads(state["config"]))
        changed = [k for k in FIXED_ON_RESUME if getattr(saved, k) != getattr(cfg, k)]
        if changed:
            log.warning("resuming with the run's saved settings for %s", ", ".join(changed))
            cfg = dataclasses.replace(cfg, **{k: getattr(saved, k) for k in FIXED_ON_RESUME})
    if cfg.stage1_epochs < 0 or (cfg.stage2_epochs or 0) < 0 or cfg.batch_size < 4 or cfg.views < 1:
        raise SimsearchError("epochs must be >= 0, batch_size >= 4 and views >= 1")
    training = load_training_data(
        data, pairs=pairs, labels=labels, root=root, val=val, holdout=cfg.holdout, val_fraction=cfg.val_fraction,
        exclude_labels=exclude_labels, classes=classes, seed=cfg.seed,
    )  # fmt: skip
    loss_for(cfg, training)
    digest = training.digest()
    if state is not None and state["data_digest"] != digest:
        raise SimsearchError(
            f"{out}: the training data changed since the interrupted run (digest {state['data_digest'][:12]} vs "
            f"{digest[:12]}); start a new run with another --out"
        )
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    cache_root = Path(cache_dir).expanduser() if cache_dir else out / "cache"
    r = Run(cfg, training, out, progress)
    r.data_digest = digest
    r.created = state["created"] if state else _now()
    r.timings["data_seconds"] = round(time.perf_counter() - t0, 1)
    try:
        r.setup(cache_root)
        r.best_head = copy.deepcopy(r.head.state_dict())
        r.best_proxies = None if r.proxies is None else copy.deepcopy(r.proxies.state_dict())
        if state is not None:
            _restore(r, state)
        else:
            r.stage = 1
            r.record(0, 0, None, None, 0.0)  # the frozen starting point: the checkpoint is never worse than it
            r.save_state(1, None, None)
        if not r.stage1_done:
            r.run_stage(1, state)
            r.stage1_done = True
            r.head.load_state_dict(r.best_head)
            if r.proxies is not None and r.best_proxies is not None:
                r.proxies.load_state_dict(r.best_proxies)
            if r.cfg.stage2_epochs > 0:
                _copy_checkpoint(out, out / "stage1")
            r.bad_epochs = 0
            r.save_state(2, None, None)
            state = None
        if r.cfg.stage2_epochs > 0:
            r.run_stage(2, state)
    except KeyboardInterrupt:
        log.warning(_stopped_message(r, out, "interrupted"))
        raise
    except Exception:
        if (out / CHECKPOINT_CARD).exists():
            log.error(_stopped_message(r, out, "failed"))
        raise
    r.timings["total_seconds"] = round(r.elapsed(), 1)
    card = json.loads((out / CHECKPOINT_CARD).read_text())
    card.update(history=r.history, timings=r.timings, updated=_now())  # the best weights, the full history
    _atomic_write(out / CHECKPOINT_CARD, lambda p: p.write_text(json.dumps(card, indent=2, default=str) + "\n"))
    st = torch.load(out / STATE, map_location="cpu", weights_only=True)
    st["done"] = True
    _atomic_write(out / STATE, lambda p: torch.save(st, p))
    if not cache_dir and not keep_cache:
        shutil.rmtree(out / "cache", ignore_errors=True)
    b = r.best
    log.info(
        "best: stage %s epoch %s, R@1 %.4f MAP@R %.4f; checkpoint %s (%.0f s)",
        b["stage"], b["epoch"], b["recall@1"], b["map@r"], out, r.timings["total_seconds"],
    )  # fmt: skip
    stage1 = out / "stage1" if (out / "stage1" / CHECKPOINT_CARD).exists() else None
    return FinetuneResult(path=out, history=r.history, best=r.best, card=card, stage1_path=stage1)


def _restore(r: Run, state: dict) -> None:
    r.model.load_state_dict(state["model"])
    r.head.load_state_dict(state["head"])
    r.best_head = state["best_head"]
    r.best_proxies = state.get("best_proxies")
    if r.proxies is not None and state.get("proxies") is not None:
        r.proxies.load_state_dict(state["proxies"])
    r.epoch = {int(k): int(v) for k, v in state["epoch"].items()}
    r.stage1_done = bool(state["stage1_done"])
    r.bad_epochs = int(state["bad_epochs"])
    r.history = json.loads(state["history"])
    r.best = json.loads(state["best"])
    r.timings.update({k: v for k, v in json.loads(state["timings"]).items() if k.startswith("stage")})
    r.elapsed_before = float(state["elapsed"])
    r.stage = int(state["stage"])
    log.info(
        "resuming %s: stage %d after epoch %d (best MAP@R %.4f)",
        r.out, r.stage, r.epoch.get(r.stage, 0), r.best.get("map@r", float("nan")),
    )  # fmt: skip


def _copy_checkpoint(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CHECKPOINT_CARD):
        _atomic_write(dst / name, lambda p, name=name: shutil.copyfile(src / name, p))


def _stopped_message(r: Run, out: Path, what: str) -> str:
    if not r.best:
        return f"{what} before the first checkpoint; `--resume` starts again (cached features are kept)"
    b = r.best
    return (
        f"{what}: {out} holds the best checkpoint so far (stage {b['stage']} epoch {b['epoch']}, "
        f"MAP@R {b['map@r']:.4f}); continue with --resume"
    )
