"""Starting projection heads: the identity (or PCA) and supervised whitening of the training groups.

Whitening by the within-group covariance (as in Radenovic et al., "Fine-tuning CNN image retrieval with no human
annotation", 2018, learned whitening) damps the directions in which images of the same class differ; it is
closed-form and carries over to unseen classes better than a trained head. The run picks among the candidates on
the validation set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from ..errors import SimsearchError
from .model import identity_head, pca_projection

WHITENING_SHRINKAGES = (0.1, 1.0, 10.0)


def head_candidates(init: str, features: torch.Tensor, groups: torch.Tensor, dim_out: int) -> dict[str, nn.Module]:
    """Named starting heads for ``init`` (auto | identity | whiten) over frozen ``features`` of the training
    images and their ``groups`` (0..n-1)."""
    dim_in = int(features.shape[1])
    start = None if dim_out == dim_in else pca_projection(features, dim_out)
    plain = "identity" if start is None else "pca"
    candidates = {plain: identity_head(dim_in, dim_out, start)}
    if init in ("auto", "whiten"):
        for alpha in WHITENING_SHRINKAGES:
            candidates[f"whiten({alpha:g})"] = whitening_head(features, groups, alpha, dim_out)
    elif init != "identity":
        raise SimsearchError(f"init must be auto, identity or whiten, not {init!r}")
    if init == "whiten":
        candidates.pop(plain)
    return candidates


def whitening_head(features: torch.Tensor, groups: torch.Tensor, alpha: float, dim_out: int) -> nn.Module:
    """Supervised whitening with shrinkage ``alpha`` (times the mean eigenvalue), magnitudes kept."""
    x = features.double()
    dim_in = int(x.shape[1])
    n_groups = int(groups.max()) + 1
    counts = torch.bincount(groups, minlength=n_groups).double()
    means = torch.zeros(n_groups, dim_in, dtype=torch.float64).index_add_(0, groups, x) / counts.clamp(min=1)[:, None]
    multi = counts[groups] >= 2  # singletons say nothing about how a group varies
    xc = (x - means[groups])[multi]
    cov = xc.T @ xc / max(1, len(xc))
    w, v = torch.linalg.eigh(cov)
    w = w.clamp(min=0)
    white = v @ torch.diag((w + alpha * w.mean()).rsqrt()) @ v.T
    mu = x.mean(0)
    if dim_out < dim_in:  # then keep the top principal directions of the whitened features
        white = pca_projection(((x - mu) @ white.T).float(), dim_out).double() @ white
    scale = (x - mu).norm(dim=1).mean() / ((x - mu) @ white.T).norm(dim=1).mean()
    white = white * scale  # keep feature magnitudes (and so step sizes) close to the identity's
    return identity_head(dim_in, dim_out, white.float(), bias=(-(white @ mu)).float())


def class_means(head: nn.Module, features: torch.Tensor, groups: torch.Tensor, dim_out: int) -> torch.Tensor:
    """Proxies start at the class means of the initial embedding (unseen classes stay random)."""
    with torch.no_grad():
        emb = F.normalize(head(features), dim=1)
    means = torch.randn(int(groups.max()) + 1, dim_out) * 0.01
    means.index_add_(0, groups, emb)
    return means
