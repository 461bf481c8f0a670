"""``query``, ``recommend``: asking an index."""

from __future__ import annotations

import logging

import click

from ..config import LIMITS
from ..errors import SimsearchError
from ..gallery import write_query_gallery
from ..index import open_index
from ..preload import preload_embedder
from ..rules import Rules
from ._common import command, hits_text, main

log = logging.getLogger("simsearch")


def result_options(fn):
    """Options shared by query and recommend: filters, business rules, augmentation."""
    options = [
        click.option(
            "--augment",
            type=click.Choice(["auto", "on", "none"]),
            default="auto",
            show_default=True,
            help="Search the index's augmented vectors (auto: when it has them) or the raw ones (none).",
        ),
        click.option("--where", help="Filter on attributes, e.g. 'category = \"shoes\" and price < 100 and in_stock'."),
        click.option("--label", help="Only results with this label."),
        click.option("--path-prefix", help="Only results whose path starts with this."),
        click.option("--fields", help="Comma-separated attributes to show with each result [default: all]."),
        click.option("--max-per", multiple=True, help="At most N results per value of an attribute: brand=2."),
        click.option(
            "--collapse-duplicates",
            type=click.FloatRange(0, 1, min_open=True),
            help="One result per group of near-duplicates at this cosine similarity (e.g. 0.9).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _filter_and_rules(where, label, path_prefix, fields, max_per, collapse_duplicates):
    if where and (label or path_prefix):
        raise SimsearchError("give --where, or --label/--path-prefix, not both")
    limits = {}
    for spec in max_per:
        name, _, n = spec.partition("=")
        if not name or not n.isdigit() or int(n) < 1:
            raise SimsearchError(f"--max-per takes ATTRIBUTE=N with N >= 1, not {spec!r}")
        limits[name] = int(n)
    rules = Rules(
        max_per=limits,
        collapse_duplicates=collapse_duplicates,
        fields=tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else None,
    )
    return where or {"label": label, "path_prefix": path_prefix}, rules


def _refs(values) -> list:
    """Command-line item references: integers are ids, anything else a key or a path."""
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


@main.command("query")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--id", "ids", multiple=True, type=int, help="An indexed item id ('more like this'); repeatable.")
@click.option("--key", "keys", multiple=True, help="An item key ('more like this', all its photos); repeatable.")
@click.option("-k", default=10, show_default=True, type=click.IntRange(1, LIMITS.max_k), help="Number of results.")
@result_options
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Also write the results as an HTML gallery.")
@command
def query_cmd(
    index_path, images, ids, keys, k, augment, where, label, path_prefix, fields, max_per, collapse_duplicates,
    html_out, quiet,
):  # fmt: skip
    """Find the nearest items of IMAGES, --id and --key items (several: their mean)."""
    if not images and not ids and not keys:
        raise SimsearchError("give a query image or --id ITEM (or --key KEY)")
    filter, rules = _filter_and_rules(where, label, path_prefix, fields, max_per, collapse_duplicates)
    # one inference request: compile the model for one stream and one image only (less to load, and its kernels
    # are made while compiling)
    options = {"engine_options": {"hint": "latency", "threads": 1, "static_batch": 1}} if len(images) == 1 else {}
    # a new photo: the model loads in a thread while the index is read and the photo decoded
    pending = preload_embedder(index_path, images, options) if images else None
    with open_index(index_path) as idx:
        idx.embedder_options.update(options)
        idx.adopt_embedder(pending)
        for key in keys:
            if idx.resolve_item(key) is None:
                raise SimsearchError(f"no item with key {key!r} in {index_path}")
        query = list(ids) + list(keys) + list(images)
        hits = idx.search(query, k=k, filter=filter, rules=rules, augment=augment)
        if html_out:
            write_query_gallery(html_out, idx, query, hits)
            log.info("gallery written to %s", html_out)
    return {"index": index_path, "query": {"images": list(images), "ids": list(ids), "keys": list(keys)}, "k": k,
            "results": [h.to_dict() for h in hits], **({"html": html_out} if html_out else {})}, hits_text(hits)  # fmt: skip


@main.command("recommend")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--positive", "-p", multiple=True, required=True, help="Item id, key or image path to be like.")
@click.option("--negative", "-n", multiple=True, help="Item id, key or image path to be unlike; repeatable.")
@click.option("--exclude", "-x", multiple=True, help="Item id or key never to return (e.g. already seen).")
@click.option("-k", default=20, show_default=True, type=click.IntRange(1, LIMITS.max_k))
@result_options
@command
def recommend_cmd(
    index_path, positive, negative, exclude, k, augment, where, label, path_prefix, fields, max_per,
    collapse_duplicates, quiet,
):  # fmt: skip
    """Items like the positives and unlike the negatives."""
    filter, rules = _filter_and_rules(where, label, path_prefix, fields, max_per, collapse_duplicates)
    with open_index(index_path) as idx:
        hits = idx.recommend(
            positive=_refs(positive), negative=_refs(negative), exclude=_refs(exclude), k=k, filter=filter, rules=rules,
            augment=augment,
        )  # fmt: skip
    return {"index": index_path, "results": [h.to_dict() for h in hits]}, hits_text(hits)
