"""``classify``, ``audit`` and ``evaluate --classify``: labels from neighbours (issue 16).

``-k`` is a plain int so that a bad value gets the library's one-line error.
"""

from __future__ import annotations

import logging

import click

from ..audit import audit
from ..classify_eval import evaluate_classification
from ..classify_report import write_audit_gallery, write_classification_report
from ..config.classify import CLASSIFY
from ..errors import SimsearchError
from ..index import open_index
from ._common import command, main, table

log = logging.getLogger("simsearch")


def _votes_text(votes) -> str:
    return ", ".join(f"{v.label} {v.share:.2f}" for v in votes)


@main.command("classify")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--id", "ids", multiple=True, type=int, help="An indexed item id to classify by the others; repeatable.")
@click.option("--key", "keys", multiple=True, help="An indexed item key to classify by the others; repeatable.")
@click.option("-k", "k", default=CLASSIFY.k, show_default=True, type=int, help="Labelled neighbours that vote.")
@click.option("--field", default=CLASSIFY.field, show_default=True, help="The attribute to vote on.")
@click.option(
    "--min-confidence",
    default=CLASSIFY.min_confidence,
    show_default=True,
    type=float,
    help="Below this share of the vote the answer is 'unknown'.",
)
@click.option("--top", default=CLASSIFY.top, show_default=True, type=int, help="Labels listed per query.")
@command
def classify_cmd(index_path, images, ids, keys, k, field, min_confidence, top, quiet):
    """Suggest a label for IMAGES and/or --id/--key items: similarity-weighted votes of their K nearest
    labelled items.

    An indexed item (by id, key or the path of its photo) is voted on by the others, never by its own label.
    """
    if not images and not ids and not keys:
        raise SimsearchError("give an image to classify, --id ITEM or --key KEY")
    with open_index(index_path) as idx:
        results = idx.classify([*ids, *keys, *images], k=k, field=field, min_confidence=min_confidence, top=top)
    rows = [[r.query, r.label, f"{r.confidence:.2f}", _votes_text(r.votes)] for r in results]
    data = {"index": index_path, "k": k, "field": field, "min_confidence": min_confidence,
            "results": [r.to_dict() for r in results]}  # fmt: skip
    return data, table(rows, ["query", field, "confidence", "votes"])


@main.command("audit")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("-k", "k", default=CLASSIFY.k, show_default=True, type=int, help="Labelled neighbours that vote.")
@click.option("--field", default=CLASSIFY.field, show_default=True, help="The attribute to check.")
@click.option(
    "--min-confidence",
    default=CLASSIFY.audit_min_confidence,
    show_default=True,
    type=float,
    help="Flag an item when another label gets at least this share of its neighbours' vote.",
)
@click.option("--exclude-label", multiple=True, help="Leave out items with this label (e.g. a clutter class).")
@click.option("--limit", default=50, show_default=True, type=int, help="List at most this many suspects.")
@click.option(
    "--html", "html_out", type=click.Path(dir_okay=False), help="Also write suspects beside their neighbours."
)
@command
def audit_cmd(index_path, k, field, min_confidence, exclude_label, limit, html_out, quiet):
    """Items whose label disagrees with a confident vote of their K nearest labelled neighbours (leave-one-out).

    Likely mislabelled, ambiguous or unusual photos of their class; most confident first.
    """
    if limit < 1:
        raise SimsearchError(f"--limit must be at least 1, not {limit}")

    with open_index(index_path) as idx:
        suspects = audit(idx, k, field=field, min_confidence=min_confidence, exclude_labels=exclude_label)
        shown = suspects[:limit]
        if html_out:
            write_audit_gallery(html_out, idx, shown)
            log.info("gallery written to %s", html_out)
    rows = [[n, f"{s.confidence:.2f}", f"{s.own_share:.2f}", s.id, s.label, s.suggested, s.path]
            for n, s in enumerate(shown, 1)]  # fmt: skip
    head = f"{len(suspects)} suspects (neighbours vote for another {field} with share >= {min_confidence})"
    if len(shown) < len(suspects):
        head += f"; the first {len(shown)}:"
    text = head + ("\n" + table(rows, ["#", "vote", "own", "id", field, "suggested", "path"]) if rows else "")
    data = {"index": index_path, "k": k, "field": field, "min_confidence": min_confidence, "total": len(suspects),
            "suspects": [s.to_dict() for s in shown], **({"html": html_out} if html_out else {})}  # fmt: skip
    return data, text


