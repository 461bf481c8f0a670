"""``query``, ``recommend``: asking an index."""

from __future__ import annotations

import logging

import click

from ..config import LIMITS
from ..errors import SimsearchError
from ..index_reader import IndexReader
from ..preload import take_preload
from ..rules import Rules
from ._common import command, hits_text, main
from .query_options import embedder_options, query_parameters, result_options

log = logging.getLogger("simsearch")


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
@query_parameters
@command
def query_cmd(
    index_path, images, ids, keys, k, augment, where, label, path_prefix, fields, max_per, collapse_duplicates,
    html_out, quiet,
):  # fmt: skip
    """Find the nearest items of IMAGES, --id and --key items (several: their mean)."""
    if not images and not ids and not keys:
        raise SimsearchError("give a query image or --id ITEM (or --key KEY)")
    filter, rules = _filter_and_rules(where, label, path_prefix, fields, max_per, collapse_duplicates)
    options = embedder_options(images)
    # a new photo: the model loads in a thread (started before this module was imported: query_options.warm_up)
    # while the index is read and the photo decoded
    pending = take_preload(index_path, images, options) if images else None
    with IndexReader.open(index_path) as idx:  # the facade without its build and vote code
        idx.embedder_options.update(options)
        idx.adopt_embedder(pending)
        for key in keys:
            if idx.resolve_item(key) is None:
                raise SimsearchError(f"no item with key {key!r} in {index_path}")
        query = list(ids) + list(keys) + list(images)
        hits = idx.search(query, k=k, filter=filter, rules=rules, augment=augment)
        if html_out:
            from ..gallery import write_query_gallery  # html, base64...: only for --html

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
    with IndexReader.open(index_path) as idx:
        hits = idx.recommend(
            positive=_refs(positive), negative=_refs(negative), exclude=_refs(exclude), k=k, filter=filter, rules=rules,
            augment=augment,
        )  # fmt: skip
    return {"index": index_path, "results": [h.to_dict() for h in hits]}, hits_text(hits)
