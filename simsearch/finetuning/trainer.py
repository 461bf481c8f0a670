"""One fine-tuning run's training loop: set-up (model cut, cached features, starting head), epochs of a stage,
validation after each, checkpoint of the best, state for resuming. :func:`simsearch.finetuning.train.run` drives it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from .._version import __version__
from ..backbones import create_backbone
from ..config.finetune import FinetuneConfig, default_stage2_epochs
from ..errors import SimsearchError
from ..evaluate import retrieval_metrics
from ..progress import progress_bar
from ..system import cpu_count
from . import checkpoint
from .batches import epoch_batches, gather
from .cache import FeatureCache, ImageDataset, augment_transform
from .data import TrainingData
from .features import Features, cache_features
from .heads import class_means, head_candidates
from .losses import LOSSES, ProxyAnchor, contrastive, multi_similarity, similarity_drift
from .model import Prefix, Suffix, autocast, cut_point, lr_factor, resolve_precision, set_bn_modes, set_trainable

log = logging.getLogger("simsearch")

MAX_LOADER_WORKERS = 4
AUGMENTATION = {"scale": (0.35, 1.0), "jitter": 0.2}  # random resized crop scale, colour jitter


def default_workers() -> int:
    """DataLoader worker processes: one per usable CPU, at most :data:`MAX_LOADER_WORKERS`."""
    return max(0, min(MAX_LOADER_WORKERS, cpu_count()))


def loss_for(cfg: FinetuneConfig, data: TrainingData) -> str:
    # contrastive by default, for classes too: on Caltech-101 (same classes, new images; 16 stage 2 epochs) it gave
    # R@1 0.934 / MAP@R 0.852 against proxy_anchor's 0.928 / 0.845 and multi_similarity's 0.928 / 0.828
    name = cfg.loss or "contrastive"
    if name not in LOSSES:
        raise SimsearchError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    if name == "proxy_anchor" and data.kind == "pairs":
        raise SimsearchError("proxy_anchor needs class labels; for pairs use contrastive or multi_similarity")
    return name


class Run:
    """The state of a run: model, head, cached features, history and best result so far."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        data: TrainingData,
        out: Path,
        progress: bool,
        *,
        data_digest: str,
        created: str,
        elapsed_before: float = 0.0,
    ):
        self.cfg, self.data, self.out, self.progress = cfg, data, out, progress
        self.data_digest, self.created = data_digest, created
        self.precision = resolve_precision(cfg.precision)
        self.workers = default_workers() if cfg.workers is None else int(cfg.workers)
        self.history: list[dict] = []
        self.best: dict = {}
        self.timings: dict = {}
        self.stage1_done = False
        self.stage = 1
        self.epoch = {1: 0, 2: 0}
        self.bad_epochs = 0
        self.t_start = time.perf_counter()
        self.elapsed_before = elapsed_before
        self.best_head: dict | None = None
        self.best_proxies: dict | None = None
        self.proxies: ProxyAnchor | None = None
        self.init_choice: dict = {}
        self._frozen_model: Any = None  # an untouched copy, for images decoded afresh (no cache)

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
        self.aug: dict[str, Any] = {"seed": cfg.seed, **AUGMENTATION}
        fcache = FeatureCache(
            cache_root, base_sha=base.weights_sha256, arch=base.arch, cut=self.cut, data_config=base.data_config,
            precision=self.precision,
        )  # fmt: skip
        self.features: Features = cache_features(
            fcache, data, model=self.model, data_config=base.data_config, views=self.n_views, aug=self.aug,
            batch_size=cfg.batch_size_infer, workers=self.workers, precision=self.precision, progress=self.progress,
            load_h=cfg.stage2_epochs != 0,
        )  # fmt: skip
        self.dim_in = self.features.dim
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
        if self.loss_name == "proxy_anchor":
            init = class_means(self.head, self.features.train_p[0], self.train_groups, self.dim_out)
            self.proxies = ProxyAnchor(int(inverse.max()) + 1, self.dim_out, init=init)
        self.best_head = copy.deepcopy(self.head.state_dict())
        self.best_proxies = None if self.proxies is None else copy.deepcopy(self.proxies.state_dict())
        self.timings["cache_seconds"] = round(time.perf_counter() - t0, 1)
        log.info(
            "training on %d images (%d groups), validating on %d images (%d groups, %s hold-out); "
            "%d cached view(s), loss %s, precision %s",
            len(data.train), len(set(data.groups[data.train].tolist())), len(data.val),
            len(set(data.groups[data.val].tolist())), data.source.get("validation"), self.n_views,
            self.loss_name, self.precision,
        )  # fmt: skip

    def _initial_head(self) -> torch.nn.Module:
        """The starting projection, chosen on the validation set among the identity (the frozen embedding) and
        supervised whitening of the training groups at a few shrinkages (``init``; see :mod:`.heads`)."""
        candidates = head_candidates(self.cfg.init, self.features.train_p[0], self.train_groups, self.dim_out)
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

    def batches(self, stage: int, epoch: int) -> list[np.ndarray]:
        """Training positions (into ``data.train``) of each batch of an epoch, deterministic per epoch."""
        cfg = self.cfg
        return epoch_batches(
            self.data, self.features.train_pos, seed=cfg.seed, batch_size=cfg.batch_size, per_class=cfg.per_class,
            stage=stage, epoch=epoch,
        )  # fmt: skip

    # -- forward
    def embed_val(self) -> np.ndarray:
        """Normalised embeddings of the validation images with the current model (eval mode, view 0)."""
        self.head.eval()
        set_bn_modes(self.model, self.suffix, self.cfg.train_bn, training=False)
        out = []
        bs = self.cfg.batch_size_infer
        val_p, val_h = self.features.val_p, self.features.val_h
        with torch.inference_mode(), autocast(self.precision):
            for s in range(0, len(val_p), bs):
                if self.stage == 2 and self.cut is not None and val_h is not None:
                    x = self.suffix(val_h[s : s + bs].float().contiguous(memory_format=torch.channels_last))
                elif self.stage == 2:
                    x = self._online_val_features(s, bs)
                else:
                    x = val_p[s : s + bs]
                out.append(F.normalize(self.head(x.float()).float(), dim=1).numpy())
        return np.concatenate(out)

    def _online_val_features(self, s: int, bs: int) -> torch.Tensor:
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
        if self.proxies is not None:
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
    def make_optimizer(self, stage: int, steps: int) -> tuple[Any, Any]:
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

    def train_epoch(self, stage: int, epoch: int, opt: Any, sched: Any, bar_desc: str) -> float:
        batches = self.batches(stage, epoch)
        rng = np.random.default_rng([self.cfg.seed, stage, epoch, 1])
        self.head.train()
        set_bn_modes(self.model, self.suffix, self.cfg.train_bn, training=(stage == 2))
        online = stage == 2 and (self.cut is None or not self.use_cache)
        online_iter = self._online_batches(batches, epoch) if online or (stage == 1 and not self.use_cache) else None
        losses: list[float] = []
        bar = progress_bar(len(batches), bar_desc, unit="batch", enabled=self.progress, dynamic_ncols=True)
        try:
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
        finally:
            bar.close()
        return float(np.mean(losses)) if losses else float("nan")

    def _cached_batch(self, stage: int, b: np.ndarray, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(b)
        frozen = gather(self.features.train_p, idx, views)
        if stage == 1 or self.features.train_h is None:
            return frozen, frozen
        h = gather(self.features.train_h, idx, views).float()
        return self.suffix(h.contiguous(memory_format=torch.channels_last)), frozen

    def _online_batches(self, batches: list[np.ndarray], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Images decoded and augmented afresh for every batch; frozen features from an untouched copy."""
        from timm.data import create_transform

        cfg, data = self.cfg, self.data
        if cfg.augment:
            tf = augment_transform(self.base.data_config, scale=self.aug["scale"], jitter=self.aug["jitter"])
        else:
            tf = create_transform(**self.base.data_config, is_training=False)
        paths = [data.paths[i] for i in data.train]
        ds = ImageDataset(paths, tf, self.base.data_config["input_size"])
        if self._frozen_model is None:
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
            "format": checkpoint.CARD_FORMAT,
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
            "updated": checkpoint.now(),
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
            checkpoint.save_checkpoint(self.out, self.model, self.head, self.card())
        what = "frozen start" if stage == 0 else f"stage {stage} epoch {epoch}"
        log.info(
            "%s: %sR@1 %.4f  MAP@R %.4f%s",
            what, "" if loss is None else f"loss {loss:.4f}  ", metrics["recall@1"], metrics["map@r"],
            "  (best, saved)" if improved else "",
        )  # fmt: skip
        return improved

    def save_state(self, stage: int, opt: Any, sched: Any) -> None:
        checkpoint.save_state(
            self.out,
            {
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
            },
        )

    def restore(self, state: dict) -> None:
        """Continue from a saved state (after :meth:`setup`)."""
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.best_head = state["best_head"]
        self.best_proxies = state.get("best_proxies")
        if self.proxies is not None and state.get("proxies") is not None:
            self.proxies.load_state_dict(state["proxies"])
        self.epoch = {int(k): int(v) for k, v in state["epoch"].items()}
        self.stage1_done = bool(state["stage1_done"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = json.loads(state["history"])
        self.best = json.loads(state["best"])
        self.timings.update({k: v for k, v in json.loads(state["timings"]).items() if k.startswith("stage")})
        self.elapsed_before = float(state["elapsed"])
        self.stage = int(state["stage"])
        log.info(
            "resuming %s: stage %d after epoch %d (best MAP@R %.4f)",
            self.out, self.stage, self.epoch.get(self.stage, 0), self.best.get("map@r", float("nan")),
        )  # fmt: skip

    def run_stage(self, stage: int, state: dict | None) -> None:
        cfg = self.cfg
        epochs = cfg.stage1_epochs if stage == 1 else int(cfg.stage2_epochs or 0)
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

    def stopped_message(self, what: str) -> str:
        if not self.best:
            return f"{what} before the first checkpoint; `--resume` starts again (cached features are kept)"
        b = self.best
        return (
            f"{what}: {self.out} holds the best checkpoint so far (stage {b['stage']} epoch {b['epoch']}, "
            f"MAP@R {b['map@r']:.4f}); continue with --resume"
        )
