"""Reading catalogue files for ``simsearch index --catalog items.csv|.tsv|.jsonl|.parquet``.

One row per item: a key column (``key`` unless told otherwise), an image column (one path, or several: separated
by ``|`` in CSV, a list in JSONL/Parquet; relative paths are relative to ``root``, by default the catalogue's
folder) and any other columns as typed attributes: ``int``, ``float``, ``bool``, ``str`` or ``tags`` (a list of
text), the types of :mod:`simsearch.filters`.

CSV cells are typed per column: all integers → int; integers and decimals → float; true/false (any case) → bool;
JSON lists of text (``["red", "sale"]``) → tags; anything else → str (the cells kept as written). An empty cell
is missing. A number with a leading zero (``007``) is text, so codes keep their zeros. JSONL and Parquet values
keep their own types, and a column that mixes them (12 and "abc", true and 1) is refused. NaN is missing.

Attribute columns may not have a name of :data:`simsearch.attributes.RESERVED` (key, id, score, rank, path,
photos, images: results carry these beside the attributes), nor start with ``$`` (the logical operators of
filters); text is at most :data:`simsearch.attributes.MAX_TEXT` characters, as for live writes. Keys are text (an integer key in
JSONL/Parquet becomes its decimal text), non-empty, without control characters, unique.

Every problem is a :class:`~simsearch.errors.CatalogError`: one line naming the file, the line (CSV, JSONL) or
row (Parquet) and what to change. Missing image *files* are not an error here: see :meth:`Catalog.missing_images`
(the build step skips and reports them).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simsearch.attributes import MAX_TEXT, RESERVED
from simsearch.errors import CatalogError

#: Image columns looked for, in this order, when ``image_column`` is not given (case-insensitively).
IMAGE_COLUMNS = ("image", "images", "photo", "photos", "path", "paths", "file")
_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_INT = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_BAD_TEXT = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_KIND_TEXT = {"int": "a number", "float": "a number", "bool": "true/false", "str": "text", "tags": "a list of text"}
_INT64 = 2**63


@dataclass(frozen=True)
class CatalogRow:
    key: str
    images: tuple[Path, ...]  # absolute, in the order given, without repeats
    attributes: dict[str, Any]  # present values only, typed as in Catalog.schema (tags: list of str)
    line: int  # 1-based line (CSV, JSONL) or row (Parquet) number, for messages


@dataclass(frozen=True)
class Catalog:
    path: Path
    schema: dict[str, str]  # attribute name -> int, float, bool, str or tags
    rows: list[CatalogRow]
    key_column: str
    image_column: str

    def __len__(self) -> int:
        return len(self.rows)

    def missing_images(self) -> list[tuple[CatalogRow, Path]]:
        """(row, path) for every listed image that is not an existing file."""
        return [(row, p) for row in self.rows for p in row.images if not p.is_file()]


def read_catalog(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    key_column: str = "key",
    image_column: str | None = None,
) -> Catalog:
    """Read and check a catalogue (.csv, .tsv, .jsonl, .ndjson, .parquet); raises CatalogError."""
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CatalogError(f"{path}: unknown catalogue format {path.suffix!r}: use .csv, .tsv, .jsonl or .parquet")
    if not path.is_file():
        raise CatalogError(f"{path}: no such catalogue file")
    unit = "row" if fmt == "parquet" else "line"
    columns, records = _read_csv(path) if fmt == "csv" else _read_jsonl(path) if fmt == "jsonl" else _read_parquet(path)
    key_col = _find_column(path, columns, [key_column], "key", "key_column / --key-column", columns)
    others = [c for c in columns if c != key_col]
    wanted = [image_column] if image_column else list(IMAGE_COLUMNS)
    image_col = _find_column(path, others, wanted, "image", "image_column / --image-column", columns)
    attrs = [c for c in columns if c not in (key_col, image_col)]
    for name in attrs:
        _check_name(path, name)
    base = (Path(root).expanduser() if root is not None else path.absolute().parent).resolve()
    is_csv = fmt == "csv"
    schema = {
        name: _column_type(path, unit, name, [(n, rec.get(name)) for n, rec in records], is_csv) for name in attrs
    }
    rows: list[CatalogRow] = []
    seen: dict[str, int] = {}
    for line, rec in records:
        where = f"{path} {unit} {line}"
        key = _key(rec.get(key_col), where)
        if key in seen:
            raise CatalogError(f"{where}: the key {_show(key)} appears twice, on {unit}s {seen[key]} and {line}")
        seen[key] = line
        images = _images(rec.get(image_col), is_csv, base, f"{where} (key {_show(key)})")
        values = {name: _typed(schema[name], rec.get(name), is_csv) for name in attrs}
        attributes = {k: v for k, v in values.items() if v is not None}
        rows.append(CatalogRow(key, images, attributes, line))
    return Catalog(path, schema, rows, key_col, image_col)


# ---------------------------------------------------------------------------------------------------- formats


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CatalogError(
            f"{path} line {line}: not valid UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    text = _decode(path)
    first = text.split("\n", 1)[0]
    delimiter = "\t" if path.suffix.lower() == ".tsv" else max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        start = 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            cells = [c.strip() for c in cells]
            if header is None:
                header = cells
                dupes = sorted({c for c in header if header.count(c) > 1})
                if dupes or "" in header:
                    what = f"the column {_show(dupes[0])} twice" if dupes else "a column without a name"
                    raise CatalogError(f"{path} line {line}: the header has {what}; found columns: {_names(header)}")
                continue
            if len(cells) > len(header) and any(cells[len(header) :]):
                raise CatalogError(
                    f"{path} line {line}: {len(cells)} cells but the header has {len(header)} columns"
                    " (quote cells that contain the separator)"
                )
            records.append((line, {h: (c or None) for h, c in zip(header, cells)}))
    except csv.Error as e:
        raise CatalogError(f"{path} line {reader.line_num}: {e}") from None
    if header is None:
        raise CatalogError(f"{path}: the catalogue is empty (it needs a header line with key and image columns)")
    return header, records


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    columns: dict[str, None] = {}
    records = []
    for number, line in enumerate(_decode(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CatalogError(f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise CatalogError(f"{path} line {number}: each line must be a JSON object, got {_show(rec)}")
        columns.update(dict.fromkeys(rec))
        records.append((number, rec))
    if not records:
        raise CatalogError(f"{path}: the catalogue is empty")
    return list(columns), records


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CatalogError(f"{path}: reading Parquet needs pyarrow: pip install 'simsearch[scale]'") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for damaged or foreign files
        raise CatalogError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    data = {name: table.column(i).to_pylist() for i, name in enumerate(table.column_names)}
    names = list(data)
    if len(set(names)) != len(names):
        raise CatalogError(f"{path}: a column name appears twice; found columns: {_names(names)}")
    records = [(i + 1, {name: data[name][i] for name in names}) for i in range(table.num_rows)]
    if not records:
        raise CatalogError(f"{path}: the catalogue is empty")
    return names, records


# ------------------------------------------------------------------------------------------------ checking


def _show(value: object, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(columns: list[str]) -> str:
    return ", ".join(_show(c)[1:-1] for c in columns) or "none"


def _find_column(path: Path, columns: list[str], wanted: list[str], what: str, option: str, found: list[str]) -> str:
    for name in wanted:
        if name in columns:
            return name
        folded = [c for c in columns if c.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
    looked = f"a {_show(wanted[0])} column" if len(wanted) == 1 else f"any of {', '.join(wanted)}"
    raise CatalogError(
        f"{path}: no {what} column (looked for {looked}); found columns: {_names(found)}; name it with {option}"
    )


def _check_name(path: Path, name: str) -> None:
    if name in RESERVED:
        raise CatalogError(
            f"{path}: the column {_show(name)} has a reserved name ({', '.join(sorted(RESERVED))} are used by"
            " results); rename it"
        )
    if name.startswith("$") or not name or _BAD_TEXT.search(name):
        raise CatalogError(f"{path}: bad column name {_show(name)} (non-empty UTF-8 text, not starting with $)")


def _text(value: str, where: str, what: str) -> str:
    if _BAD_TEXT.search(value):
        raise CatalogError(f"{where}: {what} {_show(value)} is not valid UTF-8 text (a lone surrogate)")
    if len(value) > MAX_TEXT:
        raise CatalogError(f"{where}: {what} {_show(value)} is longer than {MAX_TEXT} characters")
    return value


def _key(value: object, where: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise CatalogError(f"{where}: the key {_show(value)} is not valid UTF-8 text") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or value == "":
        raise CatalogError(f"{where}: empty key (every row needs one)")
    if not isinstance(value, str):
        raise CatalogError(f"{where}: a key is text or an integer, got {_show(value)}")
    if _CONTROL.search(value):
        raise CatalogError(f"{where}: the key {_show(value)} contains a control character")
    return _text(value, where, "the key")


def _images(value: object, is_csv: bool, base: Path, where: str) -> tuple[Path, ...]:
    if isinstance(value, str):
        items: list[Any] = value.split("|") if is_csv else [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif value is None:
        items = []
    else:
        raise CatalogError(f"{where}: images are a path or a list of paths, got {_show(value)}")
    paths: dict[Path, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise CatalogError(f"{where}: an image path is text, got {_show(item)}")
        item = _text(item.strip(), where, "the image path")
        if _URL.match(item):
            raise CatalogError(f"{where}: the image {_show(item)} is a URL; download the images and list their paths")
        if "\x00" in item:
            raise CatalogError(f"{where}: the image path {_show(item)} contains a NUL character")
        if item:
            paths[Path(os.path.normpath(base / item))] = None
    if not paths:
        raise CatalogError(f"{where}: no image")
    return tuple(paths)


def _kind(value: object, is_csv: bool, where: str, name: str) -> str | None:
    """The type a single value asks for (None: missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if is_csv:
        assert isinstance(value, str)
        _text(value, where, _show(name) + " =")
        if _INT.fullmatch(value):
            return "int" if -_INT64 <= int(value) < _INT64 else "str"
        if _FLOAT.fullmatch(value):  # no leading zeros (007 is a code, not a number)
            return "float" if math.isfinite(float(value)) else "str"
        if value.lower() in ("true", "false"):
            return "bool"
        if value.startswith("["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                return "str"
            if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
                return _kind(parsed, False, where, name)
        return "str"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise CatalogError(f"{where}: {_show(name)} = {value} is out of range (64-bit integers)")
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        _text(value, where, _show(name) + " =")
        return "str"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        for v in value:
            _text(v, where, f"a tag of {_show(name)}")
        return "tags"
    raise CatalogError(
        f"{where}: {_show(name)} = {_show(value)} ({type(value).__name__}) is not an attribute value;"
        " use a number, true/false, text or a list of text"
    )


def _column_type(path: Path, unit: str, name: str, cells: list[tuple[int, object]], is_csv: bool) -> str:
    first: dict[str, tuple[int, object]] = {}  # kind -> its first (line, value), in the order of the rows
    for line, value in cells:
        kind = _kind(value, is_csv, f"{path} {unit} {line}", name)
        if kind is not None and kind not in first:
            first[kind] = (line, value)
    kinds = set(first)
    if not kinds:
        return "str"
    if kinds <= {"int", "float"}:
        return "float" if "float" in kinds else "int"
    if len(kinds) == 1:
        return kinds.pop()
    if is_csv and "tags" not in kinds:
        return "str"  # CSV has no types: a column of numbers and words is text
    groups: dict[str, tuple[int, object]] = {}
    for kind, example in first.items():
        groups.setdefault(_KIND_TEXT[kind], example)
    (kind_a, (line_a, a)), (kind_b, (line_b, b)) = list(groups.items())[:2]
    raise CatalogError(
        f"{path} {unit} {line_b}: the column {_show(name)} mixes types: {unit} {line_a} has {_show(a)} ({kind_a}),"
        f" {unit} {line_b} has {_show(b)} ({kind_b}); give every value of a column one type"
    )


def _typed(t: str, value: object, is_csv: bool) -> Any:
    """A value in its column's type (None: missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if is_csv:
        assert isinstance(value, str)
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
        if t == "bool":
            return value.lower() == "true"
        if t == "tags":
            value = json.loads(value)
    if t == "float":
        return float(value)  # type: ignore[arg-type]
    if t == "tags":
        assert isinstance(value, list)
        return list(dict.fromkeys(value))
    return value
