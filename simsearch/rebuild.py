"""``simsearch rebuild``: retrain and re-tune the FAISS index of a saved index on all its vectors (layer: build)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import autoindex
from .errors import IndexFormatError
from .store import MANIFEST, GenerationWriter, load_generation, read_manifest, writer_lock

log = logging.getLogger("simsearch")


def rebuild_index(
    path,
    index_factory: str = autoindex.AUTO,
    *,
    memory_budget=None,
    target_recall: float | None = None,
    progress: bool = False,
) -> dict:
    """Save a new generation whose FAISS index is retrained on all the vectors (metadata unchanged).

    ``index_factory`` is ``"auto"`` or any factory string."""
    t0 = time.perf_counter()
    path = Path(path).expanduser()
    if not (path / MANIFEST).exists():
        raise IndexFormatError(f"no index at {path}")
    with writer_lock(path):
        m = read_manifest(path)
        index, meta = load_generation(path, m)
        meta.close()
        found = m.extra.get("index_auto")
        prev: dict[str, Any] = found if isinstance(found, dict) else {}
        if not autoindex.is_exact_storage(index):
            log.warning(
                "%s stores compressed vectors: retraining on their reconstructions (re-index the images into a new "
                "--out for full accuracy)",
                m.index_factory,
            )
        autoindex.prepare(index)
        ids, xb = autoindex.all_vectors(index)
        factory = (index_factory or autoindex.AUTO).strip()
        auto = factory.lower() == autoindex.AUTO
        cfg: dict[str, Any] = {
            "requested": autoindex.AUTO if auto else factory,
            "memory_budget": autoindex.parse_size(memory_budget)
            if memory_budget is not None
            else prev.get("memory_budget"),
            "target_recall": float(target_recall or prev.get("target_recall") or autoindex.DEFAULT_TARGET_RECALL),
        }
        if "flat_below" in prev:
            cfg["flat_below"] = prev["flat_below"]
        new_index, full, record = autoindex.build(
            np.ascontiguousarray(xb) if not auto else xb,
            ids,
            autoindex.AUTO if auto else factory,
            memory_budget=cfg["memory_budget"],
            target_recall=cfg["target_recall"],
            flat_below=int(cfg.get("flat_below", autoindex.FLAT_BELOW)),
            progress=progress,
        )
        del xb, index
        record["requested"] = cfg["requested"]
        new_m = dataclasses.replace(m, index_factory=full, extra={**m.extra, "index_auto": {**cfg, **record}})
        writer = GenerationWriter(path, new_m, new_index, m, remove_ids=autoindex.remove_ids)
        try:
            writer.update_manifest()  # the new FAISS index is the change
            writer.commit()
        finally:
            writer.close()
    return {
        "path": str(path),
        "count": int(new_index.ntotal),
        "index_factory": full,
        "record": record,
        "seconds": round(time.perf_counter() - t0, 2),
    }
