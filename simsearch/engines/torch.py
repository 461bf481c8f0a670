"""The torch engine: the reference (and what fine-tuning uses); ``channels_last``, bf16 autocast when asked."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..backbones import Backbone, l2_normalize
from ..system import cpu_count, cpu_has_bf16
from .protocol import Batch

log = logging.getLogger("simsearch")

DEFAULT_BATCH = 32


def limit_torch_threads() -> None:
    """Never more torch threads than usable CPUs (torch counts the host's cores inside containers)."""
    import torch

    n = cpu_count()
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)


class TorchEngine:
    """Runs a backbone with PyTorch on the CPU (``channels_last``; ``bf16`` autocast where asked).

    ``precision`` ``auto`` means bf16 where the CPU computes it natively (AVX-512 BF16 or AMX), else fp32. Note
    that the backbone's module is converted to ``channels_last`` in place (same weights, same results).
    """

    name = "torch"

    def __init__(
        self, backbone: Backbone, precision: str = "fp32", batch_size: int | None = None, *, channels_last: bool = True
    ):
        import torch

        if precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.backbone = backbone
        self.precision = ("bf16" if cpu_has_bf16() else "fp32") if precision == "auto" else precision
        if self.precision == "bf16" and not cpu_has_bf16():
            log.warning("this CPU has no native bf16 (AVX-512 BF16/AMX): torch bf16 will be much slower than fp32")
        self.batch_size = int(batch_size or DEFAULT_BATCH)
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model: Any = backbone.model.to(memory_format=self.memory_format)
        limit_torch_threads()

    def settings(self) -> dict[str, str]:
        return {"engine": self.name, "precision": self.precision}

    def __call__(self, batch: Batch) -> np.ndarray:
        import torch

        if not isinstance(batch, torch.Tensor):
            batch = torch.from_numpy(np.asarray(batch, np.float32))
        if len(batch) == 0:
            return np.zeros((0, self.backbone.dim), np.float32)
        with torch.inference_mode():
            x = batch.contiguous(memory_format=self.memory_format)
            if self.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = self.model(x)
            else:
                y = self.model(x)
            return l2_normalize(y.float().numpy())

    def __repr__(self) -> str:
        return f"<TorchEngine {self.backbone.name} {self.precision} batch={self.batch_size}>"


def create(backbone: Backbone, precision: str, batch_size: int | None, **options: Any) -> TorchEngine:
    """The registry's factory (``options``: ``channels_last``)."""
    return TorchEngine(backbone, precision, batch_size, **options)
