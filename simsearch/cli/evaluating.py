"""``evaluate``: retrieval quality over labelled items, raw and augmented (and ``--classify``: label votes)."""

from __future__ import annotations

import click

from ..evaluate import evaluate_index
from ..index import open_index
from ._common import command, main, table
from .classifying import check_retrieval_options, evaluate_classify, evaluate_options


@main.command("evaluate")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--labels", "labels_csv", type=click.Path(), help="CSV with path,label columns [default: folder names].")
@click.option("--exclude-label", multiple=True, help="Leave out items with this label; repeatable.")
@click.option("--classes", type=click.Choice(["all", "first-half", "second-half"]), default="all", show_default=True)
@click.option(
    "--augment",
    help="Augmentation to compare with the raw vectors: dba, dba:k=10,rounds=2..., or none "
    "[default: the index's own, or the default augmentation].",
)
@evaluate_options
@command
def evaluate_cmd(index_path, labels_csv, exclude_label, classes, augment, classify, k, field, queries, min_confidence,
                 report, quiet):  # fmt: skip
    """Recall@1/5/10 and MAP@R over labelled items (exact search), raw and augmented side by side.

    Leave-one-out, or with --queries FIELD=VALUE (e.g. split=test) or a fraction (0.3) those items are new
    queries: left out of the collection and of its augmentation, then searched like new images.

    With --classify: accuracy, macro precision/recall/F1, per class and the confusion matrix of
    similarity-weighted K-nearest-neighbour label votes, leave-one-out or for --queries FIELD=VALUE.
    """
    mine = {"k": k, "field": field, "queries": queries, "min_confidence": min_confidence, "report": report}
    if classify:
        return evaluate_classify(index_path, labels_csv, exclude_label, classes, **mine)
    check_retrieval_options(**{**mine, "queries": None})
    with open_index(index_path) as idx:
        r = evaluate_index(
            idx, labels_csv=labels_csv, exclude_labels=exclude_label, classes=classes, queries=queries,
            augment=augment,
        )  # fmt: skip
    aug = r.get("augmented") or {}
    rows = [[m, v, aug.get(m, "")] for m, v in r.items() if m.startswith(("recall", "map"))]
    head = f"{r['items']} items in {r['classes']} classes ({classes}), {r['protocol']}"
    if aug:
        head += f"\naugmented: {r['augment']['method']} k={r['augment']['k']} rounds={r['augment']['rounds']}"
    return r, head + "\n" + table(rows, ["metric", "raw", "augmented" if aug else ""])
