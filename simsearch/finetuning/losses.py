"""Metric-learning losses on L2-normalised embeddings (cosine similarity), written for masks of known relations.

``pos`` and ``neg`` are boolean ``(B, B)`` masks of pairs known to be similar / dissimilar (the diagonal is
never used), so the same losses serve class labels and pairs (where some relations are unknown).

- ``multi_similarity``: Wang et al., "Multi-Similarity Loss with General Pair Weighting" (CVPR 2019), with its
  hard-pair mining.
- ``contrastive``: Hadsell et al. (2006) on cosine similarity with margins, averaged over non-zero terms.
- ``proxy_anchor``: Kim et al., "Proxy Anchor Loss for Deep Metric Learning" (CVPR 2020); classes only.
- ``similarity_drift``: mean squared change of the batch's cosine-similarity matrix relative to the frozen
  backbone's (relational distillation), which keeps the embedding close to what the backbone knew.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

LOSSES = ("multi_similarity", "contrastive", "proxy_anchor")


def _offdiag(mask: torch.Tensor) -> torch.Tensor:
    return mask & ~torch.eye(len(mask), dtype=torch.bool, device=mask.device)


def _masked_lse(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(1 + sum over mask of exp(x)) per row, stably."""
    x = x.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros(len(x), 1, dtype=x.dtype, device=x.device)
    return torch.logsumexp(torch.cat([zeros, x], dim=1), dim=1)


def multi_similarity(
    emb: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
) -> torch.Tensor:
    sim = emb @ emb.T
    pos, neg = _offdiag(pos), _offdiag(neg)
    with torch.no_grad():
        min_pos = sim.masked_fill(~pos, float("inf")).min(dim=1, keepdim=True).values
        max_neg = sim.masked_fill(~neg, float("-inf")).max(dim=1, keepdim=True).values
        hard_neg = neg & (sim + epsilon > min_pos)
        hard_pos = pos & (sim - epsilon < max_neg)
    pos_term = _masked_lse(-alpha * (sim - base), hard_pos) / alpha
    neg_term = _masked_lse(beta * (sim - base), hard_neg) / beta
    active = hard_pos.any(1) | hard_neg.any(1)
    if not active.any():
        return sim.sum() * 0.0
    return (pos_term + neg_term)[active].mean()


def contrastive(
    emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, *, pos_margin: float = 0.9, neg_margin: float = 0.4
) -> torch.Tensor:
    sim = emb @ emb.T
    pos, neg = _offdiag(pos), _offdiag(neg)
    terms = torch.cat([F.relu(pos_margin - sim[pos]), F.relu(sim[neg] - neg_margin)])
    nonzero = terms > 0
    if not nonzero.any():
        return sim.sum() * 0.0
    return terms[nonzero].mean()


class ProxyAnchor(nn.Module):
    """One learnable proxy per class; pulls each class's embeddings to its proxy, pushes the others away."""

    def __init__(self, num_classes: int, dim: int, *, alpha: float = 32.0, delta: float = 0.1, init=None):
        super().__init__()
        proxies = torch.randn(num_classes, dim) if init is None else init.clone().float()
        if init is None:
            nn.init.kaiming_normal_(proxies, mode="fan_out")
        self.proxies = nn.Parameter(proxies)
        self.alpha, self.delta = alpha, delta

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = emb @ F.normalize(self.proxies, dim=1).T  # (B, C)
        onehot = F.one_hot(labels, len(self.proxies)).bool()
        pos_lse = _masked_lse((-self.alpha * (cos - self.delta)).T, onehot.T)  # per proxy
        neg_lse = _masked_lse((self.alpha * (cos + self.delta)).T, ~onehot.T)
        with_pos = onehot.any(0)
        pos_term = pos_lse[with_pos].sum() / with_pos.sum().clamp(min=1)
        neg_term = neg_lse.sum() / len(self.proxies)
        return pos_term + neg_term


def similarity_drift(emb: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the cosine-similarity matrices of ``emb`` and ``frozen`` (unit rows)."""
    s, s0 = emb @ emb.T, frozen @ frozen.T
    off = ~torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    return ((s - s0)[off] ** 2).mean()
