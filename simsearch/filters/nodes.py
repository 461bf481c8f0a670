"""The filter syntax tree shared by both surface forms, and its canonical text.

A filter is a tree of :class:`Cond` (one attribute, one operator), :class:`And`, :class:`Or` and :class:`Not`.
``And(())`` matches every row (the empty filter). :func:`to_text` writes a tree in the string form, so that
``parse_text(to_text(node)) == node``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

#: Operators of a condition, as spelled in the dict form.
OPERATORS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "nin", "exists", "contains", "any", "all", "prefix")
#: Operators whose value is a list.
LIST_OPERATORS = frozenset({"in", "nin", "any", "all"})
#: How each operator reads in the string form (and in error messages).
OP_TEXT = {
    "eq": "=",
    "ne": "!=",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "in": "in",
    "nin": "not in",
    "exists": "exists",
    "contains": "contains",
    "any": "contains any",
    "all": "contains all",
    "prefix": "prefix",
}
#: Words of the string form; an attribute with one of these names is written in backticks (`in`).
KEYWORDS = frozenset({"and", "or", "not", "in", "contains", "any", "all", "exists", "prefix", "true", "false"})
NAME_RE = re.compile(r"[^\W\d]\w*")
_SURROGATE = re.compile("[\ud800-\udfff]")

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Cond:
    """``attr op value``: value is a scalar, a tuple of scalars (in, nin, any, all) or None (exists)."""

    attr: str
    op: str
    value: object = None
    where: str = field(default="", compare=False)  # position in the source, for error messages
    bare: bool = field(default=False, compare=False)  # written as a bare name (``in_stock``) in the string form


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Cond | And | Or | Not
ALL = And(())


class FilterProblem(Exception):  # noqa: N818 (internal; compile_filter turns it into a FilterError)
    """What is wrong (``message``) and where (``where``: "column 7" or a path into a dict filter)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def show(value: object, limit: int = 60) -> str:
    """A short, one-line, printable rendering of a user's value (lone surrogates escaped, long text cut)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def surrogate_at(text: str) -> int:
    """Index of the first lone surrogate (text that cannot be encoded as UTF-8, e.g. "\\ud800"), or -1."""
    bad = _SURROGATE.search(text)
    return bad.start() if bad else -1


def check_text(text: str, where: str, what: str = "text") -> None:
    """Refuse text that cannot be encoded as UTF-8 (lone surrogates, e.g. from a JSON escape "\\ud800")."""
    i = surrogate_at(text)
    if i >= 0:
        raise FilterProblem(
            where,
            f"{what} {show(text)} is not valid Unicode text (a lone surrogate at character {i + 1}); send UTF-8 text",
        )


def fields_of(node: Node) -> frozenset[str]:
    """The attributes a filter reads."""
    if isinstance(node, Cond):
        return frozenset([node.attr])
    if isinstance(node, Not):
        return fields_of(node.item)
    return frozenset().union(*(fields_of(n) for n in node.items))


def name_text(name: str) -> str:
    """An attribute name as written in the string form: bare when possible, else in backticks (`` doubled)."""
    if NAME_RE.fullmatch(name) and name.lower() not in KEYWORDS:
        return name
    return "`" + name.replace("`", "``") + "`"


def value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "(" + ", ".join(value_text(v) for v in value) + ")"
    return repr(value)


def to_text(node: Node) -> str:
    """The canonical string form of a tree ("" for the empty filter)."""
    if isinstance(node, Cond):
        name = name_text(node.attr)
        if node.op == "exists":
            return f"exists({name})"
        return f"{name} {OP_TEXT[node.op]} {value_text(node.value)}"
    if isinstance(node, Not):
        inner = to_text(node.item)
        return f"not ({inner})" if isinstance(node.item, (And, Or)) else f"not {inner}"
    if isinstance(node, And):
        return " and ".join(f"({to_text(n)})" if isinstance(n, (Or, And)) else to_text(n) for n in node.items)
    return " or ".join(f"({to_text(n)})" if isinstance(n, (Or, And)) else to_text(n) for n in node.items)
