"""``simsearch rebuild``: retrain and re-tune the FAISS index of a saved index on all its vectors (layer: build)."""

from __future__ import annotations

import dataclasses
import time

from . import autoindex
from .augment_index import augment_writer, load_base, needs_augmenting, recorded_spec
from .config.autoindex import INDEX_AUTO_KEY, AutoIndexRecord
from .store import MANIFEST, GenerationWriter, existing_index, load_generation, read_manifest, writer_lock


def rebuild_index(
    path,
    index_factory: str = autoindex.AUTO,
    *,
    memory_budget=None,
    target_recall: float | None = None,
    vectors_on_disk: bool | None = None,
    progress: bool = False,
) -> dict:
    """Save a new generation whose FAISS index is retrained on all the vectors (metadata unchanged).

    ``index_factory`` is ``"auto"`` or any factory string."""
    t0 = time.perf_counter()
    path = existing_index(path)
    with writer_lock(path):
        m = read_manifest(path)
        index, meta = load_generation(path, m)
        meta.close()
        spec = recorded_spec(m)
        base = load_base(path, m) if spec.enabled else None
        previous = AutoIndexRecord.from_extra(m.extra, str(path / MANIFEST))
        new_index, record = autoindex.rebuild(
            index, index_factory, previous, memory_budget=memory_budget, target_recall=target_recall,
            vectors_on_disk=vectors_on_disk, progress=progress,
        )  # fmt: skip
        del index
        full = str(record.choice)
        new_m = dataclasses.replace(m, index_factory=full, extra={**m.extra, INDEX_AUTO_KEY: record.to_dict()})
        writer = GenerationWriter(path, new_m, new_index, m, remove_ids=autoindex.remove_ids)
        try:
            writer.update_manifest()  # the new FAISS index is the change
            if needs_augmenting(writer, spec):
                augment_writer(writer, spec, base)  # same vectors: the augmented ones move into the new index kind
            writer.commit()
        finally:
            writer.close()
    return {
        "path": str(path),
        "count": int(new_index.ntotal),
        "index_factory": full,
        "record": record.to_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
