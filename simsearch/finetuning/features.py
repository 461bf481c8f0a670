"""The frozen part's outputs for every training and validation image, from the feature cache (computed once).

Images that cannot be read are dropped from the training data here (with a warning), before anything trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .cache import FeatureCache, file_key
from .data import TrainingData, check_sizes

log = logging.getLogger("simsearch")


@dataclass
class Features:
    """Cached features as tensors: ``p`` pooled frozen features, ``h`` prefix outputs (None when uncut or when
    stage 2 does not run); one tensor per cached view for training, view 0 for validation."""

    train_p: list[torch.Tensor]
    train_h: list[torch.Tensor] | None
    val_p: torch.Tensor
    val_h: torch.Tensor | None
    train_pos: dict[int, int]  # image index → row in the training tensors

    @property
    def dim(self) -> int:
        return int(self.train_p[0].shape[1])


def cache_features(
    fcache: FeatureCache,
    data: TrainingData,
    *,
    model: Any,
    data_config: dict,
    views: int,
    aug: dict,
    batch_size: int,
    workers: int,
    precision: str,
    progress: bool,
    load_h: bool,
) -> Features:
    """Features of ``data``'s images (view 0 for all, augmented views 1.. for training images); unreadable images
    are removed from ``data`` (which is checked again)."""
    paths = data.paths
    keys = [file_key(p) for p in paths]
    every = np.concatenate([data.train, data.val])
    common: dict[str, Any] = dict(
        model=model, data_config=data_config, batch_size=batch_size, workers=workers, precision=precision,
        progress=progress, load_h=load_h,
    )  # fmt: skip
    h0, p0, failed = fcache.features(
        [paths[i] for i in every], [keys[i] for i in every], view=0, desc="caching features", **common
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
        if data.kind == "classes":
            check_sizes(data.groups, data.train, data.val, data.group_names)
    else:
        sel_t = list(range(len(data.train)))
        sel_v = list(range(len(data.train), len(every)))
    train_p = [torch.from_numpy(p0[sel_t])]
    train_h = [torch.from_numpy(h0[sel_t])] if h0 is not None else None
    for v in range(1, views):
        h, p, _ = fcache.features(
            [paths[i] for i in data.train], [keys[i] for i in data.train], view=v, aug=aug,
            desc=f"caching augmented view {v}/{views - 1}", **common,
        )  # fmt: skip
        train_p.append(torch.from_numpy(p))
        if train_h is not None and h is not None:
            train_h.append(torch.from_numpy(h))
    return Features(
        train_p=train_p,
        train_h=train_h,
        val_p=torch.from_numpy(p0[sel_v]),
        val_h=torch.from_numpy(h0[sel_v]) if h0 is not None else None,
        train_pos={int(i): j for j, i in enumerate(data.train)},
    )
