"""``manifest.json``: the commit point of an index, naming its current generation and how it was made.

Format history (``format_version``):

1. items were files: ``items(id, root, path, size, mtime_ns, label)``.
2. items are products: ``items(id, key, attrs)`` with typed attributes and ``photos(id, item, root, path, ...)``;
   FAISS ids are photo ids; ``attributes`` (the schema), ``item_pooling``, ``items``, ``source`` and
   ``delta_seq`` (live writes folded into this generation) are new. Version 1 indexes open as they are
   (their metadata is migrated in memory, see :mod:`simsearch.store.migrate`) and are written as version 2 by
   the next run that changes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._version import __version__
from ..errors import IndexFormatError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
METRIC = "inner_product"  # on L2-normalised vectors: cosine similarity
ATTRIBUTE_TYPES = ("int", "float", "bool", "str", "tags")
ITEM_POOLINGS = ("max", "mean")
FOLDER_SCHEMA = {"label": "str"}
AUGMENT_KEY = "augment"  # manifest extra: augmentation spec and record (see simsearch.augment_index)


@dataclass(frozen=True)
class Manifest:
    """Everything needed to trust and reuse a saved index (written as ``manifest.json``)."""

    format_version: int
    backbone: str
    arch: str
    weights_sha256: str
    preprocessing: dict
    dim: int
    metric: str
    index_factory: str
    count: int  # vectors (photos) in the FAISS index
    roots: list[str]
    created: str
    updated: str
    simsearch_version: str
    generation: int = 0
    next_id: int = 0
    skipped: int = 0
    extra: dict = field(default_factory=dict)
    items: int = 0
    attributes: dict = field(default_factory=lambda: dict(FOLDER_SCHEMA))
    item_pooling: str = "max"
    source: dict = field(default_factory=lambda: {"kind": "folder"})
    delta_seq: int = 0

    @property
    def vectors_file(self) -> str:
        return f"vectors-{self.generation:06d}.faiss"

    @property
    def metadata_file(self) -> str:
        return f"meta-{self.generation:06d}.sqlite"

    @property
    def augmented_file(self) -> str:
        """The augmented vectors of this generation (same ids as :attr:`vectors_file`), when it has them."""
        return f"augmented-{self.generation:06d}.faiss"

    @property
    def graph_file(self) -> str:
        """The raw vectors' neighbour graph the augmented vectors were computed from (incremental updates)."""
        return f"graph-{self.generation:06d}.npz"

    @property
    def augment_record(self) -> dict | None:
        """``extra["augment"]``: the augmentation spec and how it was computed, or None for an index without."""
        rec = self.extra.get(AUGMENT_KEY)
        return rec if isinstance(rec, dict) else None

    @property
    def augmented(self) -> bool:
        """Whether this generation has augmented vectors (a run that stopped half-way leaves only raw ones)."""
        rec = self.augment_record
        return rec is not None and rec.get("generation") == self.generation

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> Manifest:
        if not isinstance(d, dict):
            raise IndexFormatError(f"{where}: not a JSON object")
        version = d.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION or version < 1:
            raise IndexFormatError(
                f"{where}: format version {version!r} is not supported by simsearch {__version__} "
                f"(supports 1..{FORMAT_VERSION}); upgrade simsearch or rebuild the index"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise IndexFormatError(f"{where}: unknown fields {unknown}; was it written by a newer simsearch?")
        if version == 1:  # items were files with a folder label; counts of items and vectors were the same
            d = {**d, "items": d.get("count", 0)}
        try:
            m = cls(**d)
        except TypeError as e:
            raise IndexFormatError(f"{where}: {e}") from None
        m.validate(where)
        return m

    def validate(self, where: str = "manifest") -> None:
        """Refuse a tampered or inconsistent manifest before any of it reaches file names or paths."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            typ = _TYPES[f.name]
            if not isinstance(v, typ) or (isinstance(v, int) and (isinstance(v, bool) or v < 0)):
                what = "a non-negative integer" if typ is int else f"a JSON {typ.__name__}"
                raise IndexFormatError(f"{where}: field {f.name!r} must be {what}, not {str(v)[:60]!r}")
        if not all(isinstance(r, str) and os.path.isabs(r) for r in self.roots):
            raise IndexFormatError(f"{where}: roots must be absolute folder paths")
        if self.metric != METRIC or self.dim <= 0:
            raise IndexFormatError(f"{where}: invalid metric, dim or count")
        bad = {k: t for k, t in self.attributes.items() if not isinstance(k, str) or t not in ATTRIBUTE_TYPES}
        if bad:
            raise IndexFormatError(f"{where}: invalid attribute types {bad}; known types: {', '.join(ATTRIBUTE_TYPES)}")
        if self.item_pooling not in ITEM_POOLINGS:
            raise IndexFormatError(f"{where}: item_pooling must be one of {ITEM_POOLINGS}, not {self.item_pooling!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


_TYPES = {
    "format_version": int,
    "backbone": str,
    "arch": str,
    "weights_sha256": str,
    "preprocessing": dict,
    "dim": int,
    "metric": str,
    "index_factory": str,
    "count": int,
    "roots": list,
    "created": str,
    "updated": str,
    "simsearch_version": str,
    "generation": int,
    "next_id": int,
    "skipped": int,
    "extra": dict,
    "items": int,
    "attributes": dict,
    "item_pooling": str,
    "source": dict,
    "delta_seq": int,
}


def existing_index(path: str | Path) -> Path:
    """``path`` (``~`` expanded) when it holds an index; else a one-line :class:`IndexFormatError` saying what to do."""
    path = Path(path).expanduser()
    if not (path / MANIFEST).exists():
        if not path.exists():
            raise IndexFormatError(f"no index at {path}: create one with `simsearch index FOLDER --out {path}`")
        raise IndexFormatError(f"{path} is not a simsearch index (no {MANIFEST})")
    return path


def read_manifest(path: Path) -> Manifest:
    where = str(path / MANIFEST)
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{where}: cannot read ({e})") from None
    return Manifest.from_dict(data, where)


def published_generation(path: Path) -> int | None:
    """Generation named by the manifest on disk now (None if unreadable)."""
    try:
        return int(json.loads((path / MANIFEST).read_text(encoding="utf-8"))["generation"])
    except Exception:
        return None
