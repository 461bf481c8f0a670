"""Fine-tuning a backbone on labelled images or pairs (issue 6). See :func:`finetune`.

Importing this package is cheap: the training stack (torch, timm) is imported when :func:`finetune` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..backbones import DEFAULT_BACKBONE


@dataclass
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


STAGE2_IMAGES = 80_000  # images the default stage 2 trains on (about 7 minutes on 2 cores with bf16)
STAGE2_EPOCHS = (2, 16)  # the range the default number of stage 2 epochs is kept in


def default_stage2_epochs(images_per_epoch: int) -> int:
    """Stage 2 epochs when none are given: about :data:`STAGE2_IMAGES` images, within :data:`STAGE2_EPOCHS`."""
    lo, hi = STAGE2_EPOCHS
    return int(min(hi, max(lo, round(STAGE2_IMAGES / max(1, images_per_epoch)))))


@dataclass
class FinetuneResult:
    """Where the checkpoint is and how validation went (``history``: one dict per evaluated epoch)."""

    path: Path
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    card: dict = field(default_factory=dict)
    stage1_path: Path | None = None

    def __iter__(self):  # path, history = simsearch.finetune(...)
        return iter((self.path, self.history))


def finetune(
    data=None,
    *,
    out,
    pairs=None,
    labels=None,
    root=None,
    val=None,
    exclude_labels=(),
    classes: str = "all",
    resume: bool = False,
    cache_dir=None,
    keep_cache: bool = False,
    progress: bool = False,
    **config,
) -> FinetuneResult:
    """Fine-tune a backbone for retrieval and write a checkpoint directory usable as ``--backbone PATH``.

    Training data, exactly one of: ``data`` (a folder of class folders), ``labels`` (CSV ``path,label[,split]``)
    or ``pairs`` (CSV ``left,right,label[,split]``, label 1 similar / 0 dissimilar); CSV paths are relative to
    ``root`` (default: the CSV's folder). Rows with ``split=val`` are the validation set, rows of other splits
    (e.g. ``test``) are left out; without them ``val`` (a labels CSV or class folder) or an automatic hold-out
    (``holdout``: unseen ``classes`` or ``images``) is used. ``exclude_labels`` and ``classes``
    (``all``/``first-half``/``second-half`` of the sorted class names) select labelled data.

    Stage 1 trains a projection head on the frozen backbone; stage 2 also trains its last ``unfreeze`` blocks.
    Every epoch is validated (Recall@1, MAP@R); the checkpoint in ``out`` is always the best so far, and
    ``out/stage1`` the best of stage 1. ``resume=True`` continues an interrupted run. Other keyword arguments
    are :class:`FinetuneConfig` fields. Returns a :class:`FinetuneResult` (``path, history = finetune(...)``).
    """
    from .train import run

    unknown = set(config) - set(FinetuneConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"finetune() got unknown settings {sorted(unknown)}")
    cfg = FinetuneConfig(**config)
    return run(
        cfg, data=data, out=out, pairs=pairs, labels=labels, root=root, val=val, exclude_labels=exclude_labels,
        classes=classes, resume=resume, cache_dir=cache_dir, keep_cache=keep_cache, progress=progress,
    )  # fmt: skip


__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]
