"""A fine-tuning run's files: the checkpoint (weights + card), its stage 1 copy and the resumable state.

Output directory::

    backbone.json        card: arch, data_config, head (what load_checkpoint needs) + base backbone, data digest,
                         hyper-parameters, validation history, best epoch, timings
    model.safetensors    weights of the best epoch so far ("body.*" timm model, "head.*" projection)
    stage1/              the best checkpoint of stage 1 (head only), same layout
    train_state.pt       state of the last finished epoch, for --resume (plain tensors, loads with weights_only)
    cache/               cached frozen outputs (removed at the end unless kept or given as cache_dir)

Every file is replaced atomically, so an interrupt or a crash leaves the last good checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes, atomic_write_text
from ..backbones import CHECKPOINT_CARD
from ..errors import SimsearchError

log = logging.getLogger("simsearch")

WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
STAGE1 = "stage1"
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


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def save_checkpoint(out: Path, body: Any, head: Any, card: dict) -> None:
    """Write weights then card, each atomically (a reader sees the previous or the new complete file)."""
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"body.{k}": v.detach().contiguous().clone() for k, v in body.state_dict().items()}
    tensors.update({f"head.{k}": v.detach().contiguous().clone() for k, v in head.state_dict().items()})
    atomic_write_bytes(out / WEIGHTS, save(tensors, metadata={"format": "pt"}))
    write_card(out, card)


def write_card(out: Path, card: dict) -> None:
    atomic_write_text(out / CHECKPOINT_CARD, json.dumps(card, indent=2, default=str) + "\n")


def read_card(out: Path) -> dict:
    return json.loads((out / CHECKPOINT_CARD).read_text(encoding="utf-8"))


def stage1_path(out: Path) -> Path | None:
    """The stage 1 checkpoint of a run, if it wrote one."""
    return out / STAGE1 if (out / STAGE1 / CHECKPOINT_CARD).exists() else None


def copy_checkpoint(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CHECKPOINT_CARD):
        atomic_write_bytes(dst / name, (src / name).read_bytes())


def save_state(out: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out / STATE, buf.getvalue())


def load_state(out: Path) -> dict:
    return torch.load(out / STATE, map_location="cpu", weights_only=True)


def mark_done(out: Path) -> None:
    """Record in the saved state that the run finished (a later --resume then does nothing)."""
    state = load_state(out)
    state["done"] = True
    save_state(out, state)


def check_out(out: Path, resume: bool) -> dict | None:
    """The saved state to resume from, or None to start afresh; refuses to overwrite another run."""
    state_file = out / STATE
    if resume:
        if state_file.exists():
            return load_state(out)
        log.info("%s has no interrupted run to resume: starting afresh", out)
        return None
    if (out / CHECKPOINT_CARD).exists() or state_file.exists():
        raise SimsearchError(
            f"{out} already holds a fine-tuned model: continue it with --resume, or choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise SimsearchError(f"{out} exists and is not a folder")
    return None
