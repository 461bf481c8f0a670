"""Filters over item attributes (placeholder until the full filter language lands: dict form, eq and in)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SimsearchError


class FilterError(SimsearchError):
    pass


@dataclass(frozen=True)
class AttributeTable:
    schema: dict
    records: tuple

    @classmethod
    def from_rows(cls, schema: dict, rows: list[dict]) -> AttributeTable:
        return cls(dict(schema), tuple(rows))


@dataclass(frozen=True)
class Filter:
    conditions: tuple

    def mask(self, table: AttributeTable) -> np.ndarray:
        out = np.ones(len(table.records), dtype=bool)
        for name, values in self.conditions:
            out &= np.array([r.get(name) in values for r in table.records], dtype=bool)
        return out


def compile_filter(spec, schema: dict) -> Filter:
    if not isinstance(spec, dict):
        raise FilterError("filters must be a dict")
    conds = []
    for name, value in spec.items():
        if name not in schema:
            raise FilterError(f"unknown attribute {name!r}; known: {', '.join(sorted(schema))}")
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        conds.append((name, values))
    return Filter(tuple(conds))
