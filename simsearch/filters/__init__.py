"""Filters over item attributes: one language, two surface forms, evaluated with numpy (docs/filters.md).

>>> schema = {"category": "str", "price": "float", "in_stock": "bool", "brand": "str"}
>>> f = compile_filter({"category": "shoes", "price": {"lt": 100}, "in_stock": True}, schema)
>>> f.describe()
'category = "shoes" and in_stock = true and price < 100'
>>> compile_filter('category = "shoes" and price < 100 and in_stock', schema).describe() == f.describe()
True
>>> table = AttributeTable.from_rows(schema, [{"category": "shoes", "price": 80.0, "in_stock": True}, {}])
>>> f.mask(table).tolist()
[True, False]

Pure: imports only numpy, the standard library, :mod:`simsearch.errors` and :mod:`simsearch.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsearch.config import LIMITS, Limits
from simsearch.errors import FilterError, SchemaError

from .check import TYPES, check, schema_text
from .nodes import ALL, FilterProblem, Node, fields_of, show, to_text
from .parse import parse_dict, parse_text
from .table import AttributeTable

__all__ = ["TYPES", "AttributeTable", "Filter", "FilterError", "SchemaError", "compile_filter"]


@dataclass(frozen=True)
class Filter:
    """A filter checked against a schema; build with :func:`compile_filter`."""

    node: Node
    schema: Mapping[str, str]

    @property
    def fields(self) -> frozenset[str]:
        """The attributes the filter reads."""
        return fields_of(self.node)

    @property
    def matches_all(self) -> bool:
        """True for the empty filter (None, "", {}): no need to evaluate it."""
        return self.node == ALL

    def describe(self) -> str:
        """The canonical string form ("" for the empty filter); compiling it gives the same filter."""
        return to_text(self.node)

    def __str__(self) -> str:
        return self.describe()

    def mask(self, table: AttributeTable) -> np.ndarray:
        """Boolean mask over the table's positions: True where the row matches (deleted rows never do)."""
        for name in sorted(self.fields):
            t = table.type_of(name)
            if t is not None and t != self.schema.get(name):
                raise FilterError(
                    f"the filter was compiled with {name} as {self.schema.get(name)}, but the table has it as {t}:"
                    " compile it again with table.schema"
                )
        return table.evaluate(self.node)


def compile_filter(
    filter: Filter | Mapping[str, Any] | str | None, schema: Mapping[str, str], *, limits: Limits = LIMITS
) -> Filter:
    """Parse (dict or string form) and check a filter against ``schema`` ``{name: type}``.

    None, "" and {} give the empty filter (matches every row). Raises :class:`FilterError` with one line naming
    the position (``column N`` in a string, ``filter["price"]["lt"]`` in a dict) and the known attributes.
    """
    for name, t in schema.items():
        if t not in TYPES:
            raise FilterError(f"attribute {show(name)} has type {show(t)}; the types are {', '.join(TYPES)}")
    try:
        if isinstance(filter, Filter):
            node = filter.node
        elif filter is None:
            node = ALL
        elif isinstance(filter, str):
            node = parse_text(filter, limits)
        elif isinstance(filter, Mapping):
            node = parse_dict(filter, limits)
        else:
            raise FilterProblem("filter", f"a filter is a dict, a string or None, got {show(filter)}")
        return Filter(check(node, schema), dict(schema))
    except FilterProblem as problem:
        raise FilterError(
            f"bad filter at {problem.where}: {problem.message}; known attributes: {schema_text(schema)}"
        ) from None
