"""The two surface forms of a filter, parsed into one tree (:mod:`simsearch.filters.nodes`), schema-free.

- the dict form (Python, JSON bodies): ``{"category": "shoes", "price": {"lt": 100}, "$or": [...]}``;
- the string form (CLI ``--where``): ``category = "shoes" and price < 100``, read by a tokenizer that keeps
  positions and a recursive-descent parser. Nothing of the user's text is ever evaluated or turned into SQL.

Both count what they build against :class:`~simsearch.config.Limits` (nodes, nesting depth, list values) and
stop at the first excess, before recursion or memory can run away.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from simsearch.config import LIMITS, Limits

from .nodes import (
    KEYWORDS,
    LIST_OPERATORS,
    OPERATORS,
    And,
    Cond,
    FilterProblem,
    Node,
    Not,
    Or,
    Scalar,
    check_text,
    show,
)

_INT64 = 2**63


class _Budget:
    """Counts nodes, list values and depth; raises as soon as one goes over its limit."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.nodes = 0
        self.values = 0

    def node(self, where: str) -> None:
        self.nodes += 1
        if self.nodes > self.limits.max_filter_nodes:
            raise FilterProblem(
                where, f"the filter has more than {self.limits.max_filter_nodes} conditions and operators"
            )

    def depth(self, depth: int, where: str) -> None:
        if depth > self.limits.max_filter_depth:
            raise FilterProblem(where, f"the filter nests more than {self.limits.max_filter_depth} levels deep")

    def value(self, count: int, where: str) -> None:
        self.values += 1
        limit = self.limits.serve_max_values
        if count > limit or self.values > limit:
            raise FilterProblem(where, f"the filter holds more than {limit} values in its lists")


