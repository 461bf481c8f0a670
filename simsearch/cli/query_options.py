"""The ``query`` command's parameters, and the model load it starts before its code is imported (issue 15).

``simsearch query INDEX NEW.jpg`` spends most of its time importing modules and compiling the index's model. The
compile runs in a thread without the GIL (:mod:`simsearch.preload`), so the earlier it starts, the more of it the
imports hide: :func:`warm_up` reads the command line with the command's own parameters (defined here once, used by
``querying``) and starts it as soon as the command is known, before the query code (index, search, FAISS) is
imported. The command then adopts that load only if it is the one it would have started itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from ..config import LIMITS
from ..preload import start_preload
from ._common import command


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


def query_parameters(fn):
    """The parameters of ``query`` (the common ``--json``/``--quiet`` come from :func:`~._common.command`)."""
    decorators = [
        click.argument("index_path", metavar="INDEX", type=click.Path()),
        click.argument("images", nargs=-1, type=click.Path()),
        click.option("--id", "ids", multiple=True, type=int, help="An indexed item id ('more like this'); repeatable."),
        click.option(
            "--key", "keys", multiple=True, help="An item key ('more like this', all its photos); repeatable."
        ),
        click.option(
            "-k", default=10, show_default=True, type=click.IntRange(1, LIMITS.max_k), help="Number of results."
        ),
        result_options,
        click.option(
            "--html", "html_out", type=click.Path(dir_okay=False), help="Also write the results as an HTML gallery."
        ),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def embedder_options(images: Sequence[str]) -> dict[str, Any]:
    """The embedder options of a query of these images: one inference request compiles the model for one stream
    and one image only (less to load, and its kernels are made while compiling)."""
    return {"engine_options": {"hint": "latency", "threads": 1, "static_batch": 1}} if len(images) == 1 else {}


def warm_up(args: Sequence[str]) -> None:
    """Start loading the model of ``simsearch query ARGS`` when it queries a new photo (see the module's doc);
    nothing when the arguments do not parse, or ask for help (the command itself then says what is wrong)."""

    def parameters_only(**_: Any) -> None:  # a new function each time: click's decorators add to it
        """The callback of the stand-in command the arguments are parsed with (never called)."""

    parser = click.command("query", add_help_option=False)(command(query_parameters(parameters_only)))
    try:
        with parser.make_context("query", list(args)) as ctx:
            index_path, images = ctx.params.get("index_path"), tuple(ctx.params.get("images") or ())
    except (click.exceptions.Exit, click.ClickException):
        return
    if index_path and images:
        start_preload(index_path, images, embedder_options(images))
