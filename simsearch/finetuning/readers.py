"""Reading fine-tuning inputs: labels CSV (``path,label[,split]``), pairs CSV (``left,right,label[,split]``) or a
folder of class folders; paths resolved and checked to exist, other splits (e.g. ``test``) left out."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

from ..errors import SimsearchError
from ..evaluate import select_classes
from ..images import scan
from ..store import label_from_path

log = logging.getLogger("simsearch")

LABEL_COLUMNS = {"path", "label"}
PAIR_COLUMNS = {"left", "right", "label"}
OPTIONAL_COLUMNS = {"split"}
TRAIN_SPLITS = {"", "train", "training"}
VAL_SPLITS = {"val", "valid", "validation", "dev"}


def _read_csv(path: Path, required: set[str], what: str) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            allowed = required | OPTIONAL_COLUMNS
            if not required <= set(fields):
                raise SimsearchError(
                    f"{path}: a {what} CSV needs a header with columns {','.join(sorted(required))} "
                    f"(found {','.join(fields) or 'no header'})"
                )
            unknown = [c for c in fields if c not in allowed]
            if unknown:
                raise SimsearchError(
                    f"{path}: unknown column(s) {', '.join(unknown)}; a {what} CSV has "
                    f"{','.join(sorted(required))} and optionally split"
                )
            rows = []
            for n, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                if any(not row.get(c) for c in required):
                    raise SimsearchError(f"{path}, line {n}: empty {', '.join(c for c in required if not row.get(c))}")
                row["_line"] = n
                rows.append(row)
    except OSError as e:
        raise SimsearchError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SimsearchError(f"{path}: not a UTF-8 text CSV file") from None
    if not rows:
        raise SimsearchError(f"{path}: no rows")
    return rows


def _resolve(p: str, root: Path) -> Path:
    q = Path(p).expanduser()
    return (q if q.is_absolute() else root / q).resolve()


def _check_exist(paths: list[Path], where: str) -> None:
    missing = sorted({str(p) for p in paths if not p.is_file()})
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise SimsearchError(f"{where}: {len(missing)} image file(s) not found:\n  {shown}{more}")


def _split_of(row: dict, where: str) -> str | None:
    """'train', 'val', or None for rows of another split (e.g. test), which are left out."""
    s = row.get("split", "").lower()
    if s in TRAIN_SPLITS:
        return "train"
    if s in VAL_SPLITS:
        return "val"
    return None


def read_labels(
    csv_path: str | Path | None = None,
    folder: str | Path | None = None,
    root: str | Path | None = None,
    *,
    exclude_labels=(),
    classes: str = "all",
) -> tuple[list[Path], list[str], list[str | None]]:
    """Labelled images from a ``path,label[,split]`` CSV or from class folders: (paths, labels, splits).

    ``splits`` holds 'train'/'val' from a split column (None without one); rows of other splits (e.g. 'test')
    are left out. Relative CSV paths are taken relative to ``root`` (default: the CSV's folder).
    """
    excluded = set(exclude_labels)
    if csv_path is not None:
        csv_path = Path(csv_path)
        rows = _read_csv(csv_path, LABEL_COLUMNS, "labels")
        base = Path(root).expanduser() if root else csv_path.parent
        has_split = any("split" in r for r in rows)
        kept: list[tuple[Path, str, str | None]] = []
        other: Counter[str] = Counter()
        for r in rows:
            split = _split_of(r, str(csv_path)) if has_split else None
            if has_split and split is None:
                other[r.get("split", "")] += 1
                continue
            kept.append((_resolve(r["path"], base), r["label"], split))
        if other:
            log.info(
                "%s: left out %s (only train and val rows are used)",
                csv_path,
                ", ".join(f"{n} rows with split={s}" for s, n in sorted(other.items())),
            )
        _check_exist([p for p, _, _ in kept if p.name], str(csv_path))
        where = str(csv_path)
    elif folder is not None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise SimsearchError(f"folder not found: {folder}")
        kept, loose = [], 0
        for f in scan([folder]):
            label = label_from_path(f.relpath)
            if label is None:
                loose += 1
                continue
            kept.append((f.path.resolve(), label, None))
        if loose:
            log.warning("%s: %d image(s) directly in the folder have no class and are left out", folder, loose)
        where = str(folder)
    else:
        raise SimsearchError("give training data: a class folder, --labels CSV or --pairs CSV")
    kept = [k for k in kept if k[1] not in excluded]
    chosen = select_classes([k[1] for k in kept], classes)
    kept = [k for k in kept if k[1] in chosen]
    seen: dict[Path, str] = {}
    out = []
    for p, label, split in kept:
        if p in seen:
            if seen[p] != label:
                raise SimsearchError(f"{where}: {p} is labelled both {seen[p]!r} and {label!r}")
            continue
        seen[p] = label
        out.append((p, label, split))
    if not out:
        raise SimsearchError(f"{where}: no labelled images to train on")
    return [p for p, _, _ in out], [lab for _, lab, _ in out], [s for _, _, s in out]


def read_pairs(csv_path: str | Path, root: str | Path | None = None) -> tuple[list[tuple[Path, Path, int]], list]:
    """Pairs from a ``left,right,label[,split]`` CSV (label 1: similar, 0: not): (pairs, splits)."""
    csv_path = Path(csv_path)
    rows = _read_csv(csv_path, PAIR_COLUMNS, "pairs")
    base = Path(root).expanduser() if root else csv_path.parent
    has_split = any("split" in r for r in rows)
    out, splits, other = [], [], 0
    truthy, falsy = {"1", "true", "yes", "similar", "same"}, {"0", "-1", "false", "no", "dissimilar", "different"}
    for r in rows:
        value = r["label"].lower()
        if value not in truthy | falsy:
            raise SimsearchError(
                f"{csv_path}, line {r['_line']}: label must be 1 (similar) or 0 (dissimilar), not {r['label']!r}"
            )
        split = _split_of(r, str(csv_path)) if has_split else None
        if has_split and split is None:
            other += 1
            continue
        a, b = _resolve(r["left"], base), _resolve(r["right"], base)
        if a == b:
            continue
        out.append((a, b, int(value in truthy)))
        splits.append(split)
    if other:
        log.info("%s: left out %d rows of other splits (only train and val rows are used)", csv_path, other)
    _check_exist([p for a, b, _ in out for p in (a, b)], str(csv_path))
    if not any(y for _, _, y in out):
        raise SimsearchError(f"{csv_path}: no similar pairs (label 1); fine-tuning needs some")
    return out, splits
