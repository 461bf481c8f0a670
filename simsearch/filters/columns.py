"""The columns of an :class:`~simsearch.filters.table.AttributeTable`, one class per storage kind.

- int/float/bool: a value array and a presence mask;
- str: dictionary-encoded (int32 codes, -1 missing); comparisons and prefixes are computed once per distinct value
  and cached (the vocabulary only grows, so a cached answer is extended, never recomputed);
- tags: (row, code) pairs in two flat arrays, a row's pairs contiguous; a rewritten row's old pairs are marked dead
  (code -1) and squeezed out once they are the majority, so "has tag t" is one comparison over all pairs.

Every column has ``reserve(cap)``, ``write(positions, values)`` (values already coerced, None = missing),
``get(i)``, ``take(keep, cap)``, ``copy()`` and ``match(op, value, n) -> bool mask`` for the positive operators
(eq, lt, lte, gt, gte, in, prefix, contains, any, all, exists); the table derives ne, nin and not.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from simsearch.errors import SchemaError

from .nodes import show, surrogate_at

_INT64 = 2**63
_CMP: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
_CACHE_SIZE = 32


def grow(a: np.ndarray, cap: int, fill: int = 0) -> np.ndarray:
    out = np.full(cap, fill, a.dtype)
    out[: len(a)] = a
    return out


def coerce(t: str, value: object, name: str, where: str) -> object:
    """``value`` as stored in a column of type ``t`` (None = missing; NaN is missing too); else SchemaError."""
    if value is None:
        return None
    is_bool = isinstance(value, (bool, np.bool_))
    if t == "bool" and is_bool:
        return bool(value)
    if t in ("int", "float") and not is_bool and isinstance(value, (int, np.integer, float, np.floating)):
        real = isinstance(value, (float, np.floating))
        if real and math.isnan(value):
            return None
        if real and t == "float":
            return float(value)
        if not real or float(value).is_integer():
            number = int(value)
            if t == "int" and -_INT64 <= number < _INT64:
                return number
            if t == "float" and abs(number) < 2**1000:
                return float(number)
            raise SchemaError(f"{where}: {show(name)} = {value} is out of range (64-bit integers)")
    if t == "str" and isinstance(value, str):
        return _text(value, name, where)
    if t == "tags" and isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return list(dict.fromkeys(_text(v, name, where) for v in value))
    want = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}.get(t, "a list of text")
    raise SchemaError(f"{where}: {show(name)} is {t} and needs {want}, got {show(value)}")


def coerce_column(t: str, values: list[Any], name: str) -> list[Any]:
    """:func:`coerce` over one column of many rows, with fast paths for plain Python values."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    fast: dict[str, set[type]] = {"str": {str}, "bool": {bool}, "int": {int}, "float": {float}}
    if t in fast and kinds <= fast[t]:
        if t == "str" and surrogate_at("".join(present)) < 0:
            return values
        if t == "bool" or (t == "int" and (not present or -_INT64 <= min(present) <= max(present) < _INT64)):
            return values
        if t == "float" and all(v == v for v in present):  # no NaN
            return values
    if t == "tags" and kinds <= {list, tuple}:
        flat = [x for v in present for x in v]
        if all(type(x) is str for x in flat) and surrogate_at("".join(flat)) < 0:
            return [None if v is None else list(dict.fromkeys(v)) for v in values]
    return [coerce(t, v, name, f"rows[{i}]") for i, v in enumerate(values)]


def _any_of(codes: np.ndarray, wanted: list[int], size: int) -> np.ndarray:
    """codes == any of ``wanted`` (all in 0..size-1; code -1 never matches): ORs for few, a lookup table else."""
    if len(wanted) <= 8:
        out = np.zeros(len(codes), bool)
        for c in wanted:
            out |= codes == c
        return out
    lut = np.zeros(size + 1, bool)
    lut[wanted] = True
    return lut[codes]


def _text(value: str, name: str, where: str) -> str:
    if surrogate_at(value) >= 0:
        raise SchemaError(f"{where}: {show(name)} = {show(value)} is not valid Unicode text (a lone surrogate)")
    return value


