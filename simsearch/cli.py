"""Command line: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from . import __version__

log = logging.getLogger("simsearch")


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if not quiet else "%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _command(fn):
    """Common options (--json, --quiet) and error handling: user errors are one line on stderr, exit 1."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or info messages.")
    @functools.wraps(fn)
    def wrapper(*args, as_json: bool, quiet: bool, **kwargs):
        from .errors import SimsearchError

        _setup_logging(quiet)
        try:
            result = fn(*args, quiet=quiet, **kwargs)
        except SimsearchError as e:
            raise click.ClickException(str(e)) from None
        except KeyError as e:
            raise click.ClickException(f"not found: {e.args[0]}") from None
        except OSError as e:
            raise click.ClickException(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        data, text = result
        if as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        elif text:
            click.echo(text)

    return wrapper


def _table(rows: list[list], headers: list[str]) -> str:
    cells = [headers] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _hits_text(hits) -> str:
    if not hits:
        return "no results"
    return _table(
        [[h.rank, f"{h.score:.4f}", h.id, h.label, h.path] for h in hits], ["rank", "score", "id", "label", "path"]
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="simsearch")
def main():
    """Visual similarity search: index image folders, find similar images."""


@main.command("index")
@click.argument("folders", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", type=click.Path(), help="Index directory [default: indexes/<folder name>].")
@click.option(
    "--backbone", "-b", help="Backbone name or checkpoint path [default: efficientnet_lite0, or the index's]."
)
@click.option("--arch", help="timm architecture of a bare checkpoint file given as --backbone.")
@click.option("--index", "index_factory", help="FAISS factory string for a new index [default: Flat].")
@click.option("--prune", is_flag=True, help="Remove entries whose files no longer exist.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", type=click.IntRange(1, 64), help="Decoder threads [default: one per core].")
@click.option(
    "--max-pixels", default=100_000_000, show_default=True, type=click.IntRange(1), help="Refuse larger images."
)
@click.option("--follow-symlinks", is_flag=True, help="Follow symlinks (never outside the indexed folders).")
@_command
def index_cmd(
    folders, out, backbone, arch, index_factory, prune, batch_size, workers, max_pixels, follow_symlinks, quiet
):
    """Embed every image under FOLDERS (recursively) into an index; re-runs add only new or changed files."""
    from .backbones import create_backbone
    from .index import build_index

    bb = create_backbone(backbone, arch=arch) if backbone else None
    r = build_index(
        list(folders), out, backbone=bb, index_factory=index_factory, prune=prune, batch_size=batch_size,
        workers=workers, max_pixels=max_pixels, follow_symlinks=follow_symlinks, progress=not quiet,
    )  # fmt: skip
    rate = f" ({r.embedded / r.seconds:.1f} img/s)" if r.embedded and r.seconds else ""
    lines = [
        f"{r.path}: {r.count} items; {r.added} added, {r.updated} updated, {r.removed} removed, "
        f"{r.unchanged} unchanged, {len(r.skipped)} skipped in {r.seconds:.1f} s{rate}"
    ]
    if r.skipped:
        lines.append(f"skipped files and reasons: {r.path}/skipped.csv")
    if r.missing and not prune:
        lines.append(f"{r.missing} indexed files no longer exist: re-run with --prune to remove them")
    return r.to_dict(), "\n".join(lines)


@main.command("query")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--id", "ids", multiple=True, type=int, help="An indexed item id ('more like this'); repeatable.")
@click.option("-k", default=10, show_default=True, type=click.IntRange(1, 10_000), help="Number of results.")
@click.option("--label", help="Only results with this label.")
@click.option("--path-prefix", help="Only results whose path starts with this.")
@_command
def query_cmd(index_path, images, ids, k, label, path_prefix, quiet):
    """Find the nearest neighbours of IMAGES and/or --id items (several: their mean)."""
    from .errors import SimsearchError
    from .index import open_index

    if not images and not ids:
        raise SimsearchError("give a query image or --id ITEM")
    with open_index(index_path) as idx:
        hits = idx.search(list(ids) + list(images), k=k, filter={"label": label, "path_prefix": path_prefix})
    return {"index": index_path, "query": {"images": list(images), "ids": list(ids)}, "k": k,
            "results": [h.to_dict() for h in hits]}, _hits_text(hits)  # fmt: skip


@main.command("recommend")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--positive", "-p", multiple=True, required=True, help="Item id or image path to be like; repeatable.")
@click.option("--negative", "-n", multiple=True, help="Item id or image path to be unlike; repeatable.")
@click.option("--exclude", "-x", multiple=True, type=int, help="Item id never to return (e.g. already seen).")
@click.option("-k", default=20, show_default=True, type=click.IntRange(1, 10_000))
@_command
def recommend_cmd(index_path, positive, negative, exclude, k, quiet):
    """Items like the positives and unlike the negatives."""
    from .index import open_index

    def parse(values):
        return [int(v) if v.lstrip("-").isdigit() else v for v in values]

    with open_index(index_path) as idx:
        hits = idx.recommend(positive=parse(positive), negative=parse(negative), exclude=list(exclude), k=k)
    return {"index": index_path, "results": [h.to_dict() for h in hits]}, _hits_text(hits)


@main.command("info")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@_command
def info_cmd(index_path, quiet):
    """What is in an index and how it was made."""
    from .index import open_index

    with open_index(index_path) as idx:
        info = idx.info()
    keys = ["path", "count", "labels", "skipped", "backbone", "arch", "weights_sha256", "dim", "metric",
            "index_factory", "roots", "created", "updated", "simsearch_version", "format_version", "size_bytes"]  # fmt: skip
    pre = info["preprocessing"]
    text = "\n".join(f"{k:>18}: {info[k]}" for k in keys)
    text += f"\n{'preprocessing':>18}: " + ", ".join(f"{k}={v}" for k, v in pre.items())
    return info, text


@main.command("evaluate")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--labels", "labels_csv", type=click.Path(), help="CSV with path,label columns [default: folder names].")
@click.option("--exclude-label", multiple=True, help="Leave out items with this label; repeatable.")
@click.option("--classes", type=click.Choice(["all", "first-half", "second-half"]), default="all", show_default=True)
@_command
def evaluate_cmd(index_path, labels_csv, exclude_label, classes, quiet):
    """Leave-one-out Recall@1/5/10 and MAP@R over labelled items (exact search)."""
    from .evaluate import evaluate_index
    from .index import open_index

    with open_index(index_path) as idx:
        r = evaluate_index(idx, labels_csv=labels_csv, exclude_labels=exclude_label, classes=classes)
    rows = [[k, v] for k, v in r.items() if k.startswith(("recall", "map"))]
    head = f"{r['items']} items in {r['classes']} classes ({classes})"
    return r, head + "\n" + _table(rows, ["metric", "value"])


@main.command("verify")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@_command
def verify_cmd(index_path, quiet):
    """Check an index's internal consistency (manifest, vectors, metadata)."""
    from .index import verify_index

    problems, stats = verify_index(index_path)
    if problems:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        raise click.ClickException(f"{index_path}: {len(problems)} problem(s) found")
    return {"ok": True, **stats}, f"{index_path}: ok ({stats['count']} items)"


@main.command("backbones")
@_command
def backbones_cmd(quiet):
    """List registered backbones (any timm model name or a checkpoint path also works)."""
    from .backbones import DEFAULT_BACKBONE, list_backbones

    names = list_backbones()
    return {"backbones": names, "default": DEFAULT_BACKBONE}, "\n".join(
        f"{n}{' (default)' if n == DEFAULT_BACKBONE else ''}" for n in names
    )


if __name__ == "__main__":  # pragma: no cover
    main()
