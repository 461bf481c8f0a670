"""Command line: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
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
        except sqlite3.Error as e:  # a damaged metadata file
            raise click.ClickException(
                f"cannot read the index metadata ({e}); check it with `simsearch verify`"
            ) from None
        except OSError as e:
            raise click.ClickException(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        data, text = result
        if as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        elif text:  # file names that are not UTF-8 are printed as their original bytes
            click.echo(text.encode("utf-8", "surrogateescape"))

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
@click.option(
    "--index",
    "index_factory",
    help="FAISS factory string for a new index, or 'auto' [default: auto: exact Flat below 100k images, "
    "then a trained, tuned IVF index; see docs/scale.md].",
)
@click.option(
    "--memory-budget", help="With --index auto: memory the finished index may use, e.g. 2GB [default: half the RAM]."
)
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    help="With --index auto: recall@10 against exact search to tune for [default: 0.95].",
)
@click.option("--prune", is_flag=True, help="Remove entries whose files no longer exist.")
@click.option(
    "--engine",
    type=click.Choice(["auto", "openvino", "torch", "ray"]),
    help="Inference engine [default: auto: OpenVINO where installed, else torch; an existing index keeps its own].",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    help="Inference precision [default: auto: bf16 where the CPU has it natively, else fp32].",
)
@click.option(
    "--draft/--no-draft",
    default=None,
    help="Decode JPEGs at a reduced scale no smaller than the model needs [default: on for a new index].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    help="Images per inference batch [default: auto, 16 OpenVINO/32 torch].",
)
@click.option("--workers", type=click.IntRange(1, 64), help="Decoder threads [default: one per core].")
@click.option(
    "--max-pixels", default=100_000_000, show_default=True, type=click.IntRange(1), help="Refuse larger images."
)
@click.option(
    "--follow-symlinks/--no-follow-symlinks",
    default=False,
    show_default=True,
    help="Follow symlinks inside the indexed folders (never to a place outside them).",
)
@click.option("--strict", is_flag=True, help="Fail (exit 1) if any file had to be skipped.")
@click.option("--address", help="With --engine ray: the Ray cluster to use ('auto': the running one) [default: local].")
@click.option("--commit-every", default=2048, type=click.IntRange(1), hidden=True, help="Save progress every N images.")
@_command
def index_cmd(
    folders, out, backbone, arch, index_factory, memory_budget, target_recall, prune, engine, precision, draft,
    batch_size, workers, max_pixels, follow_symlinks, strict, address, commit_every, quiet,
):  # fmt: skip
    """Embed every image under FOLDERS (recursively) into an index; re-runs add only new or changed files."""
    from .backbones import create_backbone
    from .index import build_index

    bb = create_backbone(backbone, arch=arch) if backbone else None
    scale = {"memory_budget": memory_budget, "target_recall": target_recall}
    if engine == "ray":  # decoding and embedding as a Ray Data pipeline (simsearch[ray]); the index is built here
        from .distributed import ray_embedder

        scale["embedder"] = ray_embedder(
            list(folders), out, backbone=bb, address=address, batch_size=batch_size, max_pixels=max_pixels
        )
        engine = None
    r = build_index(
        list(folders), out, backbone=bb, index_factory=index_factory, prune=prune, batch_size=batch_size,
        workers=workers, max_pixels=max_pixels, follow_symlinks=follow_symlinks, progress=not quiet,
        strict=strict, commit_every=commit_every, engine=engine, precision=precision, draft=draft, **scale,
    )  # fmt: skip
    used = getattr(r, "embedding", None)
    how = f", {used['engine']} {used['precision']}" if used else ""
    rate = f" ({r.embedded / r.seconds:.1f} img/s{how})" if r.embedded and r.seconds else ""
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
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Also write the results as an HTML gallery.")
@_command
def query_cmd(index_path, images, ids, k, label, path_prefix, html_out, quiet):
    """Find the nearest neighbours of IMAGES and/or --id items (several: their mean)."""
    from .errors import SimsearchError
    from .index import open_index

    if not images and not ids:
        raise SimsearchError("give a query image or --id ITEM")
    with open_index(index_path) as idx:
        hits = idx.search(list(ids) + list(images), k=k, filter={"label": label, "path_prefix": path_prefix})
        if html_out:
            from .gallery import write_query_gallery

            write_query_gallery(html_out, idx, list(ids) + list(images), hits)
            log.info("gallery written to %s", html_out)
    return {"index": index_path, "query": {"images": list(images), "ids": list(ids)}, "k": k,
            "results": [h.to_dict() for h in hits], **({"html": html_out} if html_out else {})}, _hits_text(hits)  # fmt: skip


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
    from .embed import recorded_settings

    emb = recorded_settings(info.get("extra"), info["count"])
    if emb:
        decoding = "reduced-size JPEG decoding" if emb["draft"] else "full decoding"
        text += f"\n{'embedding':>18}: {emb['engine']} {emb['precision']}, {decoding}"
    from .autoindex import describe

    auto = describe(idx.manifest)
    info.update({k: v for k, v in auto.items() if k != "lines"})
    text += "".join(f"\n{k:>18}: {v}" for k, v in auto["lines"])
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


@main.command("duplicates")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option(
    "--threshold", "-t", type=click.FloatRange(0, 1, min_open=True), help="Minimum cosine similarity [default: 0.9]."
)
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (group, id, path, label, score) on stdout.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Also write the groups as an HTML gallery.")
@click.option("--min-size", default=2, show_default=True, type=click.IntRange(2), help="Smallest group to list.")
@_command
def duplicates_cmd(index_path, threshold, as_csv, html_out, min_size, quiet):
    """List groups of near-duplicate items (re-uploads, crops, resized or re-encoded copies), largest first.

    Items are grouped when connected by similarity >= threshold; each group starts with its representative
    (the largest file) and shows every member's similarity to it.
    """
    import csv
    import io

    from .duplicates import DEFAULT_THRESHOLD, find_duplicates
    from .index import open_index

    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    with open_index(index_path) as idx:
        groups = find_duplicates(idx, threshold, min_size=min_size)
        if html_out:
            from .gallery import write_duplicates_gallery

            write_duplicates_gallery(html_out, idx, groups, threshold)
            log.info("gallery written to %s", html_out)
    data = {"index": index_path, "threshold": threshold, "groups": [g.to_dict() for g in groups]}
    if html_out:
        data["html"] = html_out
    if as_csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["group", "size", "id", "path", "label", "score"])
        for n, g in enumerate(groups, 1):
            for it, s in zip(g.items, g.scores, strict=True):
                w.writerow([n, g.size, it.id, it.path, it.label or "", f"{s:.6f}"])
        return data, buf.getvalue().rstrip("\n")
    if not groups:
        return data, f"no near-duplicates at similarity >= {threshold}"
    blocks = [f"{len(groups)} groups, {sum(g.size for g in groups)} items (similarity >= {threshold})"]
    for n, g in enumerate(groups, 1):
        rows = [[it.id, "-" if i == 0 else f"{s:.4f}", it.label, it.path]
                for i, (it, s) in enumerate(zip(g.items, g.scores, strict=True))]  # fmt: skip
        blocks.append(f"group {n} ({g.size} items)\n" + _table(rows, ["id", "score", "label", "path"]))
    return data, "\n\n".join(blocks)


# (imports of the serve command: kept beside it until the CLI becomes one module per command group)
from dataclasses import replace as _replace  # noqa: E402

from .config.serve import SERVE  # noqa: E402


@main.command("serve")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--host", default=SERVE.host, show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=SERVE.port, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--api-key",
    envvar=SERVE.api_key_env,
    help=f"Require this key on every route but /health [env: {SERVE.api_key_env}].",
)
@click.option(
    "--allowed-hosts",
    "allowed_hosts",
    multiple=True,
    metavar="HOST[,HOST]",
    help="Host names requests may use (repeatable or comma-separated; '*' for any) [default: the bound host and "
    "the localhost names]. Other Host headers get 400 (no DNS rebinding).",
)
@click.option(
    "--expose-paths/--hide-paths",
    default=SERVE.expose_paths,
    show_default=True,
    help="Show absolute server paths (index folder, roots, files) in responses.",
)
@click.option(
    "--allow-reload", is_flag=True, default=SERVE.allow_reload, help="Enable POST /admin/reload (serve a newer index)."
)
@click.option("--watch", type=click.FloatRange(0.1), help="Reload when the saved index changes, checking every N s.")
@click.option(
    "--max-upload-mb",
    default=SERVE.max_upload_mb,
    show_default=True,
    type=click.FloatRange(0.001),
    help="Request body limit, in MiB.",
)
@click.option(
    "--max-pixels", default=SERVE.max_pixels, show_default=True, type=click.IntRange(1), help="Refuse larger images."
)
@click.option("--access-log/--no-access-log", default=SERVE.access_log, show_default=True, help="Log every request.")
@_command
def serve_cmd(index_path, host, port, api_key, allowed_hosts, expose_paths, allow_reload, watch, max_upload_mb,
              max_pixels, access_log, quiet):  # fmt: skip
    """Serve INDEX over HTTP: search API, a search page at /, OpenAPI docs at /docs."""
    from .errors import SimsearchError

    try:
        from .server import serve
    except ImportError as e:
        raise SimsearchError(f"the server needs extra packages ({e.name}): pip install 'simsearch[server]'") from None
    hosts = tuple(h.strip() for value in allowed_hosts for h in value.split(",") if h.strip())
    spec = _replace(
        SERVE, host=host, port=port, allowed_hosts=hosts, expose_paths=expose_paths,
        allow_reload=allow_reload or bool(watch), watch_seconds=watch,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
        access_log=access_log and not quiet, preload=True,
    )  # fmt: skip
    click.echo(f"serving {index_path} on http://{host}:{port}/ (docs: /docs); Ctrl-C to stop", err=True)
    serve(index_path, spec, api_key=api_key or None, log_level="warning" if quiet else "info")
    return {"index": index_path, "host": host, "port": port, "stopped": True}, ""


@main.command("finetune")
@click.argument("folder", required=False, type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option("--labels", "labels_csv", type=click.Path(), help="CSV path,label[,split] of labelled images.")
@click.option("--pairs", "pairs_csv", type=click.Path(), help="CSV left,right,label[,split] (1 similar, 0 not).")
@click.option("--root", type=click.Path(), help="Folder the CSV paths are relative to [default: the CSV's folder].")
@click.option("--val", type=click.Path(), help="Validation set: labels CSV or class folder [default: held out].")
@click.option("--holdout", type=click.Choice(["classes", "images"]), default="classes", show_default=True,
              help="Automatic validation split: unseen classes, or some images of every class.")  # fmt: skip
@click.option(
    "--val-fraction", default=0.15, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True)
)
@click.option("--exclude-label", multiple=True, help="Leave out images with this label; repeatable.")
@click.option("--classes", type=click.Choice(["all", "first-half", "second-half"]), default="all", show_default=True)
@click.option("--backbone", "-b", default=None, help="Backbone to start from [default: efficientnet_lite0].")
@click.option("--dim", type=click.IntRange(2), help="Embedding size of the projection head [default: the backbone's].")
@click.option("--loss", type=click.Choice(["proxy_anchor", "multi_similarity", "contrastive"]),
              help="Metric-learning loss (proxy_anchor: classes only) [default: contrastive].")  # fmt: skip
@click.option("--init", type=click.Choice(["auto", "identity", "whiten"]), default="auto", show_default=True,
              help="Starting head: identity, supervised whitening, or the better of them on validation.")  # fmt: skip
@click.option("--regularize", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Weight of the penalty for drifting from the backbone's similarities (guards unseen classes).")  # fmt: skip
@click.option("--stage1-epochs", default=30, show_default=True, type=click.IntRange(0), help="Head-only epochs.")
@click.option(
    "--stage2-epochs",
    type=click.IntRange(0),
    help="Epochs with unfrozen blocks; 0 skips stage 2 [default: about 80,000 training images, 2 to 16 epochs].",
)
@click.option(
    "--unfreeze", default=2, show_default=True, type=click.IntRange(1), help="Last blocks trained in stage 2."
)
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(0, min_open=True), help="Stage 1 LR.")
@click.option("--stage2-lr", default=1e-4, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--weight-decay", default=1e-4, show_default=True, type=click.FloatRange(0))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(4, 4096))
@click.option("--patience", default=5, show_default=True, type=click.IntRange(1), help="Stage 1 early stopping.")
@click.option("--stage2-patience", default=3, show_default=True, type=click.IntRange(1))
@click.option("--augment/--no-augment", default=True, show_default=True, help="Crop, flip and colour augmentation.")
@click.option("--views", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Cached views per image (1 plain + augmented ones).")  # fmt: skip
@click.option("--no-cache", is_flag=True, help="Augment afresh every step instead of caching (much slower).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), help="DataLoader worker processes [default: cores, max 4].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--cache-dir", type=click.Path(), help="Keep cached features here (shared between runs).")
@_command
def finetune_cmd(folder, out, labels_csv, pairs_csv, root, val, holdout, val_fraction, exclude_label, classes,
                 backbone, dim, loss, init, regularize, stage1_epochs, stage2_epochs, unfreeze, lr, stage2_lr, weight_decay,
                 batch_size, patience, stage2_patience, augment, views, no_cache, precision, workers, seed, resume,
                 cache_dir, quiet):  # fmt: skip
    """Fine-tune a backbone on labelled images (FOLDER of class folders, --labels) or --pairs for retrieval.

    Stage 1 trains a projection head on the frozen backbone, stage 2 the last --unfreeze blocks too; every epoch
    is validated (Recall@1, MAP@R) and OUT always holds the best checkpoint. Use it with
    `simsearch index PHOTOS --backbone OUT`.
    """
    from .backbones import DEFAULT_BACKBONE
    from .finetuning import finetune

    r = finetune(
        folder, out=out, labels=labels_csv, pairs=pairs_csv, root=root, val=val, holdout=holdout,
        val_fraction=val_fraction, exclude_labels=exclude_label, classes=classes, backbone=backbone or DEFAULT_BACKBONE,
        dim=dim, loss=loss, init=init, regularize=regularize, stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs,
        unfreeze=unfreeze, lr=lr, stage2_lr=stage2_lr, weight_decay=weight_decay, batch_size=batch_size,
        patience=patience, stage2_patience=stage2_patience, augment=augment, views=views, cache=not no_cache,
        precision=precision, workers=workers, seed=seed, resume=resume, cache_dir=cache_dir, progress=not quiet,
    )  # fmt: skip
    rows = [[h["stage"], h["epoch"], "" if h["loss"] is None else f"{h['loss']:.4f}", f"{h['recall@1']:.4f}",
             f"{h['map@r']:.4f}", "*" if h.get("best") else ""] for h in r.history]  # fmt: skip
    b = r.best
    text = _table(rows, ["stage", "epoch", "loss", "R@1", "MAP@R", "best"])
    text += (
        f"\nbest: stage {b['stage']} epoch {b['epoch']} (validation R@1 {b['recall@1']:.4f}, MAP@R {b['map@r']:.4f})"
        f"\ncheckpoint: {r.path}  (use: simsearch index PHOTOS --backbone {r.path})"
    )
    data = {"path": str(r.path), "stage1_path": str(r.stage1_path) if r.stage1_path else None, "best": b,
            "history": r.history, "timings": r.card.get("timings", {})}  # fmt: skip
    return data, text


@main.command("export")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), help="A .parquet file, or a folder for npy.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "npy"]), help="[default: from --out's extension]")
@click.option("--batch-size", default=50_000, show_default=True, type=click.IntRange(1), help="Items per batch.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@_command
def export_cmd(index_path, out, fmt, batch_size, overwrite, quiet):
    """Write every item (id, path, root, label, size, mtime, vector) as Parquet or .npy, streamed in batches.

    Parquet loads directly into LanceDB, Milvus, Qdrant, DuckDB or pandas: see docs/scale.md.
    """
    from .export import export_index

    r = export_index(index_path, out, fmt, batch_size=batch_size, progress=not quiet, overwrite=overwrite)
    note = "" if r["exact_vectors"] else " (vectors reconstructed from the compressed index)"
    return r, f"{r['out']}: {r['items']} items, dim {r['dim']}, {r['format']}, {r['bytes']:,} bytes{note}"


@main.command("neighbors")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), help="Output table: .parquet (or .csv).")
@click.option(
    "-k", "--k", "k", default=50, show_default=True, type=click.IntRange(1, 10_000), help="Neighbours per item."
)
@click.option("--min-score", type=float, help="Leave out neighbours scoring below this.")
@click.option(
    "--exclude-duplicates", type=click.FloatRange(0, 1), help="Leave out neighbours scoring at or above this."
)
@click.option(
    "--self-exclude/--no-self-exclude", default=True, show_default=True, help="Leave each item out of its own list."
)
@click.option("--batch-size", default=2048, show_default=True, type=click.IntRange(1), help="Items per search batch.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@_command
def neighbors_cmd(index_path, out, k, min_score, exclude_duplicates, self_exclude, batch_size, overwrite, quiet):
    """Precompute every item's K nearest neighbours (item_id, item_path, neighbor_id, neighbor_path, rank, score).

    Uses the index's own search (exact for Flat, tuned ANN otherwise), in batches with bounded memory.
    """
    from .neighbors import compute_neighbors

    r = compute_neighbors(
        index_path, out, k=k, min_score=min_score, exclude_duplicates=exclude_duplicates, self_exclude=self_exclude,
        batch_size=batch_size, progress=not quiet, overwrite=overwrite,
    )  # fmt: skip
    rate = f" ({r['rows_per_second']:,.0f} rows/s)" if r["rows_per_second"] else ""
    return r, f"{r['out']}: {r['rows']:,} rows for {r['items']:,} items in {r['seconds']:.1f} s{rate}"


@main.command("rebuild")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--index", "index_factory", default="auto", show_default=True, help="FAISS factory string or 'auto'.")
@click.option(
    "--memory-budget", help="Memory the rebuilt index may use, e.g. 2GB [default: the index's, or half the RAM]."
)
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    help="recall@10 to tune for [default: the index's, or 0.95].",
)
@_command
def rebuild_cmd(index_path, index_factory, memory_budget, target_recall, quiet):
    """Retrain INDEX's FAISS index on all its vectors (choose again with 'auto') and re-tune its search.

    Advisable when the collection grew far past what the index was trained for (`simsearch info` says so).
    No image is re-embedded: vectors come from the index (approximations for compressed indexes).
    """
    from .autoindex import rebuild_index

    r = rebuild_index(index_path, index_factory, memory_budget=memory_budget, target_recall=target_recall)
    rec = r["record"]
    recall = f", recall@10 {rec['recall_at_10']}" if rec.get("recall_at_10") is not None else ""
    params = f" ({', '.join(f'{k}={v}' for k, v in rec['params'].items())})" if rec.get("params") else ""
    return r, f"{r['path']}: {r['count']} items now in {r['index_factory']}{params}{recall}, {r['seconds']:.1f} s"


if __name__ == "__main__":  # pragma: no cover
    main()