class Scalars:
    """int, float or bool: values and a presence mask."""

    def __init__(self, t: str, cap: int) -> None:
        self.type = t
        self.data: np.ndarray = np.zeros(cap, {"int": np.int64, "float": np.float64, "bool": np.bool_}[t])
        self.has = np.zeros(cap, bool)

    def reserve(self, cap: int) -> None:
        self.data, self.has = grow(self.data, cap), grow(self.has, cap)

    def write(self, pos: np.ndarray, values: Sequence[Any]) -> None:
        self.has[pos] = [v is not None for v in values]
        self.data[pos] = [0 if v is None else v for v in values]

    def get(self, i: int) -> object:
        return self.data[i].item() if self.has[i] else None

    def take(self, keep: np.ndarray, cap: int) -> Scalars:
        out = Scalars(self.type, cap)
        out.data[: len(keep)], out.has[: len(keep)] = self.data[keep], self.has[keep]
        return out

    def copy(self) -> Scalars:
        return self.take(np.arange(len(self.data)), len(self.data))

    def match(self, op: str, value: Any, n: int) -> np.ndarray:
        d, has = self.data[:n], self.has[:n]
        if op == "exists":
            return has.copy()
        if op != "in":
            return _CMP[op](d, value) & has
        if len(value) > 8:
            return np.isin(d, np.asarray(value)) & has
        hit = np.zeros(n, bool)
        for v in value:
            hit |= d == v
        return hit & has