def scalar(value: object, where: str) -> Scalar:
    """A value of a condition, as a plain Python scalar; anything else is refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        if not -_INT64 <= int(value) < _INT64:
            raise FilterProblem(where, f"the number {value} is out of range (64-bit integers)")
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise FilterProblem(where, f"{value} is not a finite number")
        return float(value)
    if isinstance(value, str):
        check_text(value, where)
        return value
    raise FilterProblem(where, f"a value must be text, a number, true or false, got {show(value)}")


# ---------------------------------------------------------------------------------------------------- dict form


def parse_dict(filter: Mapping[str, Any], limits: Limits = LIMITS) -> Node:
    return _DictParser(limits).filter(filter, "filter", 0)


class _DictParser:
    def __init__(self, limits: Limits) -> None:
        self.budget = _Budget(limits)

    def filter(self, d: object, path: str, depth: int) -> Node:
        self.budget.depth(depth, path)
        if not isinstance(d, Mapping):
            raise FilterProblem(path, f"a filter is a mapping from attribute names to conditions, got {show(d)}")
        if not d and depth:
            raise FilterProblem(path, "an empty filter inside $and, $or or $not")
        items: list[Node] = []
        for key, value in d.items():
            if not isinstance(key, str):
                raise FilterProblem(path, f"attribute names are text, got {show(key)}")
            check_text(key, path, "the name")
            where = f"{path}[{show(key)}]"
            if key in ("$and", "$or"):
                if not isinstance(value, (list, tuple)) or not value:
                    raise FilterProblem(where, f"{key} needs a non-empty list of filters")
                self.budget.node(where)
                subs = tuple(self.filter(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
                items.append(And(subs) if key == "$and" else Or(subs))
            elif key == "$not":
                self.budget.node(where)
                items.append(Not(self.filter(value, where, depth + 1)))
            elif key.startswith("$"):
                raise FilterProblem(where, f"unknown logical operator {show(key)}: use $and, $or or $not")
            elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
                hint = f" (here ${key.lower()})" if key.lower() in ("and", "or") else ""
                raise FilterProblem(where, f"a list of filters: the logical operators are $and, $or, $not{hint}")
            elif value is not None:  # None: no condition, so optional parameters can be passed straight on
                items.extend(self.conditions(key, value, where))
        if len(items) == 1:
            return items[0]
        self.budget.node(path)
        return And(tuple(items))

    def conditions(self, attr: str, value: object, where: str) -> list[Node]:
        if not isinstance(value, Mapping):
            op = "in" if isinstance(value, (list, tuple, set, frozenset)) else "eq"
            return [self.cond(attr, op, value, where)]
        if not value:
            raise FilterProblem(where, f"no operator: use one of {', '.join(OPERATORS)}")
        out = []
        for op, operand in value.items():
            name = op[1:] if isinstance(op, str) and op.startswith("$") else op
            if name not in OPERATORS:
                raise FilterProblem(where, f"unknown operator {show(op)}: use one of {', '.join(OPERATORS)}")
            out.append(self.cond(attr, name, operand, f"{where}[{show(op)}]"))
        return out

    def cond(self, attr: str, op: str, value: object, where: str) -> Node:
        self.budget.node(where)
        if op == "exists":
            if not isinstance(value, (bool, np.bool_)):
                raise FilterProblem(where, f"exists needs true or false, got {show(value)}")
            node = Cond(attr, "exists", None, where)
            return node if value else Not(node)
        if op in LIST_OPERATORS:
            if not isinstance(value, (list, tuple, set, frozenset)):
                raise FilterProblem(where, f"{op} needs a list of values, got {show(value)}")
            values = list(value)
            for i in range(len(values)):
                self.budget.value(i + 1, f"{where}[{i}]")
            return Cond(attr, op, tuple(scalar(v, f"{where}[{i}]") for i, v in enumerate(values)), where)
        if isinstance(value, (list, tuple, set, frozenset, Mapping)):
            raise FilterProblem(where, f"{op} needs one value, got {show(value)} (for a list of values use in)")
        return Cond(attr, op, scalar(value, where), where)


# -------------------------------------------------------------------------------------------------- string form

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<op>==|!=|<>|<=|>=|=|<|>)
      | (?P<punct>[(),\[\]])
      | (?P<name>[^\W\d]\w*)
      | (?P<quote>["'`])""",
    re.VERBOSE,
)
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_CMP = {"=": "eq", "==": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


class _Tok:
    __slots__ = ("kind", "pos", "text", "value")

    def __init__(self, kind: str, value: object, pos: int, text: str) -> None:
        self.kind = kind  # num, str, name, kw, op, punct, end
        self.value = value
        self.pos = pos
        self.text = text

    def described(self) -> str:
        if self.kind == "end":
            return "the end of the text"
        return show(self.value) if self.kind == "str" else repr(self.text)


def _column(pos: int) -> str:
    return f"column {pos + 1}"


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The text of a quoted string or backtick name starting at ``start``; returns it and the index after it."""
    quote, out, i = text[start], [], start + 1
    while i < len(text):
        c = text[i]
        if c == quote:
            if quote == "`" and text.startswith("``", i):  # `` inside a backtick name is one backtick
                out.append("`")
                i += 2
                continue
            return "".join(out), i + 1
        if c == "\\" and quote != "`":
            esc = text[i + 1 : i + 2]
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
                i += 2
                continue
            if esc == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            if not esc:
                break
            raise FilterProblem(_column(i), f"unknown escape \\{show(esc)[1:-1]} in a quoted string")
        out.append(c)
        i += 1
    raise FilterProblem(_column(start), f"the quote {quote} is never closed")


def _tokens(text: str) -> Iterator[_Tok]:
    i = 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            raise FilterProblem(_column(i), f"unexpected character {show(text[i])}")
        kind, tok = m.lastgroup or "", m.group()
        if kind == "quote":
            value, end = _quoted(text, i)
            # "\ud83d\ude00" (a JSON-style surrogate pair) is one character
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
            check_text(value, _column(i))
            yield _Tok("name" if tok == "`" else "str", value, i, text[i:end])
            i = end
            continue
        if kind == "num":
            is_int = not any(c in tok for c in ".eE")
            number: int | float = int(tok) if is_int else float(tok)
            if is_int and not -_INT64 <= int(number) < _INT64:
                raise FilterProblem(_column(i), f"the number {tok} is out of range (64-bit integers)")
            if not math.isfinite(number):
                raise FilterProblem(_column(i), f"{tok} is not a finite number")
            yield _Tok("num", number, i, tok)
        elif kind == "name" and tok.lower() in KEYWORDS:
            yield _Tok("kw", tok.lower(), i, tok)
        elif kind != "space":
            yield _Tok(kind, tok, i, tok)
        i = m.end()
    yield _Tok("end", None, len(text), "")


def parse_text(text: str, limits: Limits = LIMITS) -> Node:
    bad = re.search("[\ud800-\udfff]", text)
    if bad:
        raise FilterProblem(_column(bad.start()), "a lone surrogate here: the filter is not valid Unicode text")
    return _TextParser(text, limits).parse()


class _TextParser:
    """Grammar (keywords are case-insensitive; names that are keywords or not identifiers go in `backticks`)::

    filter    := or_expr END                      (an empty text is the empty filter)
    or_expr   := and_expr ("or" and_expr)*
    and_expr  := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | atom
    atom      := "(" or_expr ")" | "exists" "(" NAME ")" | NAME [condition]
    condition := CMP value | ["not"] "in" list | ["not"] "contains" (value | ("any"|"all") list)
               | ["not"] "prefix" value | ["not"] "exists"
    list      := "(" [value ("," value)* [","]] ")"  |  "[" ... "]"
    value     := STRING | NUMBER | "true" | "false"
    """

    def __init__(self, text: str, limits: Limits) -> None:
        self.budget = _Budget(limits)
        self.tokens = _tokens(text)
        self.tok = next(self.tokens)

    def advance(self) -> _Tok:
        tok, self.tok = self.tok, next(self.tokens)
        return tok

    def accept(self, kind: str, value: object) -> bool:
        if self.tok.kind == kind and self.tok.value == value:
            self.advance()
            return True
        return False

    def fail(self, expected: str) -> FilterProblem:
        return FilterProblem(_column(self.tok.pos), f"expected {expected}, found {self.tok.described()}")

    def expect(self, kind: str, value: object, expected: str) -> None:
        if not self.accept(kind, value):
            raise self.fail(expected)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            return And(())
        node = self.or_expr(0)
        if self.tok.kind != "end":
            raise self.fail("and, or, or the end of the filter")
        return node

    def or_expr(self, depth: int) -> Node:
        items = [self.and_expr(depth)]
        while self.tok.kind == "kw" and self.tok.value == "or":
            self.budget.node(_column(self.advance().pos))
            items.append(self.and_expr(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self, depth: int) -> Node:
        items = [self.not_expr(depth)]
        while self.tok.kind == "kw" and self.tok.value == "and":
            self.budget.node(_column(self.advance().pos))
            items.append(self.not_expr(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self, depth: int) -> Node:
        if self.tok.kind == "kw" and self.tok.value == "not":
            where = _column(self.advance().pos)
            self.budget.node(where)
            self.budget.depth(depth + 1, where)
            return Not(self.not_expr(depth + 1))
        return self.atom(depth)

    def atom(self, depth: int) -> Node:
        tok = self.tok
        if self.accept("punct", "("):
            self.budget.depth(depth + 1, _column(tok.pos))
            node = self.or_expr(depth + 1)
            self.expect("punct", ")", "')' to close the '(' at " + _column(tok.pos))
            return node
        if self.accept("kw", "exists"):
            self.expect("punct", "(", "'(' after exists (exists(name), or name exists)")
            name = self.name()
            self.expect("punct", ")", "')' to close exists(")
            self.budget.node(_column(tok.pos))
            return Cond(name, "exists", None, _column(tok.pos))
        if tok.kind != "name":
            raise self.fail("an attribute name, not, exists( or '('")
        return self.condition(self.name(), _column(tok.pos))

    def name(self) -> str:
        if self.tok.kind != "name":
            hint = " (write it in backticks: `name`)" if self.tok.kind == "kw" else ""
            raise self.fail("an attribute name" + hint)
        name = str(self.advance().value)
        if not name:
            raise FilterProblem(_column(self.tok.pos), "an empty attribute name ``")
        return name

    def condition(self, name: str, where: str) -> Node:
        self.budget.node(where)
        tok = self.tok
        if tok.kind == "op":
            self.advance()
            return Cond(name, _CMP[str(tok.value)], self.value(), where)
        negate = self.accept("kw", "not")
        node = self.keyword_condition(name, where, negate)
        if node is None:
            if negate:
                raise self.fail("in, contains, prefix or exists after not")
            return Cond(name, "eq", True, where, bare=True)  # a bare name: attr = true
        return Not(node) if negate and node.op != "nin" else node

    def keyword_condition(self, name: str, where: str, negate: bool) -> Cond | None:
        tok = self.tok
        if tok.kind != "kw" or tok.value not in ("in", "contains", "prefix", "exists"):
            return None
        self.advance()
        if tok.value == "in":
            return Cond(name, "nin" if negate else "in", self.value_list(), where)
        if tok.value == "exists":
            return Cond(name, "exists", None, where)
        if tok.value == "prefix":
            return Cond(name, "prefix", self.value(), where)
        for op in ("any", "all"):
            if self.accept("kw", op):
                return Cond(name, op, self.value_list(), where)
        return Cond(name, "contains", self.value(), where)

    def value(self) -> Scalar:
        tok = self.tok
        if tok.kind in ("num", "str"):
            self.advance()
            return tok.value  # type: ignore[return-value]
        if tok.kind == "kw" and tok.value in ("true", "false"):
            self.advance()
            return tok.value == "true"
        if tok.kind == "name":
            raise FilterProblem(
                _column(tok.pos), f'expected a value, found {tok.described()} (quote text: "{tok.value}")'
            )
        raise self.fail('a value (a number, "text", true or false)')

    def value_list(self) -> tuple[Scalar, ...]:
        close = {"(": ")", "[": "]"}.get(str(self.tok.value)) if self.tok.kind == "punct" else None
        if close is None:
            raise self.fail("a list of values in parentheses, like (1, 2)")
        self.advance()
        values: list[Scalar] = []
        while not self.accept("punct", close):
            self.budget.value(len(values) + 1, _column(self.tok.pos))
            values.append(self.value())
            if not self.accept("punct", ","):
                self.expect("punct", close, f"',' or '{close}'")
                break
        return tuple(values)
