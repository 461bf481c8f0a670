"""``index``, ``info``, ``verify``, ``backbones``, ``rebuild``: making and inspecting an index."""

from __future__ import annotations

import click

from ..autoindex import describe
from ..backbones import DEFAULT_BACKBONE, create_backbone, list_backbones
from ..config.autoindex import AutoIndexRecord
from ..config.embedding import PRECISIONS
from ..config.index import INDEX, ITEM_POOLINGS
from ..embed import recorded_settings
from ..engines import list_engines
from ..index import build_index, open_index, verify_index
from ..rebuild import rebuild_index
from ._common import command, main


@main.command("index")
@click.argument("folders", nargs=-1, type=click.Path())
@click.option(
    "--catalog",
    type=click.Path(dir_okay=False),
    help="Index the items of a catalogue (.csv, .parquet, .jsonl: key, image(s), attributes) instead of FOLDERS.",
)
@click.option("--root", type=click.Path(file_okay=False), help="Folder the catalogue's image paths are relative to.")
@click.option(
    "--item-pooling",
    type=click.Choice(ITEM_POOLINGS),
    help="How an item with several photos is scored: its best photo, or their normalised mean [default: max].",
)
@click.option("--out", "-o", type=click.Path(), help="Index directory [default: indexes/<folder or catalogue name>].")
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
@click.option(
    "--vectors-on-disk/--vectors-in-memory",
    default=None,
    help="With --index auto: keep the exact vectors that re-rank candidates in the index file, memory-mapped, and "
    "leave them out of --memory-budget (RAM holds the compressed codes; see docs/scale.md) [default: in memory, "
    "or the index's setting].",
)
@click.option("--prune", is_flag=True, help="Remove entries whose files no longer exist.")
@click.option(
    "--engine",
    type=click.Choice(["auto", *list_engines()]),
    help="Inference engine [default: auto: OpenVINO where installed, else torch; an existing index keeps its own].",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="Inference precision; int8: OpenVINO with the backbone quantised on a sample of the photos (needs "
    "simsearch[int8]) [default: auto: int8 for 2,000+ new photos where measured faster and a retrieval check "
    "holds, else bf16 where the CPU has it natively, else fp32; an existing index keeps its own; docs/precision.md].",
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
    "--max-pixels", default=INDEX.max_pixels, show_default=True, type=click.IntRange(1), help="Refuse larger images."
)
@click.option(
    "--follow-symlinks/--no-follow-symlinks",
    default=INDEX.follow_symlinks,
    show_default=True,
    help="Follow symlinks inside the indexed folders (never to a place outside them).",
)
@click.option("--strict", is_flag=True, help="Fail (exit 1) if any file had to be skipped.")
@click.option("--address", help="With --engine ray: the Ray cluster to use ('auto': the running one) [default: local].")
@click.option(
    "--commit-every", default=INDEX.commit_every, type=click.IntRange(1), hidden=True, help="Save every N photos."
)
@click.option(
    "--augment",
    help="Collection-side augmentation: dba (default for a new index), none, or dba:k=10,rounds=2,... "
    "(see docs/augmentation.md) [default: the index's own setting].",
)
@command
def index_cmd(
    folders, catalog, root, item_pooling, out, backbone, arch, index_factory, memory_budget, target_recall, vectors_on_disk, prune, engine, precision, draft,
    batch_size, workers, max_pixels, follow_symlinks, strict, address, commit_every, augment, quiet,
):  # fmt: skip
    """Embed every image under FOLDERS (recursively), or every item of --catalog, into an index.

    Re-runs embed only new or changed photos and apply attribute-only changes without embedding.
    """

    bb = create_backbone(backbone, arch=arch) if backbone else None
    scale = {"memory_budget": memory_budget, "target_recall": target_recall, "vectors_on_disk": vectors_on_disk}
    r = build_index(
        list(folders) or None, out, catalog=catalog, root=root, item_pooling=item_pooling, backbone=bb, index_factory=index_factory, prune=prune, batch_size=batch_size,
        workers=workers, max_pixels=max_pixels, follow_symlinks=follow_symlinks, progress=not quiet,
        strict=strict, commit_every=commit_every, engine=engine, precision=precision, draft=draft,
        engine_options={"address": address} if address else None, augment=augment, **scale,
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


@main.command("info")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@command
def info_cmd(index_path, quiet):
    """What is in an index and how it was made."""
    with open_index(index_path) as idx:
        info = idx.info()
    keys = ["path", "count", "labels", "skipped", "backbone", "arch", "weights_sha256", "dim", "metric",
            "index_factory", "roots", "created", "updated", "simsearch_version", "format_version", "size_bytes"]  # fmt: skip
    pre = info["preprocessing"]
    text = "\n".join(f"{k:>18}: {info[k]}" for k in keys)
    text += f"\n{'preprocessing':>18}: " + ", ".join(f"{k}={v}" for k, v in pre.items())
    emb = recorded_settings(info.get("extra"), info["count"])
    if emb:
        decoding = "reduced-size JPEG decoding" if emb.draft else "full decoding"
        text += f"\n{'embedding':>18}: {emb.engine} {emb.precision}, {decoding}"
        if emb.calibration:
            cal = emb.calibration
            text += f"\n{'int8 calibration':>18}: {cal.get('count')} photos of the {cal.get('source')}, {cal['digest'][:16]}"
        if emb.reason:
            text += f"\n{'precision chosen':>18}: {emb.reason}"
    m = idx.manifest
    auto = describe(AutoIndexRecord.from_extra(m.extra, str(idx.path)), m.count, m.index_factory)
    info.update({k: v for k, v in auto.items() if k != "lines"})
    text += "".join(f"\n{k:>18}: {v}" for k, v in auto["lines"])
    rec = m.augment_record
    if rec:
        spec = rec.get("spec", {})
        how = (
            f"{spec.get('method')} k={rec.get('k')} ({'auto' if spec.get('k') == 'auto' else 'fixed'}), "
            f"rounds={spec.get('rounds')}, guard={spec.get('guard')}, {rec.get('graph')} graph, "
            f"last update {rec.get('mode')}: {rec.get('recomputed')} recomputed in {rec.get('seconds')} s"
        )
        text += f"\n{'augmentation':>18}: " + (how if m.augmented else "none in this generation (an interrupted run)")
    else:
        text += f"\n{'augmentation':>18}: none"
    return info, text


@main.command("verify")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@command
def verify_cmd(index_path, quiet):
    """Check an index's internal consistency (manifest, vectors, metadata)."""
    problems, stats = verify_index(index_path)
    if problems:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        raise click.ClickException(f"{index_path}: {len(problems)} problem(s) found")
    photos = f", {stats['count']} photos" if stats.get("items", stats["count"]) != stats["count"] else ""
    return {"ok": True, **stats}, f"{index_path}: ok ({stats.get('items', stats['count'])} items{photos})"


@main.command("backbones")
@command
def backbones_cmd(quiet):
    """List registered backbones (any timm model name or a checkpoint path also works)."""
    names = list_backbones()
    return {"backbones": names, "default": DEFAULT_BACKBONE}, "\n".join(
        f"{n}{' (default)' if n == DEFAULT_BACKBONE else ''}" for n in names
    )


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
@click.option(
    "--vectors-on-disk/--vectors-in-memory",
    default=None,
    help="Keep the exact re-ranking vectors in the index file, memory-mapped, outside the memory budget "
    "[default: the index's setting].",
)
@command
def rebuild_cmd(index_path, index_factory, memory_budget, target_recall, vectors_on_disk, quiet):
    """Retrain INDEX's FAISS index on all its vectors (choose again with 'auto') and re-tune its search.

    Advisable when the collection grew far past what the index was trained for (`simsearch info` says so).
    No image is re-embedded: vectors come from the index (approximations for compressed indexes).
    """
    r = rebuild_index(
        index_path, index_factory, memory_budget=memory_budget, target_recall=target_recall,
        vectors_on_disk=vectors_on_disk,
    )  # fmt: skip
    rec = r["record"]
    recall = f", recall@10 {rec['recall_at_10']}" if rec.get("recall_at_10") is not None else ""
    params = f" ({', '.join(f'{k}={v}' for k, v in rec['params'].items())})" if rec.get("params") else ""
    return r, f"{r['path']}: {r['count']} items now in {r['index_factory']}{params}{recall}, {r['seconds']:.1f} s"