# ------------------------------------------------------------------------------ evaluate --classify

# The options `evaluate` takes for --classify (see evaluating.evaluate_cmd), with their defaults.
EVALUATE_DEFAULTS = {"k": CLASSIFY.k, "field": CLASSIFY.field, "queries": None,
                     "min_confidence": CLASSIFY.min_confidence, "report": None}  # fmt: skip


def evaluate_options(fn):
    """The options ``evaluate`` gets for ``--classify``."""
    options = [
        click.option("--classify", is_flag=True, help="Evaluate label votes (accuracy, confusion) instead."),
        click.option("-k", "k", default=CLASSIFY.k, show_default=True, type=int, help="With --classify: voters."),
        click.option("--field", default=CLASSIFY.field, show_default=True, help="With --classify: the attribute."),
        click.option(
            "--queries",
            help="With --classify: FIELD=VALUE, e.g. split=test: those items are the queries and the other "
            "labelled items vote (FIELD from the --labels CSV, or an attribute) [default: leave-one-out].",
        ),
        click.option(
            "--min-confidence",
            default=CLASSIFY.min_confidence,
            show_default=True,
            type=float,
            help="With --classify: report the coverage and accuracy of votes this sure.",
        ),
        click.option(
            "--report",
            type=click.Path(file_okay=False),
            help="With --classify: write confusion.csv, confusion.png, per_class.csv and report.html here.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def check_retrieval_options(**given) -> None:
    """Refuse the classification options without --classify (one line)."""
    used = [("-k" if key == "k" else f"--{key.replace('_', '-')}") for key, v in given.items()
            if v != EVALUATE_DEFAULTS[key]]  # fmt: skip
    if used:
        raise SimsearchError(f"{', '.join(used)}: only with --classify")


def evaluate_classify(index_path, labels_csv, exclude_label, classes, k, field, queries, min_confidence, report):
    """``evaluate --classify``: ``(data, text)`` for :func:`command`."""

    with open_index(index_path) as idx:
        ev = evaluate_classification(
            idx, k=k, field=field, labels_csv=labels_csv, queries=queries, exclude_labels=exclude_label,
            classes=classes, min_confidence=min_confidence,
        )  # fmt: skip
    data = ev.to_dict()
    figures = [["accuracy", ev.accuracy], ["macro precision", ev.macro_precision], ["macro recall", ev.macro_recall],
               ["macro F1", ev.macro_f1], [f"coverage (confidence >= {ev.min_confidence})", ev.coverage],
               ["accuracy of those", ev.confident_accuracy]]  # fmt: skip
    worst = [[c["class"], c["support"], c["precision"], c["recall"], c["f1"]]
             for c in sorted(ev.per_class, key=lambda c: (c["f1"], c["class"]))[:10]]  # fmt: skip
    lines = [
        f"{ev.queries} queries in {len(ev.classes)} classes, {ev.protocol}, votes of {ev.k} neighbours",
        table(figures, ["metric", "value"]),
        "\nworst classes:",
        table(worst, ["class", "queries", "precision", "recall", "F1"]),
    ]
    confusions = ev.top_confusions(10)
    if confusions:
        rows = [[c["true"], c["predicted"], c["count"]] for c in confusions]
        lines += ["\nmost frequent confusions:", table(rows, ["true", "predicted", "n"])]
    if report:
        data["report"] = write_classification_report(report, ev, index_path=str(index_path))
        lines += [f"\nreport: {data['report']['html']} (confusion matrix: {data['report']['confusion_png']})"]
    return data, "\n".join(lines)
