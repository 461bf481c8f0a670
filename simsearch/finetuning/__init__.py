"""Fine-tuning a backbone on labelled images or pairs (issue 6). See :func:`finetune`.

Importing this package is cheap: the training stack (torch, timm) is imported when :func:`finetune` runs.

Modules: :mod:`.data` and :mod:`.readers` (training data, checked before any model loads), :mod:`.model` (the
network cut into a frozen prefix and a trainable rest), :mod:`.cache` and :mod:`.features` (cached frozen
outputs), :mod:`.heads` (starting projections), :mod:`.batches`, :mod:`.losses`, :mod:`.trainer` (the training
loop), :mod:`.checkpoint` (the run's files) and :mod:`.train` (the run). Settings: :mod:`simsearch.config.finetune`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.finetune import STAGE2_EPOCHS, STAGE2_IMAGES, FinetuneConfig, default_stage2_epochs
from .result import FinetuneResult


def finetune(
    data: str | Path | None = None,
    *,
    out: str | Path,
    pairs: str | Path | None = None,
    labels: str | Path | None = None,
    root: str | Path | None = None,
    val: str | Path | None = None,
    exclude_labels: Any = (),
    classes: str = "all",
    resume: bool = False,
    cache_dir: str | Path | None = None,
    keep_cache: bool = False,
    progress: bool = False,
    **config: Any,
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
    cfg = FinetuneConfig.from_settings(config)
    # The one deliberate late import: the training stack (torch, timm) loads only when a run starts.
    from .train import run

    return run(
        cfg, data=data, out=out, pairs=pairs, labels=labels, root=root, val=val, exclude_labels=exclude_labels,
        classes=classes, resume=resume, cache_dir=cache_dir, keep_cache=keep_cache, progress=progress,
    )  # fmt: skip


__all__ = [
    "STAGE2_EPOCHS",
    "STAGE2_IMAGES",
    "FinetuneConfig",
    "FinetuneResult",
    "default_stage2_epochs",
    "finetune",
]
