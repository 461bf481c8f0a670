"""Training batches: which training images go together in each step of an epoch (deterministic per epoch)."""

from __future__ import annotations

import numpy as np
import torch

from .data import TrainingData


def epoch_batches(
    data: TrainingData,
    train_pos: dict[int, int],
    *,
    seed: int,
    batch_size: int,
    per_class: int,
    stage: int,
    epoch: int,
) -> list[np.ndarray]:
    """Training positions (into ``data.train``) of each batch of an epoch.

    Pairs: ``batch_size // 2`` pairs per batch. Classes: chunks of ``per_class`` images of one class (at least two,
    so every image has a positive), shuffled and packed until a batch holds ``batch_size`` images.
    """
    rng = np.random.default_rng([seed, stage, epoch])
    bs = max(2, batch_size)
    if data.kind == "pairs":
        assert data.pairs is not None
        order = rng.permutation(len(data.pairs))
        per = max(1, bs // 2)
        out = []
        for s in range(0, len(order), per):
            chunk = data.pairs[order[s : s + per]]
            out.append(np.array([train_pos[int(i)] for i in chunk[:, :2].reshape(-1)], np.int64))
        return out
    groups = data.groups[data.train]
    m = max(2, per_class)
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
    batches, cur = [], []
    for j in order:
        cur.append(chunks[j])
        if sum(len(c) for c in cur) >= bs:
            batches.append(np.concatenate(cur))
            cur = []
    if cur and sum(len(c) for c in cur) >= 4:
        batches.append(np.concatenate(cur))
    return batches


def gather(per_view: list[torch.Tensor], idx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` taken from the view given for each row."""
    out = per_view[0].new_empty((len(idx), *per_view[0].shape[1:]))
    for v in views.unique().tolist():
        sel = views == v
        out[sel] = per_view[v][idx[sel]]
    return out
