"""``build_index``: scan a folder or read a catalogue → diff against the index → embed → write (layer: build).

The steps live in :mod:`simsearch.sources` (what should be indexed), :mod:`simsearch.sync` (diff, embed, write)
and :mod:`simsearch.store` (the one writer); this module opens the index, picks the backbone and the embedder,
and turns failures into messages that say what is intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import autoindex
from ._version import __version__
from .augment_index import AugmentBase, augment_writer, load_base, needs_augmenting, requested_spec
from .backbones import DEFAULT_BACKBONE, Backbone, check_backbone, create_backbone
from .config.augment import AugmentSpec
from .config.autoindex import INDEX_AUTO_KEY, AutoIndexRecord, AutoIndexSpec
from .config.embedding import EmbeddingSettings
from .config.index import INDEX, ITEM_POOLINGS
from .embed import Embedder, embedder_for_index, recorded_settings
from .errors import SimsearchError
from .sources import catalog_source, folder_source, merged_schema
from .store import (
    DEFAULT_FACTORY,
    FORMAT_VERSION,
    MANIFEST,
    METRIC,
    GenerationWriter,
    Manifest,
    load_generation,
    new_faiss_index,
    now,
    read_manifest,
    writer_lock,
)
from .sync import UpdateReport, sync

log = logging.getLogger("simsearch")

DEFAULT_INDEX_DIR = Path("indexes")

__all__ = ["UpdateReport", "build_index", "default_index_path", "run_build"]


def default_index_path(roots: Sequence[str | Path]) -> Path:
    """``indexes/<name of the first folder or catalogue>``."""
    first = Path(roots[0]).expanduser().resolve()
    return DEFAULT_INDEX_DIR / ((first.stem if first.is_file() else first.name) or "index")


def build_index(roots=None, out: str | Path | None = None, **kwargs) -> UpdateReport:
    """Index every image under ``roots`` (folders) or every row of ``catalog=`` into ``out``, incrementally.

    On an existing index only new or changed photos are embedded and attribute-only changes are applied without
    embedding; with ``prune`` items that vanished from the source are removed. Progress is committed every
    ``commit_every`` photos, so an interrupted run (even by ``kill -9``) resumes where it stopped. Files that
    cannot be used are skipped with a reason (logged, in the report and in ``skipped.csv``); with ``strict`` any
    skipped file makes the run fail once the rest is saved. Raises :class:`IndexLockedError` when another process
    is writing the index.

    Keyword arguments: ``catalog`` (a .csv/.parquet/.jsonl file; ``root`` for its relative image paths),
    ``backbone``, ``index_factory`` (``auto`` or a FAISS factory string), ``item_pooling`` (max|mean), ``prune``,
    ``engine`` (a registered engine name or a callable) / ``precision`` / ``draft`` / ``batch_size`` /
    ``workers`` (recorded in the manifest; an existing index keeps its own), ``max_pixels``, ``follow_symlinks``,
    ``commit_every``, ``progress``, ``embedder``, ``strict``, ``memory_budget``, ``target_recall``,
    ``vectors_on_disk`` (with ``auto``: keep the exact re-ranking vectors in the index file, memory-mapped),
    ``engine_options`` (for the engine's factory, e.g. ``{"address": "auto"}`` with ``engine="ray"``),
    ``augment`` (an :class:`~simsearch.config.augment.AugmentSpec` or its text form ``dba``, ``none``,
    ``dba:k=10,rounds=2``; default: the index's own setting, or augmentation for a new index).
    """
    report, _ = run_build(roots, out, **kwargs)
    return report


def run_build(
    roots=None,
    out: str | Path | None = None,
    *,
    catalog: str | Path | None = None,
    root: str | Path | None = None,
    backbone: Backbone | str | None = None,
    index_factory: str | None = None,
    item_pooling: str | None = None,
    prune: bool = INDEX.prune,
    batch_size: int | None = None,
    workers: int | None = None,
    engine=None,
    precision: str | None = None,
    draft: bool | None = None,
    max_pixels: int | None = INDEX.max_pixels,
    follow_symlinks: bool = INDEX.follow_symlinks,
    commit_every: int = INDEX.commit_every,
    progress: bool = False,
    embedder: Embedder | None = None,
    strict: bool = INDEX.strict,
    memory_budget: int | str | None = None,
    target_recall: float | None = None,
    vectors_on_disk: bool | None = None,
    engine_options: dict | None = None,
    augment: AugmentSpec | str | None = None,
) -> tuple[UpdateReport, Backbone | None]:
    """:func:`build_index`, also returning the backbone it loaded (None if none was), for reuse by the caller."""
    if commit_every < 1:
        raise SimsearchError(f"commit_every must be at least 1, not {commit_every}")
    t0 = time.perf_counter()
    folders = _folders(roots, catalog)
    cat_path = Path(catalog).expanduser().resolve() if catalog is not None else None
    if cat_path is not None and not cat_path.is_file():
        raise SimsearchError(f"catalogue not found: {cat_path}")
    path = Path(out).expanduser() if out is not None else default_index_path(folders or [cat_path or Path(".")])
    report = UpdateReport(path=str(path))
    with writer_lock(path):
        existing = read_manifest(path) if (path / MANIFEST).exists() else None
        if embedder is not None:
            backbone = embedder.backbone
        bb = None
        if existing is None or backbone is not None:
            bb = backbone if isinstance(backbone, Backbone) else create_backbone(backbone or DEFAULT_BACKBONE)
        if existing is not None:
            manifest, faiss_index = _reopen(
                path, existing, bb, index_factory, item_pooling, memory_budget, target_recall, vectors_on_disk
            )
        else:
            assert bb is not None
            manifest, faiss_index = _new_manifest(
                bb, index_factory, item_pooling, memory_budget, target_recall, vectors_on_disk
            )
        augment_spec = requested_spec(existing, augment)
        augment_base = load_base(path, existing) if augment_spec.enabled else None
        if cat_path is not None:
            source = catalog_source(cat_path, manifest.roots, root=Path(root).expanduser() if root else None)
        else:
            source = folder_source(folders, manifest.roots, follow_symlinks=follow_symlinks)
        schema = merged_schema(manifest.attributes if existing else {}, source.schema, str(path))
        manifest = dataclasses.replace(manifest, roots=source.roots, attributes=schema, source=source.record)
        state = _EmbedderState(
            bb, embedder, engine, precision, draft, batch_size, workers, max_pixels, path, engine_options
        )
        writer = None
        try:
            writer = GenerationWriter(path, manifest, faiss_index, existing, remove_ids=autoindex.remove_ids)
            sync(
                writer,
                source,
                report,
                prune=prune,
                commit_every=commit_every,
                progress=progress,
                get_embedder=lambda paths: state.get(writer, paths),
                max_pixels=max_pixels,
            )
            _finish(writer, augment_spec, augment_base, progress)
        except (OSError, sqlite3.Error) as e:  # e.g. disk full while writing the next version's temp files
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            saved = writer.m.items if writer is not None else manifest.items
            where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
            raise SimsearchError(
                f"indexing stopped: {reason}{where}; {path} is intact at its last saved version ({saved} items)"
            ) from None
        except KeyboardInterrupt:
            if writer is not None:  # save what is done, so the next run goes on from here
                with contextlib.suppress(Exception):
                    writer.commit()
            raise
        finally:
            if writer is not None:
                writer.close()
        report.count, report.photos = writer.m.items, writer.m.count
        report.embedding = state.settings.to_dict() if state.settings else None
    report.seconds = round(time.perf_counter() - t0, 3)
    if strict and report.skipped:
        first_path, first_reason = report.skipped[0]
        raise SimsearchError(
            f"{len(report.skipped)} file(s) could not be indexed (--strict), e.g. {first_path}: {first_reason}; "
            f"all are listed in {path / 'skipped.csv'} (the other images were saved)"
        )
    return report, state.bb


def _folders(roots, catalog) -> list[Path]:
    if roots is None:
        if catalog is None:
            raise SimsearchError("give at least one folder to index, or --catalog FILE")
        return []
    if catalog is not None:
        raise SimsearchError("give folders or --catalog, not both")
    if isinstance(roots, (str, Path)):
        roots = [roots]
    folders = [Path(r).expanduser().resolve() for r in roots]
    if not folders:
        raise SimsearchError("give at least one folder to index")
    for r in folders:
        if not r.exists():
            raise SimsearchError(f"folder not found: {r}")
    return folders


def _new_manifest(bb: Backbone, index_factory, item_pooling, memory_budget, target_recall, vectors_on_disk=None):
    auto = (index_factory or INDEX.index_factory).strip().lower() == "auto"  # decided at the end of the run (autoindex)
    faiss_index, factory = new_faiss_index(bb.dim, DEFAULT_FACTORY if auto else index_factory)
    stamp = now()
    extra = dict(bb.extra)
    if auto:
        spec = AutoIndexSpec.from_options(memory_budget, target_recall, vectors_on_disk=bool(vectors_on_disk))
        extra[INDEX_AUTO_KEY] = AutoIndexRecord.new(spec).to_dict()
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        backbone=bb.name,
        arch=bb.arch,
        weights_sha256=bb.weights_sha256,
        preprocessing=bb.preprocessing(),
        dim=bb.dim,
        metric=METRIC,
        index_factory=factory,
        count=0,
        roots=[],
        created=stamp,
        updated=stamp,
        simsearch_version=__version__,
        extra=extra,
        item_pooling=_pooling(item_pooling),
    )
    return manifest, faiss_index


def _pooling(value: str | None) -> str:
    value = (value or INDEX.item_pooling).lower()
    if value not in ITEM_POOLINGS:
        raise SimsearchError(f"item pooling must be one of {', '.join(ITEM_POOLINGS)}, not {value!r}")
    return value


def _reopen(
    path, existing: Manifest, bb, index_factory, item_pooling, memory_budget, target_recall, vectors_on_disk=None
):
    if bb is not None:
        check_backbone(existing, bb, where=str(path))
    extra = dict(existing.extra)
    record = AutoIndexRecord.from_extra(extra, str(path / MANIFEST))
    if record is not None and (memory_budget, target_recall, vectors_on_disk) != (None, None, None):
        extra[INDEX_AUTO_KEY] = record.with_settings(memory_budget, target_recall, vectors_on_disk).to_dict()
    if index_factory == "auto" and "index_auto" in extra:
        index_factory = None  # the index is already automatic
    if index_factory and new_faiss_index(existing.dim, index_factory)[1] != existing.index_factory:
        raise SimsearchError(
            f"{path} uses FAISS index {existing.index_factory!r}, not {index_factory!r}; write to a new --out to change it"
        )
    if item_pooling is not None and _pooling(item_pooling) != existing.item_pooling:
        raise SimsearchError(
            f"{path} scores items by the {existing.item_pooling} of their photos; write to a new --out to change it"
        )
    faiss_index, meta = load_generation(path, existing)
    meta.close()
    return dataclasses.replace(existing, extra=extra), faiss_index


def _finish(
    writer: GenerationWriter, augment: AugmentSpec, base: AugmentBase | None = None, progress: bool = False
) -> None:
    """Final commit; an ``auto`` index chooses again for its final size first, then the vectors are augmented."""
    writer.flush_training(final=True)
    if writer.dirty:
        record = AutoIndexRecord.from_extra(writer.m.extra, str(writer.path / MANIFEST))
        changed = autoindex.finalize(writer.faiss, record)
        if changed is not None:
            new_index, record = changed
            extra = {**writer.m.extra, INDEX_AUTO_KEY: record.to_dict()}
            if new_index is not None:
                writer.replace_index(new_index, str(record.choice), extra)
            else:
                writer.update_manifest(extra=extra)  # still exact search: the record only
    if needs_augmenting(writer, augment):
        augment_writer(writer, augment, base, progress=progress)
    writer.commit()


@dataclasses.dataclass
class _EmbedderState:
    """The embedder of one run, created when the first photo needs embedding (the model loads only then)."""

    bb: Backbone | None
    embedder: Embedder | None
    engine: Any
    precision: str | None
    draft: bool | None
    batch_size: int | None
    workers: int | None
    max_pixels: int | None
    path: Path
    engine_options: dict | None = None
    settings: EmbeddingSettings | None = None

    def get(self, writer: GenerationWriter, paths: list | None = None) -> Embedder:
        m = writer.m
        if self.embedder is None:
            if self.bb is None:
                self.bb = create_backbone(m.backbone)
                check_backbone(m, self.bb, where=str(self.path))
            self.embedder, self.settings = embedder_for_index(
                self.bb, m.extra, m.count, engine=self.engine, precision=self.precision, draft=self.draft,
                where=str(self.path), batch_size=self.batch_size, workers=self.workers, max_pixels=self.max_pixels,
                engine_options=self.engine_options, paths=paths,
            )  # fmt: skip
        else:
            self.settings = recorded_settings(m.extra, m.count) or self.embedder.settings()
        writer.update_manifest(extra={**m.extra, "embedding": self.settings.to_dict()})  # queries embed the same way
        return self.embedder
