"""``duplicates``, ``export``, ``neighbors``: whole-collection jobs."""

from __future__ import annotations

import csv
import io
import logging

import click

from ..config import DUPLICATES, LINKAGES
from ..duplicates import describe_rule, find_duplicates, make_rule
from ..export import export_index
from ..gallery import write_duplicates_gallery
from ..index import open_index
from ..neighbors import compute_neighbors
from ._common import command, main, table

log = logging.getLogger("simsearch")


@main.command("duplicates")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option(
    "--threshold", "-t", type=click.FloatRange(0, 1, min_open=True),
    help=f"Cosine similarity at or above which two items are near-duplicates [default: {DUPLICATES.threshold}].",
)  # fmt: skip
@click.option(
    "--hash-distance", type=click.IntRange(-1, 64),
    help="Perceptual-hash distance (bits of 64) at or below which a lower cosine suffices; -1: cosine only "
    f"[default: {DUPLICATES.hash_distance}].",
)  # fmt: skip
@click.option(
    "--hash-threshold", type=click.FloatRange(-1, 1),
    help=f"The lower cosine bar for pairs with close hashes [default: {DUPLICATES.hash_threshold}].",
)  # fmt: skip
@click.option(
    "--linkage", type=click.Choice(LINKAGES),
    help="star: every member a near-duplicate of the representative; complete: of every member; single: chains "
    f"[default: {DUPLICATES.linkage}].",
)  # fmt: skip
@click.option(
    "--csv", "as_csv", is_flag=True, help="Print CSV (group, id, path, label, score, hash, reason) on stdout."
)
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Also write the groups as an HTML gallery.")
@click.option("--min-size", default=2, show_default=True, type=click.IntRange(2), help="Smallest group to list.")
@command
def duplicates_cmd(index_path, threshold, hash_distance, hash_threshold, linkage, as_csv, html_out, min_size, quiet):
    """List groups of near-duplicate items (re-uploads, crops, resized, re-encoded, grayscale or mirrored copies),
    largest first.

    A pair is a near-duplicate when its cosine similarity reaches --threshold, or when the images' perceptual
    hashes are within --hash-distance and the cosine reaches --hash-threshold. Each group starts with its
    representative (the most original-looking member: most pixels, then colour, then oldest, then largest file)
    and shows each member's cosine, hash distance and reason relative to it, and the group's weakest link.
    """
    rule = make_rule(threshold, hash_distance=hash_distance, hash_threshold=hash_threshold, linkage=linkage)
    with open_index(index_path) as idx:
        groups = find_duplicates(idx, rule=rule, min_size=min_size)
        if html_out:
            write_duplicates_gallery(html_out, idx, groups, rule)
            log.info("gallery written to %s", html_out)
    data = {"index": index_path, "threshold": rule.threshold, "hash_distance": rule.hash_distance,
            "hash_threshold": rule.hash_threshold, "linkage": rule.linkage,
            "groups": [g.to_dict() for g in groups]}  # fmt: skip
    if html_out:
        data["html"] = html_out
    if as_csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["group", "size", "id", "path", "label", "score", "hash_distance", "reason"])
        for n, g in enumerate(groups, 1):
            for it, s, h, r in zip(g.items, g.scores, g.hash_distances, g.reasons, strict=True):
                w.writerow([n, g.size, it.id, it.path, it.label or "", f"{s:.6f}", "" if h is None else h,
                            r or ("representative" if it is g.items[0] else "chain")])  # fmt: skip
        return data, buf.getvalue().rstrip("\n")
    what = describe_rule(rule)
    if not groups:
        return data, f"no near-duplicates ({what})"
    blocks = [f"{len(groups)} groups, {sum(g.size for g in groups)} items ({what})"]
    for n, g in enumerate(groups, 1):
        rows = [[it.id, "-" if i == 0 else f"{s:.4f}", "-" if i == 0 or h is None else h,
                 "representative" if i == 0 else (r or "chain"), it.label, it.path]
                for i, (it, s, h, r) in enumerate(zip(g.items, g.scores, g.hash_distances, g.reasons, strict=True))]  # fmt: skip
        wl = g.weakest
        weakest = (f"; weakest link {wl.a}-{wl.b}: cosine {wl.score:.4f}, hash distance "
                   f"{'-' if wl.hash_distance is None else wl.hash_distance} ({wl.reason})") if wl else ""  # fmt: skip
        blocks.append(f"group {n} ({g.size} items{weakest})\n"
                      + table(rows, ["id", "score", "hash", "reason", "label", "path"]))  # fmt: skip
    return data, "\n\n".join(blocks)


@main.command("export")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), help="A .parquet file, or a folder for npy.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "npy"]), help="[default: from --out's extension]")
@click.option("--batch-size", default=50_000, show_default=True, type=click.IntRange(1), help="Items per batch.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@command
def export_cmd(index_path, out, fmt, batch_size, overwrite, quiet):
    """Write every item (id, path, root, label, size, mtime, vector) as Parquet or .npy, streamed in batches.

    Parquet loads directly into LanceDB, Milvus, Qdrant, DuckDB or pandas: see docs/scale.md.
    """
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
    "--exclude-duplicates",
    type=click.FloatRange(0, 1),
    help="Leave out the item's near-duplicates: neighbours scoring at or above this (a cosine), or with a close "
    "perceptual hash (the duplicates rule's --hash-distance and --hash-threshold defaults).",
)
@click.option(
    "--self-exclude/--no-self-exclude", default=True, show_default=True, help="Leave each item out of its own list."
)
@click.option("--batch-size", default=2048, show_default=True, type=click.IntRange(1), help="Items per search batch.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option(
    "--augment",
    type=click.Choice(["auto", "on", "none"]),
    default="auto",
    show_default=True,
    help="Lists in the augmented order (auto: when the index has augmented vectors) or the raw one (none).",
)
@command
def neighbors_cmd(
    index_path, out, k, min_score, exclude_duplicates, self_exclude, batch_size, overwrite, augment, quiet
):
    """Precompute every item's K nearest neighbours (item_id, item_path, neighbor_id, neighbor_path, rank, score).

    Uses the index's own search (exact for Flat, tuned ANN otherwise), in batches with bounded memory.
    """
    r = compute_neighbors(
        index_path, out, k=k, min_score=min_score, exclude_duplicates=exclude_duplicates, self_exclude=self_exclude,
        batch_size=batch_size, progress=not quiet, overwrite=overwrite, augment=augment,
    )  # fmt: skip
    rate = f" ({r['rows_per_second']:,.0f} rows/s)" if r["rows_per_second"] else ""
    return r, f"{r['out']}: {r['rows']:,} rows for {r['items']:,} items in {r['seconds']:.1f} s{rate}"
