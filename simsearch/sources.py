"""What should be in an index: the items of a folder scan or of a catalogue file (layer: build).

A folder gives one item per image file (key = path relative to the folder, attribute ``label`` = the parent
folder's name); a catalogue gives one item per row (its key, typed attributes and one or more photos).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import read_catalog
from .errors import SimsearchError
from .images import ImageFileInfo, scan
from .store import folder_key, label_from_path

log = logging.getLogger("simsearch")


@dataclass(frozen=True)
class PhotoSpec:
    """A photo file as found now."""

    root: int  # index into the manifest's roots
    relpath: str
    size: int
    mtime_ns: int
    path: Path  # absolute

    @property
    def ident(self) -> tuple[int, str]:
        return (self.root, self.relpath)


@dataclass(frozen=True)
class ItemSpec:
    key: str
    photos: tuple[PhotoSpec, ...]
    attributes: dict


@dataclass
class Source:
    """The desired state: items, the attribute schema, the roots, and files that could not even be listed."""

    kind: str  # folder | catalog
    items: list[ItemSpec]
    schema: dict[str, str]
    roots: list[str]
    scanned_roots: set[int]  # a folder run looks only at these roots for vanished files
    problems: list[tuple[int, str, int, int, str, str]] = field(
        default_factory=list
    )  # root, relpath, size, mtime, why, abspath
    record: dict = field(default_factory=dict)  # what the manifest records as its source

    @property
    def photo_count(self) -> int:
        return sum(len(it.photos) for it in self.items)


def _root_index(roots: list[str], root: Path) -> int:
    if str(root) not in roots:
        roots.append(str(root))
    return roots.index(str(root))


def folder_source(folders: Sequence[Path], roots: list[str], *, follow_symlinks: bool = False) -> Source:
    """One item per image file under ``folders`` (``roots`` is the index's list, extended in place)."""
    roots = list(roots)
    idx = {r: _root_index(roots, r) for r in folders}
    items: list[ItemSpec] = []
    problems: list = []
    for r in folders:
        i = idx[r]

        def skipped(f: ImageFileInfo, why: str, i: int = i) -> None:
            problems.append((i, f.relpath, f.size, f.mtime_ns, why, str(f.path)))

        for f in scan([r], follow_symlinks=follow_symlinks, on_skip=skipped):
            label = label_from_path(f.relpath)
            items.append(
                ItemSpec(
                    folder_key(roots, i, f.relpath),
                    (PhotoSpec(i, f.relpath, f.size, f.mtime_ns, f.path),),
                    {} if label is None else {"label": label},
                )
            )
    return Source("folder", items, {"label": "str"}, roots, set(idx.values()), problems, {"kind": "folder"})


def catalog_source(path: Path, roots: list[str], *, root: Path | None = None) -> Source:
    """One item per row of a catalogue file; image paths are relative to ``root`` (default: the file's folder)."""
    cat = read_catalog(path, root=root)
    base = (root or path.parent).expanduser().resolve()
    roots = list(roots)
    problems: list = []
    items = []
    for row in cat.rows:
        photos = []
        for img in row.images:
            p = Path(img)
            try:
                rel_root, rel = base, p.relative_to(base).as_posix()
            except ValueError:  # outside the catalogue's root: its own folder becomes a root
                rel_root, rel = p.parent, p.name
            r = _root_index(roots, rel_root)
            try:
                st = os.stat(p)
            except OSError as e:
                problems.append((r, rel, 0, 0, f"row {row.line} ({row.key}): {e.strerror or 'cannot read'}", str(p)))
                continue
            photos.append(PhotoSpec(r, rel, st.st_size, st.st_mtime_ns, p))
        items.append(ItemSpec(row.key, tuple(photos), dict(row.attributes)))
    record = {"kind": "catalog", "path": str(path.expanduser().resolve()), "root": str(base)}
    return Source("catalog", items, dict(cat.schema), roots, set(range(len(roots))), problems, record)


def merged_schema(old: dict[str, str], new: dict[str, str], where: str) -> dict[str, str]:
    """The index's attribute types after this run; an attribute may not change type."""
    out = dict(old)
    for name, typ in new.items():
        prev = out.get(name)
        if prev is not None and prev != typ and {prev, typ} != {"int", "float"}:
            raise SimsearchError(
                f"{where}: attribute {name!r} holds {prev} values in the index but {typ} values now; "
                "convert the column back, or build a new index with --out"
            )
        out[name] = "float" if {prev, typ} == {"int", "float"} else typ
    return out