class _Vocab:
    """Distinct text values, each with a code (its index)."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.codes: dict[str, int] = {}

    def code(self, value: str) -> int:
        c = self.codes.get(value)
        if c is None:
            c = self.codes[value] = len(self.values)
            self.values.append(value)
        return c

    def encode(self, values: Iterable[str | None]) -> list[int]:
        """Codes of many values (new ones added), -1 for None."""
        values = list(values)
        for v in dict.fromkeys(values):
            if v is not None and v not in self.codes:
                self.code(v)
        get = self.codes.get
        return [get(v, -1) for v in values]  # type: ignore[arg-type]

    def copy(self) -> _Vocab:
        out = _Vocab()
        out.values, out.codes = list(self.values), dict(self.codes)
        return out


class Texts:
    """str: dictionary-encoded codes (-1 missing)."""

    type = "str"

    def __init__(self, cap: int) -> None:
        self.codes = np.full(cap, -1, np.int32)
        self.vocab = _Vocab()
        self.cache: dict[tuple[str, str], np.ndarray] = {}  # (op, value) -> match of each vocab value

    def reserve(self, cap: int) -> None:
        self.codes = grow(self.codes, cap, -1)

    def write(self, pos: np.ndarray, values: Sequence[Any]) -> None:
        self.codes[pos] = self.vocab.encode(values)

    def get(self, i: int) -> object:
        c = int(self.codes[i])
        return self.vocab.values[c] if c >= 0 else None

    def take(self, keep: np.ndarray, cap: int) -> Texts:
        out = Texts(cap)
        out.write(np.arange(len(keep)), [self.get(i) for i in keep])
        return out

    def copy(self) -> Texts:
        out = Texts(0)
        out.codes, out.vocab, out.cache = self.codes.copy(), self.vocab.copy(), dict(self.cache)
        return out

    def match(self, op: str, value: Any, n: int) -> np.ndarray:
        codes = self.codes[:n]
        if op == "exists":
            return codes >= 0
        if op == "eq":
            c = self.vocab.codes.get(value)
            return codes == c if c is not None else np.zeros(n, bool)
        if op == "in":
            known = [self.vocab.codes[v] for v in value if v in self.vocab.codes]
            return _any_of(codes, known, len(self.vocab.values))
        return self._per_value(op, value)[codes]  # code -1 reads the final False

    def _per_value(self, op: str, value: str) -> np.ndarray:
        """Whether each distinct value passes (lt, lte, gt, gte, prefix), then a False for "missing"."""
        test: Callable[[str], bool] = (
            (lambda s: s.startswith(value)) if op == "prefix" else (lambda s: _CMP[op](s, value))
        )
        done = self.cache.pop((op, value), np.zeros(1, bool))
        new = self.vocab.values[len(done) - 1 :]
        if new:  # the vocabulary only grows: test the values added since the last time
            done = np.concatenate([done[:-1], np.fromiter(map(test, new), bool, len(new)), [False]])
        while len(self.cache) >= _CACHE_SIZE:
            self.cache.pop(next(iter(self.cache)))
        self.cache[(op, value)] = done
        return done


class Tags:
    """tags: (row, code) pairs in two flat arrays; a row's pairs are contiguous at start[row] for count[row]."""

    type = "tags"

    def __init__(self, cap: int) -> None:
        self.has = np.zeros(cap, bool)
        self.start = np.zeros(cap, np.int64)
        self.count = np.zeros(cap, np.int64)
        self.rows = np.zeros(0, np.int64)
        self.codes = np.zeros(0, np.int32)
        self.used = 0  # pairs in use (live and dead)
        self.dead = 0
        self.vocab = _Vocab()

    def reserve(self, cap: int) -> None:
        self.has, self.start, self.count = grow(self.has, cap), grow(self.start, cap), grow(self.count, cap)

    def write(self, pos: np.ndarray, values: Sequence[Any]) -> None:
        old_start, old_count = self.start[pos], self.count[pos]
        if old_count.any():  # the rows' old pairs die: indices start..start+count-1 of every row at once
            offsets = np.arange(int(old_count.sum())) - np.repeat(np.cumsum(old_count) - old_count, old_count)
            self.codes[np.repeat(old_start, old_count) + offsets] = -1
            self.dead += int(old_count.sum())
        codes = self.vocab.encode(t for v in values if v for t in v)
        counts = np.array([len(v) if v else 0 for v in values], np.int64)
        end = self.used + len(codes)
        if end > len(self.codes):
            cap = max(end, 2 * len(self.codes), 64)
            self.rows, self.codes = grow(self.rows, cap), grow(self.codes, cap, -1)
        self.rows[self.used : end] = np.repeat(pos, counts)
        self.codes[self.used : end] = codes
        self.start[pos] = self.used + np.cumsum(counts) - counts
        self.count[pos] = counts
        self.has[pos] = [v is not None for v in values]
        self.used = end
        if self.dead > 1024 and 2 * self.dead > self.used:
            self._squeeze()

    def _squeeze(self) -> None:
        live = self.codes[: self.used] >= 0
        new_index = np.cumsum(live) - 1
        rows = np.flatnonzero(self.count > 0)
        self.start[rows] = new_index[self.start[rows]]
        self.rows, self.codes = self.rows[: self.used][live], self.codes[: self.used][live]
        self.used, self.dead = len(self.codes), 0

    def get(self, i: int) -> object:
        if not self.has[i]:
            return None
        return [self.vocab.values[c] for c in self.codes[self.start[i] : self.start[i] + self.count[i]]]

    def take(self, keep: np.ndarray, cap: int) -> Tags:
        out = Tags(cap)
        out.write(np.arange(len(keep)), [self.get(i) for i in keep])
        return out

    def copy(self) -> Tags:
        out = Tags(0)
        out.has, out.start, out.count = self.has.copy(), self.start.copy(), self.count.copy()
        out.rows, out.codes = self.rows[: self.used].copy(), self.codes[: self.used].copy()
        out.used, out.dead, out.vocab = self.used, self.dead, self.vocab.copy()
        return out

    def match(self, op: str, value: Any, n: int) -> np.ndarray:
        if op == "exists":
            return self.has[:n].copy()
        if op == "all":
            out = np.ones(n, bool)
            for v in value:
                out &= self.match("contains", v, n)
            return out
        wanted = [value] if op == "contains" else value  # contains, any
        known = [self.vocab.codes[v] for v in wanted if v in self.vocab.codes]
        out = np.zeros(n, bool)
        if known:
            hit = _any_of(self.codes[: self.used], known, len(self.vocab.values))
            out[self.rows[: self.used][hit]] = True
        return out


Column = Scalars | Texts | Tags
