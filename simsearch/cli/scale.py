"""``duplicates``, ``export``, ``neighbors``: whole-collection jobs."""

from __future__ import annotations

import csv
import io
import logging

import click

from ..duplicates import DEFAULT_THRESHOLD, find_duplicates
from ..export import export_index
from ..gallery import write_duplicates_gallery
from ..index import open_index
from ..neighbors import compute_neighbors
from ._common import command, main, table

log = logging.getLogger("simsearch")


@main.command("duplicates")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option(
    "--threshold", "-t", type=click.FloatRange(0, 1, min_open=True), help="Minimum cosine similarity [default: 0.9]."
)
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (group, id, path, label, score) on stdout.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Also write the groups as an HTML gallery.")
@click.option("--min-size", default=2, show_default=True, type=click.IntRange(2), help="Smallest group to list.")
@command
def duplicates_cmd(index_path, threshold, as_csv, html_out, min_size, quiet):
    """List groups of near-duplicate items (re-uploads, crops, resized or re-encoded copies), largest first.

    Items are grouped when connected by similarity >= threshold; each group starts with its representative
    (the largest file) and shows every member's similarity to it.
    """

    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    with open_index(index_path) as idx:
        groups = find_duplicates(idx, threshold, min_size=min_size)
        if html_out:
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
        blocks.append(f"group {n} ({g.size} items)\n" + table(rows, ["id", "score", "label", "path"]))
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
    "--exclude-duplicates", type=click.FloatRange(0, 1), help="Leave out neighbours scoring at or above this."
)
@click.option(
    "--self-exclude/--no-self-exclude", default=True, show_default=True, help="Leave each item out of its own list."
)
@click.option("--batch-size", default=2048, show_default=True, type=click.IntRange(1), help="Items per search batch.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@command
def neighbors_cmd(index_path, out, k, min_score, exclude_duplicates, self_exclude, batch_size, overwrite, quiet):
    """Precompute every item's K nearest neighbours (item_id, item_path, neighbor_id, neighbor_path, rank, score).

    Uses the index's own search (exact for Flat, tuned ANN otherwise), in batches with bounded memory.
    """
    r = compute_neighbors(
        index_path, out, k=k, min_score=min_score, exclude_duplicates=exclude_duplicates, self_exclude=self_exclude,
        batch_size=batch_size, progress=not quiet, overwrite=overwrite,
    )  # fmt: skip
    rate = f" ({r['rows_per_second']:,.0f} rows/s)" if r["rows_per_second"] else ""
    return r, f"{r['out']}: {r['rows']:,} rows for {r['items']:,} items in {r['seconds']:.1f} s{rate}"
