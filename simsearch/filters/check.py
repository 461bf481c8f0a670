"""Check a filter tree against a schema ``{name: type}`` and bring it to its canonical form.

Types: ``int``, ``float``, ``bool``, ``str``, ``tags`` (a list of text). int and float compare with each other;
a bool is not a number. On a tags attribute ``=``/``in`` mean "has this value"/"has any of these" (as in
MongoDB), so ``{"tags": "red"}`` and ``{"tags": ["red", "blue"]}`` read naturally.

The canonical form: nested and/or flattened, children sorted by their text and deduplicated, list values sorted
and deduplicated, double negations removed, ``not a = 1`` written ``a != 1`` (and in/not in alike: ne and nin
are exactly the negations of eq and in, missing values included), the legacy ``path_prefix`` key turned into ``path prefix "..."``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from .nodes import ALL, LIST_OPERATORS, OP_TEXT, Cond, FilterProblem, Node, Not, Or, show, to_text

TYPES = ("int", "float", "bool", "str", "tags")
_NUMBER_OPS = frozenset({"eq", "ne", "lt", "lte", "gt", "gte", "in", "nin", "exists"})
_OPS = {
    "int": _NUMBER_OPS,
    "float": _NUMBER_OPS,
    "bool": frozenset({"eq", "ne", "in", "nin", "exists"}),
    "str": frozenset({"eq", "ne", "lt", "lte", "gt", "gte", "in", "nin", "prefix", "exists"}),
    "tags": frozenset({"eq", "ne", "in", "nin", "contains", "any", "all", "exists"}),
}
_HINTS = {
    "bool": "a bool attribute is compared with = or != (or in)",
    "tags": "a tags attribute is tested with contains, contains any, contains all (or =, in)",
    "str": "contains is for tags attributes (lists of text); on text use =, in or prefix",
    "int": "a number is compared with =, !=, <, <=, >, >=, in",
}
_HINTS["float"] = _HINTS["int"]
_NEGATED = {"eq": "ne", "ne": "eq", "in": "nin", "nin": "in"}
_TAGS_OP = {"eq": ("contains", False), "ne": ("contains", True), "in": ("any", False), "nin": ("any", True)}


def schema_text(schema: Mapping[str, str], limit: int = 40) -> str:
    """``brand (str), price (float), ...``: the known attributes, for error messages."""
    if not schema:
        return "none (this index has no attributes)"
    names = sorted(schema)
    text = ", ".join(f"{show(n)[1:-1]} ({schema[n]})" for n in names[:limit])
    return text + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check(node: Node, schema: Mapping[str, str]) -> Node:
    """The canonical form of ``node``; raises :class:`FilterProblem` where it does not fit ``schema``."""
    if isinstance(node, Cond):
        return _cond(node, schema)
    if isinstance(node, Not):
        inner = check(node.item, schema)
        if isinstance(inner, Cond) and inner.op in _NEGATED and schema.get(inner.attr) != "tags":
            return Cond(inner.attr, _NEGATED[inner.op], inner.value, inner.where)  # not a = 1 is a != 1
        return inner.item if isinstance(inner, Not) else Not(inner)
    kind = type(node)
    items: list[Node] = []
    for child in node.items:
        c = check(child, schema)
        items.extend(c.items if isinstance(c, kind) else [c])
    if kind is Or and ALL in items:
        return ALL
    unique = sorted(dict.fromkeys(items), key=to_text)
    return unique[0] if len(unique) == 1 else kind(tuple(unique))


def _cond(node: Cond, schema: Mapping[str, str]) -> Node:
    attr, op, where = node.attr, node.op, node.where
    t = schema.get(attr)
    if t is None:
        if attr == "path_prefix" and op == "eq" and isinstance(node.value, str) and schema.get("path") == "str":
            return Cond("path", "prefix", node.value, where)  # the legacy filter key
        raise FilterProblem(where, _unknown(attr, schema))
    if node.bare and t != "bool":
        raise FilterProblem(
            where, f"a bare name tests a bool attribute, and {show(attr)} is {t}: compare it, or write exists({attr})"
        )
    if op not in _OPS[t]:
        raise FilterProblem(where, f"{OP_TEXT[op]} does not apply to {show(attr)} ({t}): {_HINTS[t]}")
    if op == "exists":
        return Cond(attr, op, None, where)
    if op in LIST_OPERATORS:
        assert isinstance(node.value, tuple)
        value: object = tuple(sorted({_value(v, t, attr, op, where) for v in node.value}))  # type: ignore[type-var]
        if op == "all" and not value:
            raise FilterProblem(where, "contains all needs at least one value")
    else:
        value = _value(node.value, t, attr, op, where)
    if t == "tags" and op in _TAGS_OP:
        new_op, negate = _TAGS_OP[op]
        cond = Cond(attr, new_op, value, where)
        return Not(cond) if negate else cond
    return Cond(attr, op, value, where)


def _value(value: object, t: str, attr: str, op: str, where: str) -> object:
    if t in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            extra = " (a bool is not a number)" if isinstance(value, bool) else ""
            raise FilterProblem(
                where, f"{show(attr)} is {t}, so {OP_TEXT[op]} needs a number, got {show(value)}{extra}"
            )
        if t == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if t == "bool":
        if not isinstance(value, bool):
            raise FilterProblem(where, f"{show(attr)} is bool, so {OP_TEXT[op]} needs true or false, got {show(value)}")
        return value
    if not isinstance(value, str):
        raise FilterProblem(
            where, f'{show(attr)} is {t}, so {OP_TEXT[op]} needs quoted text, got {show(value)} (quote it: "...")'
        )
    return value


def _unknown(attr: str, schema: Mapping[str, str]) -> str:
    text = f"unknown attribute {show(attr)}"
    close = difflib.get_close_matches(attr, list(schema), n=1)
    if close:
        text += f" (did you mean {show(close[0])}?)"
    if attr.lower() in ("and", "or", "not"):
        text += f"; in a dict filter the logical operators are $and, $or, $not (here ${attr.lower()})"
    return text
