"""``query``, ``recommend``, ``evaluate``: asking an index."""

from __future__ import annotations

import logging

import click

from ..errors import SimsearchError
from ..evaluate import evaluate_index
from ..gallery import write_query_gallery
from ..index import open_index
from ._common import command, hits_text, main, table
from .classifying import check_retrieval_options, evaluate_classify, evaluate_options

log = logging.getLogger("simsearch")


@main.command("query")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--id", "ids", multiple=True, type=int, help="An indexed item id ('more like this'); repeatable.")
@click.option("-k", default=10, show_default=True, type=click.IntRange(1, 10_000), help="Number of results.")
@click.option("--label", help="Only results with this label.")
@click.option("--path-prefix", help="Only results whose path starts with this.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Also write the results as an HTML gallery.")
@command
def query_cmd(index_path, images, ids, k, label, path_prefix, html_out, quiet):
    """Find the nearest neighbours of IMAGES and/or --id items (several: their mean)."""

    if not images and not ids:
        raise SimsearchError("give a query image or --id ITEM")
    with open_index(index_path) as idx:
        hits = idx.search(list(ids) + list(images), k=k, filter={"label": label, "path_prefix": path_prefix})
        if html_out:
            write_query_gallery(html_out, idx, list(ids) + list(images), hits)
            log.info("gallery written to %s", html_out)
    return {"index": index_path, "query": {"images": list(images), "ids": list(ids)}, "k": k,
            "results": [h.to_dict() for h in hits], **({"html": html_out} if html_out else {})}, hits_text(hits)  # fmt: skip


@main.command("recommend")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--positive", "-p", multiple=True, required=True, help="Item id or image path to be like; repeatable.")
@click.option("--negative", "-n", multiple=True, help="Item id or image path to be unlike; repeatable.")
@click.option("--exclude", "-x", multiple=True, type=int, help="Item id never to return (e.g. already seen).")
@click.option("-k", default=20, show_default=True, type=click.IntRange(1, 10_000))
@command
def recommend_cmd(index_path, positive, negative, exclude, k, quiet):
    """Items like the positives and unlike the negatives."""

    def parse(values):
        return [int(v) if v.lstrip("-").isdigit() else v for v in values]

    with open_index(index_path) as idx:
        hits = idx.recommend(positive=parse(positive), negative=parse(negative), exclude=list(exclude), k=k)
    return {"index": index_path, "results": [h.to_dict() for h in hits]}, hits_text(hits)


@main.command("evaluate")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--labels", "labels_csv", type=click.Path(), help="CSV with path,label columns [default: folder names].")
@click.option("--exclude-label", multiple=True, help="Leave out items with this label; repeatable.")
@click.option("--classes", type=click.Choice(["all", "first-half", "second-half"]), default="all", show_default=True)
@evaluate_options
@command
def evaluate_cmd(index_path, labels_csv, exclude_label, classes, classify, k, field, queries, min_confidence, report,
                 quiet):  # fmt: skip
    """Leave-one-out Recall@1/5/10 and MAP@R over labelled items (exact search).

    With --classify: accuracy, macro precision/recall/F1, per class and the confusion matrix of
    similarity-weighted K-nearest-neighbour label votes, leave-one-out or for --queries FIELD=VALUE.
    """
    mine = {"k": k, "field": field, "queries": queries, "min_confidence": min_confidence, "report": report}
    if classify:
        return evaluate_classify(index_path, labels_csv, exclude_label, classes, **mine)
    check_retrieval_options(**mine)
    with open_index(index_path) as idx:
        r = evaluate_index(idx, labels_csv=labels_csv, exclude_labels=exclude_label, classes=classes)
    rows = [[k, v] for k, v in r.items() if k.startswith(("recall", "map"))]
    head = f"{r['items']} items in {r['classes']} classes ({classes})"
    return r, head + "\n" + table(rows, ["metric", "value"])
