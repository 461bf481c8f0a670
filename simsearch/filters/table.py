"""AttributeTable: the typed attributes of every item, in columns, evaluated with numpy.

Rows are addressed by position (0..len-1; the store maps its item ids to positions). Writes are cheap and done in
place: :meth:`~AttributeTable.append`, :meth:`~AttributeTable.replace` (whole rows),
:meth:`~AttributeTable.update` (some attributes; None removes one) and :meth:`~AttributeTable.delete` (the row
keeps its position but matches no filter, until :meth:`~AttributeTable.compact` drops deleted rows).

Storage: see :mod:`simsearch.filters.columns`.

Not safe for a write concurrent with reads: one writer, and readers on a :meth:`~AttributeTable.copy` or under
the same lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from simsearch.errors import SchemaError

from .check import TYPES, schema_text
from .columns import Column, Scalars, Tags, Texts, coerce_column, grow
from .nodes import And, Cond, Node, Not, Or, show, surrogate_at


class AttributeTable:
    """Typed attribute columns for rows 0..len-1; build with ``AttributeTable(schema)`` or :meth:`from_rows`."""

    def __init__(self, schema: Mapping[str, str] | None = None) -> None:
        self._types: dict[str, str] = {}
        self._columns: dict[str, Column] = {}
        self._alive = np.zeros(0, bool)
        self._n = 0
        self._live = 0
        for name, t in (schema or {}).items():
            self.add_column(name, t)

    @classmethod
    def from_rows(cls, schema: Mapping[str, str], rows: Iterable[Mapping[str, Any]]) -> AttributeTable:
        """A table of ``rows`` (dicts of attribute values; absent or None = missing)."""
        table = cls(schema)
        table.append(rows)
        return table

    @property
    def schema(self) -> dict[str, str]:
        return dict(self._types)

    def type_of(self, name: str) -> str | None:
        return self._types.get(name)

    def __len__(self) -> int:
        """Number of positions, deleted ones included (masks have this length)."""
        return self._n

    @property
    def live_count(self) -> int:
        """Number of rows that are not deleted."""
        return self._live

    def alive(self) -> np.ndarray:
        """Mask of the rows that are not deleted."""
        return self._alive[: self._n].copy()

    def add_column(self, name: str, type: str) -> None:
        """A new attribute, missing in every existing row."""
        if not isinstance(name, str) or not name or name.startswith("$") or surrogate_at(name) >= 0:
            raise SchemaError(f"bad attribute name {show(name)}: non-empty text, not starting with $")
        if type not in TYPES:
            raise SchemaError(f"attribute {show(name)} has type {show(type)}; the types are {', '.join(TYPES)}")
        if name in self._types:
            raise SchemaError(f"attribute {show(name)} exists already (as {self._types[name]})")
        cap = len(self._alive)
        self._types[name] = type
        self._columns[name] = Texts(cap) if type == "str" else Tags(cap) if type == "tags" else Scalars(type, cap)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Add rows at the end; returns their positions."""
        rows = list(rows)
        values, count = self._validated(rows), len(rows)
        pos = np.arange(self._n, self._n + count)
        if self._n + count > len(self._alive):
            cap = max(self._n + count, 2 * len(self._alive), 16)
            self._alive = grow(self._alive, cap)
            for col in self._columns.values():
                col.reserve(cap)
        for name, col in self._columns.items():
            col.write(pos, values[name])
        self._alive[pos] = True
        self._n += count
        self._live += count
        return pos

    def replace(self, positions: Sequence[int] | np.ndarray, rows: Iterable[Mapping[str, Any]]) -> None:
        """Overwrite whole rows (attributes not given become missing); a deleted row comes back."""
        pos, rows = self._positions(positions), list(rows)
        if len(rows) != len(pos):
            raise SchemaError(f"{len(pos)} positions but {len(rows)} rows")
        values = self._validated(rows)
        for name, col in self._columns.items():
            col.write(pos, values[name])
        self._live += int((~self._alive[pos]).sum())
        self._alive[pos] = True

    def update(self, positions: Sequence[int] | np.ndarray, changes: Iterable[Mapping[str, Any]]) -> None:
        """Change some attributes of rows (a None value removes the attribute); the others stay."""
        pos, changes = self._positions(positions), list(changes)
        if len(changes) != len(pos):
            raise SchemaError(f"{len(pos)} positions but {len(changes)} changes")
        if not self._alive[pos].all():
            raise SchemaError(f"row {int(pos[~self._alive[pos]][0])} is deleted: replace it instead")
        values = self._validated(changes)
        for name, col in self._columns.items():
            given = np.array([name in c for c in changes], bool)
            if given.any():
                col.write(pos[given], [v for v, g in zip(values[name], given) if g])

    def delete(self, positions: Sequence[int] | np.ndarray) -> None:
        """Rows that match no filter from now on (their values are dropped); positions stay until compact()."""
        pos = self._positions(positions)
        for col in self._columns.values():
            col.write(pos, [None] * len(pos))
        self._live -= int(self._alive[pos].sum())
        self._alive[pos] = False

    def compact(self) -> np.ndarray:
        """Drop deleted rows; returns the old position of each remaining row (new position i was old keep[i])."""
        keep = np.flatnonzero(self._alive[: self._n])
        cap = max(len(keep), 16)
        self._columns = {name: col.take(keep, cap) for name, col in self._columns.items()}
        self._alive = np.zeros(cap, bool)
        self._alive[: len(keep)] = True
        self._n = self._live = len(keep)
        return keep

    def copy(self) -> AttributeTable:
        """An independent snapshot (numpy copies: about a millisecond per 100k rows and column)."""
        out = AttributeTable()
        out._types = dict(self._types)
        out._columns = {name: col.copy() for name, col in self._columns.items()}
        out._alive, out._n, out._live = self._alive.copy(), self._n, self._live
        return out

    def row(self, position: int, fields: Iterable[str] | None = None) -> dict[str, Any]:
        """The present attributes of one row ({} for a deleted row); ``fields`` limits them."""
        i = int(self._positions([position])[0])
        names = self._types if fields is None else [self._known(f) for f in fields]
        values = {name: self._columns[name].get(i) for name in names}
        return {k: v for k, v in values.items() if v is not None}

    def values(self, name: str, positions: Sequence[int] | np.ndarray | None = None) -> list[Any]:
        """One attribute of many rows (None where missing), e.g. for diversity rules over results."""
        col = self._columns[self._known(name)]
        pos = np.arange(self._n) if positions is None else self._positions(positions, unique=False)
        return [col.get(int(i)) for i in pos]

    def evaluate(self, node: Node) -> np.ndarray:
        """Boolean mask of the rows matching a checked filter tree; use :meth:`simsearch.filters.Filter.mask`."""
        return self._eval(node) & self._alive[: self._n]

    def _eval(self, node: Node) -> np.ndarray:
        n = self._n
        if isinstance(node, Cond):
            col = self._columns.get(node.attr)
            negate = node.op in ("ne", "nin")
            op = {"ne": "eq", "nin": "in"}.get(node.op, node.op)
            hit = col.match(op, node.value, n) if col is not None else np.zeros(n, bool)
            return ~hit if negate else hit
        if isinstance(node, Not):
            return ~self._eval(node.item)
        is_and = isinstance(node, And)
        assert is_and or isinstance(node, Or)
        out = np.full(n, is_and)
        for item in node.items:
            if is_and:
                out &= self._eval(item)
            else:
                out |= self._eval(item)
        return out

    def _known(self, name: str) -> str:
        if name not in self._types:
            raise SchemaError(f"unknown attribute {show(name)}; known attributes: {schema_text(self._types)}")
        return name

    def _positions(self, positions: Sequence[int] | np.ndarray, unique: bool = True) -> np.ndarray:
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        bad = pos[(pos < 0) | (pos >= self._n)]
        if len(bad):
            raise SchemaError(f"row position {int(bad[0])} is out of range (the table has {self._n} rows)")
        if unique and len(pos) > 1 and len(np.unique(pos)) != len(pos):
            raise SchemaError("a row position appears twice in one write")
        return pos

    def _validated(self, rows: list[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """Every value coerced to its column's type, before anything is written (a bad row changes nothing)."""
        known = self._types.keys()
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise SchemaError(f"rows[{i}] is {show(row)}, not a mapping of attribute names to values")
            if not known >= row.keys():
                name = next(k for k in row if k not in known)
                raise SchemaError(
                    f"rows[{i}]: unknown attribute {show(name)}; known attributes: {schema_text(self._types)}"
                    " (add_column adds one)"
                )
        return {name: coerce_column(t, [row.get(name) for row in rows], name) for name, t in self._types.items()}
