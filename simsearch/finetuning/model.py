"""The network being fine-tuned, cut in two: a frozen prefix (whose outputs can be cached) and a trainable rest.

For timm's EfficientNet / MobileNetV3 families (all bundled backbones) the cut is between blocks (the
residual blocks of all stages, in order): ``prefix(x)`` = stem + blocks ``[:k]``, ``suffix(h)`` = blocks
``[k:]`` + the network's own head up to pooled features, so ``suffix(prefix(x)) == model(x)``. Other architectures are cut at the input (``k=None``): stage 2
then runs the whole network on images and unfreezes its last parameter groups (timm's ``group_matcher``).
"""

from __future__ import annotations

import contextlib
import math
import re

import torch
from torch import nn

from ..system import cpu_has_bf16


def _family(model) -> str | None:
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3

    if isinstance(model, EfficientNet):
        return "efficientnet"
    if isinstance(model, MobileNetV3):
        return "mobilenetv3"
    return None


def flat_blocks(model) -> list[nn.Module]:
    """The residual blocks of all stages, in order."""
    return [b for stage in model.blocks for b in (stage if isinstance(stage, nn.Sequential) else [stage])]


def num_blocks(model) -> int | None:
    """Number of blocks the model can be cut between, or None when it cannot be cut."""
    return len(flat_blocks(model)) if _family(model) else None


def cut_point(model, unfreeze: int) -> int | None:
    """Index ``k`` of the first trainable block when the last ``unfreeze`` blocks are trained (None: uncuttable)."""
    n = num_blocks(model)
    if n is None:
        return None
    return max(0, n - max(0, int(unfreeze)))


class Prefix(nn.Module):
    """Stem + ``blocks[:k]`` (always frozen, eval mode). With ``k=None``: the identity (images pass through)."""

    def __init__(self, model, k: int | None):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        if self.k is None:
            return x
        m = self.model
        x = m.bn1(m.conv_stem(x))
        for block in flat_blocks(m)[: self.k]:
            x = block(x)
        return x


class Suffix(nn.Module):
    """The rest of the network after the cut, ending in pooled features (the backbone's output)."""

    def __init__(self, model, k: int | None):
        super().__init__()
        self.model, self.k = model, k
        self.family = _family(model)

    def forward(self, h):
        m = self.model
        if self.k is None:
            return m(h)
        for block in flat_blocks(m)[self.k :]:
            h = block(h)
        if self.family == "efficientnet":
            h = m.bn2(m.conv_head(h))
        return m.forward_head(h)

    def trainable_modules(self) -> list[nn.Module]:
        m = self.model
        if self.k is None:
            return [m]
        mods = flat_blocks(m)[self.k :]
        for name in ("conv_head", "bn2", "norm_head"):
            if isinstance(getattr(m, name, None), nn.Module):
                mods.append(getattr(m, name))
        return mods


def last_group_params(model, n: int) -> list[str]:
    """Names of the parameters in the last ``n`` coarse parameter groups of a timm model (for uncuttable models)."""
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = sorted((k, v) for k, v in groups.items() if not re.match(r"^(head|fc|classifier)", ",".join(v)))
    names: list[str] = []
    for _, params in ordered[-n:] if n > 0 else []:
        names += params
    return names


def set_trainable(model, suffix: Suffix, unfreeze: int) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze what stage 2 trains; returns those parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    if suffix.k is not None:
        params = [p for mod in suffix.trainable_modules() for p in mod.parameters()]
    else:
        wanted = set(last_group_params(model, unfreeze))
        params = [p for name, p in model.named_parameters() if name in wanted]
    for p in params:
        p.requires_grad_(True)
    return params


def set_bn_modes(model, suffix: Suffix, train_bn: bool, training: bool) -> None:
    """Everything in eval mode, except, while training with ``train_bn``, the BatchNorms stage 2 trains."""
    model.eval()
    if training and train_bn:
        trainable = suffix.trainable_modules() if suffix.k is not None else []
        for mod in trainable:
            for sub in mod.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in sub.parameters()):
                    sub.train()


def identity_head(dim_in: int, dim_out: int, init: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    """A Linear projection initialised so the fine-tuned embedding starts as the frozen one.

    ``dim_out == dim_in``: the identity. Otherwise ``init`` (``dim_out x dim_in``, e.g. the top principal
    directions of the training features) or a random orthogonal projection.
    """
    head = nn.Linear(dim_in, dim_out)
    with torch.no_grad():
        if init is not None:
            head.weight.copy_(init)
        elif dim_out == dim_in:
            head.weight.copy_(torch.eye(dim_in))
        else:
            nn.init.orthogonal_(head.weight)
        head.bias.copy_(bias if bias is not None else torch.zeros(dim_out))
    return head


def pca_projection(features: torch.Tensor, dim_out: int) -> torch.Tensor:
    """Top ``dim_out`` principal directions of ``features`` (rows), as a ``dim_out x dim`` matrix."""
    x = features.float()
    x = x - x.mean(0, keepdim=True)
    k = min(dim_out, x.shape[0], x.shape[1])
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    w = v[:k]
    if k < dim_out:  # fewer samples than dims: complete with random orthogonal rows
        extra = torch.empty(dim_out - k, x.shape[1])
        nn.init.orthogonal_(extra)
        w = torch.cat([w, extra])
    return w


def resolve_precision(precision: str) -> str:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 1% at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
