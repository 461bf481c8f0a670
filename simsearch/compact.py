"""Compaction: fold the live-write journal into a new generation, under the writer lock (layer: build).

Runs in the background of ``simsearch serve`` once enough writes have gathered, and as ``simsearch compact``.
Searches never wait for it: they keep reading the old generation plus the journal until the new manifest is
published, and the journal rows it folded are then ignored (``delta_seq``) and deleted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import autoindex
from .attributes import value_type
from .augment_index import augment_writer, load_base, needs_augmenting, recorded_spec
from .store import GenerationWriter, existing_index, load_generation, read_manifest, writer_lock
from .store.delta import DeltaJournal, Op
from .store.metadata import db_path

log = logging.getLogger("simsearch")


def compact_index(path: str | Path, *, journal: DeltaJournal | None = None, truncate: bool = True) -> dict:
    """Fold every journalled write into a new generation. Returns what was done (``folded`` writes, and
    ``delta_seq``: the last one folded).

    ``truncate=False`` leaves the folded rows in the journal (the new generation ignores them) for the caller to
    delete with :func:`truncate_journal` once it serves the new generation: readers of the old generation keep
    reading them meanwhile instead of finding their generation stale."""
    t0 = time.perf_counter()
    path = existing_index(path)
    with writer_lock(path):
        m = read_manifest(path)
        journal = journal or DeltaJournal(path, m.dim)
        upto = journal.last_seq()
        ops = journal.read(m.delta_seq, upto)
        if not ops:
            return {"path": str(path), "folded": 0, "generation": m.generation, "seconds": 0.0, "delta_seq": upto}
        faiss_index, meta = load_generation(path, m)
        meta.close()
        spec = recorded_spec(m)
        base = load_base(path, m) if spec.enabled else None
        writer = GenerationWriter(path, m, faiss_index, m, remove_ids=autoindex.remove_ids)
        try:
            schema, roots = dict(m.attributes), list(m.roots)
            for op in ops:
                _fold(writer, op, roots, schema)
            writer.update_manifest(delta_seq=upto, attributes=schema, roots=roots)
            if needs_augmenting(writer, spec):
                augment_writer(writer, spec, base)  # incremental: the items the writes touched and their neighbours
            writer.commit()
        finally:
            writer.close()
    if truncate:
        journal.truncate(upto)
    return {
        "path": str(path),
        "folded": len(ops),
        "generation": m.generation + 1,
        "seconds": round(time.perf_counter() - t0, 3),
        "delta_seq": upto,
    }


def truncate_journal(path: str | Path, upto: int) -> None:
    """Delete the journal rows up to ``upto`` (folded by :func:`compact_index` with ``truncate=False``)."""
    path = Path(path).expanduser()
    journal = DeltaJournal(path, read_manifest(path).dim)
    try:
        journal.truncate(upto)
    finally:
        journal.close()


def _fold(writer: GenerationWriter, op: Op, roots: list[str], schema: dict) -> None:
    found = writer.meta.ids_for_keys([op.key]).get(op.key)
    if op.kind == "delete":
        if found is not None:
            writer.remove_items([found])
        return
    for name, value in (op.attributes or {}).items():
        if value is not None:
            schema.setdefault(name, value_type(value) or "str")
    if op.kind == "patch":
        if found is not None:
            current = writer.meta.item(found).attributes
            merged = {k: v for k, v in {**current, **(op.attributes or {})}.items() if v is not None}
            writer.set_attributes([(found, merged)])
        return
    assert op.vectors is not None and op.item is not None
    item_id = found if found is not None else op.item
    if found is not None:
        writer.remove_photos(writer.meta.photo_ids([found]))
        writer.set_attributes([(found, dict(op.attributes or {}))])
    else:
        writer.add_items([(item_id, op.key, dict(op.attributes or {}))])
    rows = []
    for pid, photo in zip(op.photo_ids().tolist(), op.photos, strict=True):
        p = Path(photo)
        root = next((i for i, r in enumerate(roots) if p.is_relative_to(r)), None)
        if root is None:
            roots.append(str(p.parent))
            root = len(roots) - 1
        try:
            st = p.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = 0, 0
        rows.append((pid, item_id, root, db_path(p.relative_to(roots[root]).as_posix()), size, mtime, None))
    writer.update_manifest(roots=list(roots))
    writer.add_photos(op.photo_ids(), op.vectors, rows)
