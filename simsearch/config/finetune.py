"""Fine-tuning hyper-parameters: :class:`FinetuneConfig` is the single source of their defaults and choices.

``simsearch.finetune(**settings)``, the ``simsearch finetune`` command (its options read their defaults from
:meth:`FinetuneConfig.defaults`) and the checkpoint card (``hyperparameters``) all use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import SimsearchError
from .embedding import DEFAULT_BACKBONE

LOSSES = ("contrastive", "multi_similarity", "proxy_anchor")  # the first is the default
INITS = ("auto", "identity", "whiten")
HOLDOUTS = ("classes", "images")

STAGE2_IMAGES = 80_000  # images the default stage 2 trains on (about 7 minutes on 2 cores with bf16)
STAGE2_EPOCHS = (2, 16)  # the range the default number of stage 2 epochs is kept in


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of a fine-tuning run (all recorded in the checkpoint's card)."""

    backbone: str = DEFAULT_BACKBONE
    dim: int | None = None  # projection head output; default: the backbone's own dim (identity-initialised)
    loss: str | None = None  # contrastive (default) | multi_similarity | proxy_anchor (classes only)
    init: str = "auto"  # starting head: identity | whiten (supervised whitening) | auto (the better on validation)
    regularize: float = 1.0  # weight of the similarity-drift penalty toward the starting embedding (0: off)
    stage1_epochs: int = 30  # head only, frozen backbone
    # the last `unfreeze` blocks trained too (0: skip stage 2); None: enough epochs to see about STAGE2_IMAGES
    # training images (2 to 16 epochs: 16 of a 5,000-image catalogue, 2 of 20,000 pairs)
    stage2_epochs: int | None = None
    unfreeze: int = 2  # residual blocks trained in stage 2, counted from the end (with the network's head conv)
    lr: float = 1e-3  # stage 1 (head)
    stage2_lr: float = 1e-4  # stage 2 (unfrozen blocks and head)
    proxy_lr: float = 1e-2
    weight_decay: float = 1e-4
    warmup: float = 0.1  # fraction of each stage's steps spent warming up, then cosine decay
    batch_size: int = 128
    per_class: int = 4  # images per class (or similar group) in a batch
    patience: int = 5  # stage 1 early stopping (epochs without a better validation MAP@R)
    stage2_patience: int = 3
    augment: bool = True
    views: int = 2  # cached views per training image: the plain one + views-1 fixed augmentations
    cache: bool = True  # cache the frozen part's outputs (False: fresh augmentation every step, much slower)
    train_bn: bool = False  # let BatchNorm statistics of unfrozen blocks update (frozen parts always stay eval)
    holdout: str = "classes"  # automatic validation split: unseen 'classes' or held-out 'images' of each class
    val_fraction: float = 0.15
    precision: str = "auto"  # auto: bf16 autocast on CPUs with AMX/AVX512-BF16, else fp32
    batch_size_infer: int = 64
    workers: int | None = None  # DataLoader worker processes (default: one per core, at most 4)
    seed: int = 0

    @classmethod
    def defaults(cls) -> FinetuneConfig:
        """The defaults, e.g. ``FinetuneConfig.defaults().lr`` for a CLI option's default."""
        return cls()

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> FinetuneConfig:
        """From keyword settings; unknown names raise ``TypeError`` (as a misspelt keyword argument would)."""
        unknown = set(settings) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"finetune() got unknown settings {sorted(unknown)}")
        return cls(**settings)

    def check(self) -> None:
        """Refuse settings a run cannot use (checked when the run starts, after a resumed run's are restored)."""
        if self.stage1_epochs < 0 or (self.stage2_epochs or 0) < 0 or self.batch_size < 4 or self.views < 1:
            raise SimsearchError("epochs must be >= 0, batch_size >= 4 and views >= 1")


def default_stage2_epochs(images_per_epoch: int) -> int:
    """Stage 2 epochs when none are given: about :data:`STAGE2_IMAGES` images, within :data:`STAGE2_EPOCHS`."""
    lo, hi = STAGE2_EPOCHS
    return int(min(hi, max(lo, round(STAGE2_IMAGES / max(1, images_per_epoch)))))
