"""``finetune``: adapt a backbone to labelled images."""

from __future__ import annotations

import click

from ..config.embedding import PRECISIONS
from ..config.finetune import HOLDOUTS, INITS, LOSSES, STAGE2_EPOCHS, STAGE2_IMAGES, FinetuneConfig
from ..finetuning import finetune
from ._common import command, main, table

FT = FinetuneConfig.defaults()  # the option defaults


@main.command("finetune")
@click.argument("folder", required=False, type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option("--labels", "labels_csv", type=click.Path(), help="CSV path,label[,split] of labelled images.")
@click.option("--pairs", "pairs_csv", type=click.Path(), help="CSV left,right,label[,split] (1 similar, 0 not).")
@click.option("--root", type=click.Path(), help="Folder the CSV paths are relative to [default: the CSV's folder].")
@click.option("--val", type=click.Path(), help="Validation set: labels CSV or class folder [default: held out].")
@click.option("--holdout", type=click.Choice(HOLDOUTS), default=FT.holdout, show_default=True,
              help="Automatic validation split: unseen classes, or some images of every class.")  # fmt: skip
@click.option(
    "--val-fraction", default=FT.val_fraction, show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
)  # fmt: skip
@click.option("--exclude-label", multiple=True, help="Leave out images with this label; repeatable.")
@click.option("--classes", type=click.Choice(["all", "first-half", "second-half"]), default="all", show_default=True)
@click.option("--backbone", "-b", default=FT.backbone, show_default=True, help="Backbone to start from.")
@click.option("--dim", type=click.IntRange(2), help="Embedding size of the projection head [default: the backbone's].")
@click.option("--loss", type=click.Choice(LOSSES),
              help=f"Metric-learning loss (proxy_anchor: classes only) [default: {LOSSES[0]}].")  # fmt: skip
@click.option("--init", type=click.Choice(INITS), default=FT.init, show_default=True,
              help="Starting head: identity, supervised whitening, or the better of them on validation.")  # fmt: skip
@click.option("--regularize", default=FT.regularize, show_default=True, type=click.FloatRange(0),
              help="Weight of the penalty for drifting from the backbone's similarities (guards unseen classes).")  # fmt: skip
@click.option("--stage1-epochs", default=FT.stage1_epochs, show_default=True, type=click.IntRange(0),
              help="Head-only epochs.")  # fmt: skip
@click.option(
    "--stage2-epochs",
    type=click.IntRange(0),
    help=f"Epochs with unfrozen blocks; 0 skips stage 2 [default: about {STAGE2_IMAGES:,} training images, "
    f"{STAGE2_EPOCHS[0]} to {STAGE2_EPOCHS[1]} epochs].",
)
@click.option(
    "--unfreeze", default=FT.unfreeze, show_default=True, type=click.IntRange(1), help="Last blocks trained in stage 2."
)
@click.option("--lr", default=FT.lr, show_default=True, type=click.FloatRange(0, min_open=True), help="Stage 1 LR.")
@click.option("--stage2-lr", default=FT.stage2_lr, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--weight-decay", default=FT.weight_decay, show_default=True, type=click.FloatRange(0))
@click.option("--batch-size", default=FT.batch_size, show_default=True, type=click.IntRange(4, 4096))
@click.option("--patience", default=FT.patience, show_default=True, type=click.IntRange(1),
              help="Stage 1 early stopping.")  # fmt: skip
@click.option("--stage2-patience", default=FT.stage2_patience, show_default=True, type=click.IntRange(1))
@click.option("--augment/--no-augment", default=FT.augment, show_default=True,
              help="Crop, flip and colour augmentation.")  # fmt: skip
@click.option("--views", default=FT.views, show_default=True, type=click.IntRange(1, 64),
              help="Cached views per image (1 plain + augmented ones).")  # fmt: skip
@click.option("--no-cache", is_flag=True, help="Augment afresh every step instead of caching (much slower).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=FT.precision, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), help="DataLoader worker processes [default: cores, max 4].")
@click.option("--seed", default=FT.seed, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--cache-dir", type=click.Path(), help="Keep cached features here (shared between runs).")
@command
def finetune_cmd(folder, out, labels_csv, pairs_csv, root, val, holdout, val_fraction, exclude_label, classes,
                 backbone, dim, loss, init, regularize, stage1_epochs, stage2_epochs, unfreeze, lr, stage2_lr, weight_decay,
                 batch_size, patience, stage2_patience, augment, views, no_cache, precision, workers, seed, resume,
                 cache_dir, quiet):  # fmt: skip
    """Fine-tune a backbone on labelled images (FOLDER of class folders, --labels) or --pairs for retrieval.

    Stage 1 trains a projection head on the frozen backbone, stage 2 the last --unfreeze blocks too; every epoch
    is validated (Recall@1, MAP@R) and OUT always holds the best checkpoint. Use it with
    `simsearch index PHOTOS --backbone OUT`.
    """
    r = finetune(
        folder, out=out, labels=labels_csv, pairs=pairs_csv, root=root, val=val, holdout=holdout,
        val_fraction=val_fraction, exclude_labels=exclude_label, classes=classes, backbone=backbone,
        dim=dim, loss=loss, init=init, regularize=regularize, stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs,
        unfreeze=unfreeze, lr=lr, stage2_lr=stage2_lr, weight_decay=weight_decay, batch_size=batch_size,
        patience=patience, stage2_patience=stage2_patience, augment=augment, views=views, cache=not no_cache,
        precision=precision, workers=workers, seed=seed, resume=resume, cache_dir=cache_dir, progress=not quiet,
    )  # fmt: skip
    rows = [[h["stage"], h["epoch"], "" if h["loss"] is None else f"{h['loss']:.4f}", f"{h['recall@1']:.4f}",
             f"{h['map@r']:.4f}", "*" if h.get("best") else ""] for h in r.history]  # fmt: skip
    b = r.best
    text = table(rows, ["stage", "epoch", "loss", "R@1", "MAP@R", "best"])
    text += (
        f"\nbest: stage {b['stage']} epoch {b['epoch']} (validation R@1 {b['recall@1']:.4f}, MAP@R {b['map@r']:.4f})"
        f"\ncheckpoint: {r.path}  (use: simsearch index PHOTOS --backbone {r.path})"
    )
    data = {"path": str(r.path), "stage1_path": str(r.stage1_path) if r.stage1_path else None, "best": b,
            "history": r.history, "timings": r.card.get("timings", {})}  # fmt: skip
    return data, text
