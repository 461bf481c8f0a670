"""Bring an index in line with its source: diff what is stored against what is there now, embed only what
changed, write through the generation writer, committing every few thousand photos (layer: build)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .embed import Embedder
from .errors import SimsearchError
from .images import load_image
from .sources import PhotoSpec, Source
from .store import GenerationWriter, db_path, py_path

log = logging.getLogger("simsearch")


@dataclass
class UpdateReport:
    """What an ``index`` run did. Counts are items, except ``scanned``/``embedded`` (photos)."""

    path: str
    scanned: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    attributes_changed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: int = 0
    count: int = 0
    photos: int = 0
    embedded: int = 0
    seconds: float = 0.0
    embedding: dict | None = None

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "skipped"}
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return d


@dataclass(frozen=True)
class _Task:
    key: str
    item_id: int | None  # None: a new item, created with its first photo that embeds
    photo: PhotoSpec
    replaces: int | None  # the photo id this one replaces (same file, changed)
    attributes: dict  # of the item (used when it is created)
    replaces_item: int | None = None  # a folder item whose file changed is replaced by a new item (new id)


def _still_unreadable(path, max_pixels: int | None) -> bool:
    """Whether a file skipped by an earlier run still fails to decode (decoding without loading the model)."""
    try:
        load_image(path, max_pixels=max_pixels).close()
    except SimsearchError:
        return True
    return False


def sync(
    writer: GenerationWriter,
    source: Source,
    report: UpdateReport,
    *,
    prune: bool,
    commit_every: int,
    progress: bool,
    get_embedder: Callable[[list], Embedder],
    max_pixels: int | None,
) -> None:
    db = writer.db  # the writer reconnects after each commit: use writer.db after embedding starts
    items = {key: (i, attrs) for i, key, attrs in _item_rows(writer)}
    photos: dict[int, list[tuple[int, int, str, int, int]]] = {}
    for pid, item, root, path, size, mtime in db.execute("SELECT id, item, root, path, size, mtime_ns FROM photos"):
        photos.setdefault(item, []).append((pid, root, py_path(path), size, mtime))
    known_skips = {
        (r, py_path(p)): (s, t, why)
        for r, p, s, t, why in db.execute("SELECT root, path, size, mtime_ns, reason FROM skipped")
    }
    report.scanned = source.photo_count
    skip_seen: set[tuple[int, str]] = set()
    for r, rel, size, mtime, why, abspath in source.problems:
        skip_seen.add((r, rel))
        report.skipped.append((abspath, why))
        if known_skips.get((r, rel)) != (size, mtime, why):
            log.warning("skipped %s: %s", abspath, why)
            writer.skip([(r, db_path(rel), size, mtime, why)])

    tasks: list[_Task] = []
    attr_updates: list[tuple[int, dict]] = []
    drop_photos: list[int] = []
    seen_keys: set[str] = set()
    for spec in source.items:
        seen_keys.add(spec.key)
        current = items.get(spec.key)
        stored = {(r, p): (pid, s, t) for pid, r, p, s, t in photos.get(current[0], [])} if current else {}
        changed = False
        for ph in spec.photos:
            old = stored.pop(ph.ident, None)
            if old is not None and old[1:] == (ph.size, ph.mtime_ns):
                continue
            prev = known_skips.get(ph.ident) if old is None else None
            if prev is not None and prev[:2] == (ph.size, ph.mtime_ns) and _still_unreadable(ph.path, max_pixels):
                skip_seen.add(ph.ident)
                report.skipped.append((str(ph.path), f"{prev[2]} (unchanged since it was skipped)"))
                continue
            if source.kind == "folder" and current is not None:  # a changed file: a new item, as a new file
                tasks.append(_Task(spec.key, None, ph, None, spec.attributes, current[0]))
            else:
                tasks.append(
                    _Task(spec.key, current[0] if current else None, ph, old[0] if old else None, spec.attributes)
                )
            changed = True
        if current is not None:
            if stored:  # photos no longer listed for this item
                drop_photos += [pid for pid, _, _ in stored.values()]
                changed = True
            if spec.attributes != current[1]:
                attr_updates.append((current[0], spec.attributes))
            if not changed:
                report.unchanged += 1
        elif not spec.photos:
            report.skipped.append((spec.key, "no readable photo"))
    report.attributes_changed = len(attr_updates)
    writer.set_attributes(attr_updates)
    writer.remove_photos(drop_photos)

    scanned_roots = source.scanned_roots
    gone = [
        (key, i)
        for key, (i, _) in items.items()
        if key not in seen_keys
        and (source.kind == "catalog" or all(r in scanned_roots for _, r, _, _, _ in photos.get(i, [])))
    ]
    report.missing = len(gone)
    if prune:
        writer.remove_items([i for _, i in gone])
        report.removed += len(gone)
        writer.unskip([(r, db_path(p)) for r, p in known_skips if r in scanned_roots and (r, p) not in skip_seen])
    elif gone:
        log.warning("%d indexed items no longer exist in the source; run with --prune to remove them", len(gone))

    if tasks:
        _embed_tasks(writer, tasks, report, commit_every, progress, get_embedder)
    orphans = [int(r[0]) for r in writer.db.execute("SELECT id FROM items WHERE id NOT IN (SELECT item FROM photos)")]
    writer.remove_items(orphans)  # items whose every photo became unreadable
    report.removed += len(orphans)


def _item_rows(writer: GenerationWriter):
    for i, key, attrs in writer.db.execute("SELECT id, key, attrs FROM items"):
        yield i, key, json.loads(attrs)


def _embed_tasks(writer, tasks, report, commit_every, progress, get_embedder) -> None:
    created: dict[str, int] = {}
    updated: set[str] = set()
    pending = 0
    embedder = get_embedder([t.photo.path for t in tasks])  # the photos to embed (what int8 calibrates on)
    for batch in embedder.embed_files(tasks, path_of=lambda t: t.photo.path, progress=progress):
        ids = writer.allocate_ids(len(batch.items))
        new_items, rows = [], []
        hashes = batch.phashes if len(batch.phashes) == len(batch.items) else [None] * len(batch.items)
        for pid, t, phash in zip(ids.tolist(), batch.items, hashes, strict=True):
            item_id = t.item_id if t.item_id is not None else created.get(t.key)
            if item_id is None:
                item_id = created[t.key] = pid
                new_items.append((pid, t.key, t.attributes))
            elif t.item_id is not None:
                updated.add(t.key)
            rows.append((pid, item_id, t.photo.root, db_path(t.photo.relpath), t.photo.size, t.photo.mtime_ns, phash))
        replaced = [t.replaces for t in batch.items if t.replaces is not None]
        replaced += [t.replaces for t, _ in batch.skipped if t.replaces is not None]
        writer.remove_photos(replaced)
        gone_items = [t.replaces_item for t in batch.items if t.replaces_item is not None]
        gone_items += [t.replaces_item for t, _ in batch.skipped if t.replaces_item is not None]
        writer.remove_items(gone_items)
        report.removed += sum(1 for t, _ in batch.skipped if t.replaces_item is not None)
        updated.update(t.key for t in batch.items if t.replaces_item is not None)
        writer.add_items(new_items)
        vectors = batch.vectors if batch.vectors is not None else np.zeros((0, writer.m.dim), np.float32)
        writer.add_photos(ids, vectors, rows)
        writer.unskip([(t.photo.root, db_path(t.photo.relpath)) for t in batch.items])
        writer.skip(
            [(t.photo.root, db_path(t.photo.relpath), t.photo.size, t.photo.mtime_ns, why) for t, why in batch.skipped]
        )
        report.skipped += [(str(t.photo.path), why) for t, why in batch.skipped]
        report.embedded += len(batch.items)
        pending += len(batch.items) + len(batch.skipped)
        if pending >= commit_every:
            writer.commit()
            pending = 0
    report.added += len(set(created) - updated)
    report.updated += len(updated)
