"""The fine-tuning run: check data, cache frozen outputs, stage 1 (head), stage 2 (last blocks), checkpoints.

Files are described in :mod:`.checkpoint`; the training loop is :class:`.trainer.Run`. This module is what
:func:`simsearch.finetune` loads (it imports torch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from ..backbones import CHECKPOINT_CARD
from ..config.finetune import FinetuneConfig
from ..errors import SimsearchError
from . import checkpoint
from .data import load_training_data
from .result import FinetuneResult
from .trainer import Run, loss_for

log = logging.getLogger("simsearch")

__all__ = ["Run", "run"]


def _config_for_resume(cfg: FinetuneConfig, state: dict) -> FinetuneConfig:
    """The asked settings, with those a resumed run must keep taken from its saved state."""
    saved = FinetuneConfig(**json.loads(state["config"]))
    changed = [k for k in checkpoint.FIXED_ON_RESUME if getattr(saved, k) != getattr(cfg, k)]
    if not changed:
        return cfg
    log.warning("resuming with the run's saved settings for %s", ", ".join(changed))
    return dataclasses.replace(cfg, **{k: getattr(saved, k) for k in checkpoint.FIXED_ON_RESUME})


def run(cfg: FinetuneConfig, *, data, out, pairs, labels, root, val, exclude_labels, classes, resume, cache_dir,
        keep_cache, progress) -> FinetuneResult:  # fmt: skip
    t0 = time.perf_counter()
    out = Path(out).expanduser()
    state = checkpoint.check_out(out, resume)
    if state is not None and state.get("done"):
        log.info("%s: the run is already complete", out)
        card = checkpoint.read_card(out)
        return FinetuneResult(out, card["history"], card["best"], card, checkpoint.stage1_path(out))
    if state is not None:
        cfg = _config_for_resume(cfg, state)
    cfg.check()
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
    r = Run(cfg, training, out, progress, data_digest=digest, created=state["created"] if state else checkpoint.now())
    r.timings["data_seconds"] = round(time.perf_counter() - t0, 1)
    try:
        r.setup(cache_root)
        if state is not None:
            r.restore(state)
        else:
            r.stage = 1
            r.record(0, 0, None, None, 0.0)  # the frozen starting point: the checkpoint is never worse than it
            r.save_state(1, None, None)
        if not r.stage1_done:
            r.run_stage(1, state)
            r.stage1_done = True
            if r.best_head is not None:
                r.head.load_state_dict(r.best_head)
            if r.proxies is not None and r.best_proxies is not None:
                r.proxies.load_state_dict(r.best_proxies)
            if r.cfg.stage2_epochs:
                checkpoint.copy_checkpoint(out, out / checkpoint.STAGE1)
            r.bad_epochs = 0
            r.save_state(2, None, None)
            state = None
        if r.cfg.stage2_epochs:
            r.run_stage(2, state)
    except KeyboardInterrupt:
        log.warning(r.stopped_message("interrupted"))
        raise
    except Exception:
        if (out / CHECKPOINT_CARD).exists():
            log.error(r.stopped_message("failed"))
        raise
    r.timings["total_seconds"] = round(r.elapsed(), 1)
    card = checkpoint.read_card(out)
    card.update(history=r.history, timings=r.timings, updated=checkpoint.now())  # the best weights, the full history
    checkpoint.write_card(out, card)
    checkpoint.mark_done(out)
    if not cache_dir and not keep_cache:
        shutil.rmtree(out / "cache", ignore_errors=True)
    b = r.best
    log.info(
        "best: stage %s epoch %s, R@1 %.4f MAP@R %.4f; checkpoint %s (%.0f s)",
        b["stage"], b["epoch"], b["recall@1"], b["map@r"], out, r.timings["total_seconds"],
    )  # fmt: skip
    return FinetuneResult(out, r.history, r.best, card, checkpoint.stage1_path(out))
