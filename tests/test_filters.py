"""simsearch.filters: the language (both forms), its errors and limits, and evaluation over an AttributeTable.

Evaluation is checked against a plain-Python reference on random tables and random filters (written in both
surface forms by this file, independently of the module's own printer), including after replaces, updates,
deletes and compaction.

Timing (not asserted; ``python tests/test_filters.py``): 100k rows (category str of 50 values, price float,
in_stock bool, brand str of 200 values, tags 3 of 30, path unique), AMD EPYC 2 cores AVX2, load average 10 (the
machine shared with other jobs, so these are upper bounds), median of 50:
``category = "c3" and price < 100 and in_stock`` 0.12 ms; ``brand not in ("b1", "b2") and price >= 50 and tags
contains "t3"`` 0.96 ms; ``tags contains any ("t1", "t2", "t3")`` 1.3 ms; ``path prefix "dir7/"`` 0.42 ms (the
first time 86 ms: each of the 100k distinct paths is tested once, then cached). Building the table from 100k
row dicts 2.7 s; replacing one row 0.44 ms; a copy 21 ms. The same tag test over an object array of frozensets
took 34 ms, hence the flat (row, tag) pair arrays.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time

import numpy as np
import pytest

from simsearch.config import LIMITS
from simsearch.errors import FilterError, SchemaError, SimsearchError
from simsearch.filters import AttributeTable, Filter, compile_filter

SHOP = {"category": "str", "price": "float", "in_stock": "bool", "brand": "str", "tags": "tags", "stock": "int"}
ROWS = [
    {"category": "shoes", "price": 80.0, "in_stock": True, "brand": "acme", "tags": ["red", "sale"], "stock": 3},
    {"category": "shoes", "price": 120.0, "in_stock": True, "brand": "x", "tags": ["blue"], "stock": 0},
    {"category": "shoes", "price": 50.0, "in_stock": False, "brand": "y", "stock": 1},
    {"category": "hats", "price": 20.0, "in_stock": True, "tags": [], "stock": 7},
    {"category": "shoes", "in_stock": True, "brand": "acme", "tags": ["red"]},
    {},
]


def shop() -> AttributeTable:
    return AttributeTable.from_rows(SHOP, ROWS)


def rows_of(f, schema=SHOP, table=None) -> list[int]:
    return np.flatnonzero(compile_filter(f, schema).mask(shop() if table is None else table)).tolist()


def error(f, schema=SHOP, **kw) -> str:
    with pytest.raises(FilterError) as e:
        compile_filter(f, schema, **kw)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, SimsearchError)
    return msg


# ------------------------------------------------------------------------------------------------ the language


def test_the_issue_example_in_both_forms():
    d = compile_filter({"category": "shoes", "price": {"lt": 100}, "in_stock": True, "brand": {"nin": ["x"]}}, SHOP)
    s = compile_filter('category = "shoes" and price < 100 and in_stock and brand not in ("x")', SHOP)
    assert d == s and d.describe() == s.describe()
    assert d.describe() == 'brand not in ("x") and category = "shoes" and in_stock = true and price < 100'
    assert rows_of(d) == [0]  # 1 is brand x and too dear, 2 out of stock, 4 has no price
    assert d.fields == {"category", "price", "in_stock", "brand"}


@pytest.mark.parametrize(
    ("dict_form", "text", "expected"),
    [
        ({"category": "shoes"}, 'category = "shoes"', [0, 1, 2, 4]),
        ({"category": {"ne": "shoes"}}, "category != 'shoes'", [3, 5]),  # ne matches a missing value
        ({"category": {"$ne": "shoes"}}, "category <> 'shoes'", [3, 5]),
        ({"price": {"lt": 80}}, "price < 80", [2, 3]),
        ({"price": {"lte": 80}}, "price <= 80", [0, 2, 3]),
        ({"price": {"gt": 80}}, "price > 80", [1]),
        ({"price": {"gte": 80, "lt": 200}}, "price >= 80 and price < 200", [0, 1]),
        ({"price": {"gt": -1.5e1}}, "price > -1.5e1", [0, 1, 2, 3]),
        ({"stock": 0}, "stock == 0", [1]),
        ({"stock": {"lt": 2.5}}, "stock < 2.5", [1, 2]),  # int and float compare
        ({"stock": 3.0}, "stock = 3.0", [0]),
        ({"price": 80}, "price = 80", [0]),
        ({"brand": ["x", "y"]}, 'brand in ("x", "y")', [1, 2]),  # a bare list means "in"
        ({"brand": {"in": ["x", "y"]}}, "brand in ['x', 'y',]", [1, 2]),
        ({"brand": {"nin": ["x", "y"]}}, 'brand not in ("x", "y")', [0, 3, 4, 5]),  # nin matches missing
        ({"brand": {"in": []}}, "brand in ()", []),
        ({"in_stock": True}, "in_stock", [0, 1, 3, 4]),
        ({"in_stock": False}, "in_stock = false", [2]),
        ({"in_stock": {"ne": True}}, "not in_stock", [2, 5]),
        ({"price": {"exists": True}}, "exists(price)", [0, 1, 2, 3]),
        ({"price": {"exists": False}}, "price not exists", [4, 5]),
        ({"price": {"exists": True}}, "price exists", [0, 1, 2, 3]),
        ({"tags": {"contains": "red"}}, 'tags contains "red"', [0, 4]),
        ({"tags": "red"}, 'tags = "red"', [0, 4]),  # = on tags: has this value
        ({"tags": {"any": ["blue", "sale"]}}, 'tags contains any ("blue", "sale")', [0, 1]),
        ({"tags": ["blue", "sale"]}, 'tags in ("blue", "sale")', [0, 1]),
        ({"tags": {"all": ["red", "sale"]}}, 'tags contains all ("red", "sale")', [0]),
        ({"tags": {"exists": True}}, "exists(tags)", [0, 1, 3, 4]),  # [] is present
        ({"tags": {"ne": "red"}}, 'tags not contains "red"', [1, 2, 3, 5]),
        ({"category": {"prefix": "sh"}}, 'category prefix "sh"', [0, 1, 2, 4]),
        ({"category": {"lt": "i"}}, 'category < "i"', [3]),
        ({"$or": [{"brand": "x"}, {"price": {"lt": 30}}]}, 'brand = "x" or price < 30', [1, 3]),
        ({"$not": {"brand": "acme"}}, 'not brand = "acme"', [1, 2, 3, 5]),
        (
            {"$and": [{"brand": "acme"}, {"$not": {"price": {"exists": True}}}]},
            'brand = "acme" and not exists(price)',
            [4],
        ),
        ({"$not": {"$or": [{"stock": 0}, {"stock": 1}]}}, "not (stock = 0 or stock = 1)", [0, 3, 4, 5]),
        ({}, "", [0, 1, 2, 3, 4, 5]),
        ({"brand": None, "tags": None}, "  ", [0, 1, 2, 3, 4, 5]),  # None: no condition (optional parameters)
    ],
)
def test_operators_in_both_forms(dict_form, text, expected):
    d, s = compile_filter(dict_form, SHOP), compile_filter(text, SHOP)
    assert d == s, (d.describe(), s.describe())
    assert rows_of(d) == rows_of(s) == expected
    again = compile_filter(d.describe(), SHOP)
    assert again == d and again.describe() == d.describe()


def test_precedence_parentheses_and_keywords():
    def same(a, b):
        assert compile_filter(a, SHOP) == compile_filter(b, SHOP), (a, b)

    same("stock = 1 or stock = 2 and in_stock", "stock = 1 or (stock = 2 and in_stock)")
    same("not in_stock and stock = 1", "(not in_stock) and stock = 1")
    same("not not in_stock", "in_stock")
    same("stock = 1 AND (stock = 2 OR NOT in_stock)", "stock = 1 and (stock = 2 or not in_stock)")
    same('brand NOT IN ("x")', {"brand": {"nin": ["x"]}})
    same("exists ( price ) and price>-5", {"price": {"exists": True, "gt": -5}})
    same("((((in_stock))))", "in_stock")
    same("stock = 1 and stock = 1", "stock = 1")  # duplicates go
    same("stock in (2, 1, 2, 1.0)", "stock in (1, 2)")
    assert compile_filter(None, SHOP).matches_all and compile_filter("", SHOP).describe() == ""
    assert not compile_filter("in_stock", SHOP).matches_all
    f = compile_filter("in_stock", SHOP)
    assert compile_filter(f, SHOP) == f and str(f) == "in_stock = true"


def test_strings_numbers_and_names():
    schema = {"s": "str", "n": "int", "x": "float", "in": "int", "my attr": "str", "a`b": "bool", "café": "str"}

    def value(text):
        node = compile_filter(text, schema).node
        return node.value

    assert value(r"s = 'it\'s'") == "it's"
    assert value(r's = "say \"hi\" \\ back"') == 'say "hi" \\ back'
    assert value(r's = "tab\there\nline \u00e9 \/"') == "tab\there\nline é /"
    assert value(r's = "\ud83d\ude00"') == "😀"  # a JSON-style surrogate pair
    assert value('s = "😀 ünïcode"') == "😀 ünïcode"
    assert value("s = ''") == ""
    assert value("n = -3") == -3 and value("n = +3") == 3
    assert value("x = .5") == 0.5 and value("x = -1.5e-2") == -0.015 and value("x = 1e3") == 1000.0
    assert value("x = 9223372036854775807") == 2**63 - 1
    assert value("`in` = 1") == 1
    assert value("`my attr` = 'v'") == "v"
    assert compile_filter("`a``b`", schema).node.attr == "a`b"
    assert compile_filter("café = 'x'", schema).describe() == 'café = "x"'
    for text in ["`in` = 1", "`my attr` = 'v'", "`a``b` = true", r's = "a\"b\\c\n"']:
        f = compile_filter(text, schema)
        assert compile_filter(f.describe(), schema) == f


def test_legacy_keys():
    schema = {"path": "str", "label": "str"}
    table = AttributeTable.from_rows(schema, [{"path": "cats/1.jpg", "label": "cat"}, {"path": "dogs/2.jpg"}])
    assert compile_filter({"path_prefix": "cats/"}, schema).describe() == 'path prefix "cats/"'
    assert compile_filter({"path_prefix": "cats/"}, schema).mask(table).tolist() == [True, False]
    assert compile_filter({"label": ["cat", "dog"], "path_prefix": None}, schema).mask(table).tolist() == [True, False]
    assert compile_filter({"label": None, "path_prefix": ""}, schema).mask(table).tolist() == [True, True]
    assert "unknown attribute" in error({"path_prefix": "a/"}, {"label": "str"})
    # an attribute really called path_prefix wins over the legacy meaning
    assert (
        compile_filter({"path_prefix": "a/"}, {"path_prefix": "str", "path": "str"}).describe() == 'path_prefix = "a/"'
    )


# ---------------------------------------------------------------------------------------------------- errors


def test_errors_name_the_position_and_the_known_attributes():
    known = "known attributes: brand (str), category (str), in_stock (bool), price (float), stock (int), tags (tags)"
    msg = error('category = "shoes" and pricee < 100')
    assert msg.startswith('bad filter at column 24: unknown attribute "pricee" (did you mean "price"?)')
    assert msg.endswith(known)
    assert error({"$or": [{"brand": "x"}, {"colour": "red"}]}).startswith(
        'bad filter at filter["$or"][1]["colour"]: unknown attribute "colour"'
    )
    assert "column 9" in error("price < ") and "found the end of the text" in error("price < ")
    assert error("price < 'cheap'").startswith('bad filter at column 1: "price" is float, so < needs a number')
    assert "a bool is not a number" in error({"price": {"lt": True}})
    assert "a bool is not a number" in error("stock in (1, true)")
    assert "needs true or false, got 1" in error("in_stock = 1")
    assert "needs quoted text" in error("category = 12")
    assert "found 'shoes' (quote text: \"shoes\")" in error("category = shoes")
    assert '< does not apply to "in_stock" (bool)' in error("in_stock < 1")
    assert 'contains does not apply to "category" (str)' in error("category contains 'x'")
    assert "prefix does not apply" in error({"stock": {"prefix": "1"}})
    assert "a bare name tests a bool attribute" in error("category and in_stock")
    assert "column 10: expected ')' to close the '(' at column 1" in error("(in_stock")
    assert "column 10: expected and, or, or the end of the filter, found ')'" in error("in_stock )")
    assert 'column 1: the quote " is never closed' in error('"abc')
    assert "column 12: the quote ' is never closed" in error("category = 'abc\\")
    assert "column 15: unknown escape \\q in" in error(r'category = "ab\q"')
    assert 'column 12: unexpected character "#"' in error("category = #")
    assert "column 11: expected in, contains, prefix or exists after not, found '='" in error("brand not = 'x'")
    assert "write it in backticks" in error("exists(in)")
    assert 'unknown operator "like"' in error({"brand": {"like": "a%"}})
    assert 'unknown logical operator "$xor"' in error({"$xor": []})
    assert "$or needs a non-empty list" in error({"$or": []})
    assert "an empty filter inside" in error({"$not": {}})
    assert "the logical operators are $and, $or, $not" in error({"or": [{"brand": "x"}]}, {"brand": "str"})
    assert "in needs a list" in error({"brand": {"in": "x"}})
    assert "lt needs one value" in error({"price": {"lt": [1, 2]}})
    assert "exists needs true or false" in error({"price": {"exists": 1}})
    assert "no operator" in error({"price": {}})
    assert "not a finite number" in error({"price": {"lt": float("nan")}})
    assert "out of range" in error("stock = 99999999999999999999")
    assert "contains all needs at least one value" in error("tags contains all ()")
    assert "a filter is a dict, a string or None" in error(42)
    assert "known attributes: none" in error("a = 1", {})
    assert 'has type "text"' in error("a = 1", {"a": "text"})


def test_text_that_is_not_valid_unicode_is_refused():
    assert "column 12: a lone surrogate" in error('category = \ud800"')
    assert 'column 12: text "\\ud800" is not valid Unicode' in error(r'category = "\ud800"')
    assert "is not valid Unicode" in error({"category": "a\udc80"})
    assert "is not valid Unicode" in error({"brand": {"in": ["ok", "\ud800"]}})
    assert "the name" in error({"bad\ud800": 1})
    with pytest.raises(SchemaError, match="not valid Unicode"):
        AttributeTable.from_rows({"s": "str"}, [{"s": "\ud800"}])
    with pytest.raises(SchemaError, match="not valid Unicode"):
        AttributeTable.from_rows({"t": "tags"}, [{"t": ["ok", "\udfff"]}])
    msg = error(r'category = "\ud800"')
    msg.encode("utf-8")  # the message itself is printable


def test_size_limits():
    small = dataclasses.replace(LIMITS, serve_max_values=5, max_filter_nodes=10, max_filter_depth=4)
    assert compile_filter({"stock": {"in": [1, 2, 3, 4, 5]}}, SHOP, limits=small)
    assert "more than 5 values" in error({"stock": {"in": list(range(6))}}, limits=small)
    assert "more than 5 values" in error("stock in (1, 2, 3, 4, 5, 6)", limits=small)
    assert "more than 5 values" in error({"stock": [1, 2, 3], "brand": ["a", "b", "c"]}, limits=small)  # in all
    assert "more than 10 conditions" in error(" or ".join(["in_stock"] * 11), limits=small)
    assert "more than 10 conditions" in error({"$or": [{"stock": i} for i in range(11)]}, limits=small)
    assert "nests more than 4 levels" in error("(((((in_stock)))))", limits=small)
    assert "nests more than 4 levels" in error("not " * 5 + "in_stock", limits=small)
    deep: dict = {"stock": 1}
    for _ in range(5):
        deep = {"$not": deep}
    assert "nests more than 4 levels" in error(deep, limits=small)
    # far past Python's recursion limit: refused cleanly, quickly, without a RecursionError
    assert "nests more than" in error("(" * 100_000 + "in_stock" + ")" * 100_000)
    assert "nests more than" in error("not " * 100_000 + "in_stock")
    assert "more than" in error({"stock": {"in": list(range(LIMITS.serve_max_values + 1))}})
    assert "more than" in error(" and ".join(["in_stock"] * (LIMITS.max_filter_nodes + 1)))


def test_mask_refuses_a_table_with_other_types():
    f = compile_filter("stock = 1", SHOP)
    with pytest.raises(FilterError, match="compile it again"):
        f.mask(AttributeTable({"stock": "str"}))
    assert f.mask(AttributeTable({"other": "int"})).tolist() == []  # an absent column is all missing
    t = AttributeTable.from_rows({"other": "int"}, [{"other": 1}])
    assert compile_filter("stock != 1", SHOP).mask(t).tolist() == [True]


# --------------------------------------------------------------------------------------------- the table


def test_table_writes_by_position():
    t = shop()
    assert len(t) == 6 and t.live_count == 6
    assert t.row(0) == ROWS[0] and t.row(5) == {} and t.row(3, ["tags", "brand"]) == {"tags": []}
    assert t.values("brand", [0, 3, 1]) == ["acme", None, "x"]
    pos = t.append([{"category": "bags", "price": 5, "tags": ["red", "red", "new"]}])
    assert pos.tolist() == [6] and t.row(6) == {"category": "bags", "price": 5.0, "tags": ["red", "new"]}
    assert isinstance(t.row(6)["price"], float)
    t.replace([0], [{"category": "hats", "stock": 2}])
    assert t.row(0) == {"category": "hats", "stock": 2}
    red = compile_filter('tags contains "red"', SHOP)
    assert np.flatnonzero(red.mask(t)).tolist() == [4, 6]
    t.update([4, 6], [{"price": 9.5, "tags": None}, {"in_stock": False}])
    assert t.row(4) == {"category": "shoes", "in_stock": True, "brand": "acme", "price": 9.5}
    assert t.row(6)["in_stock"] is False and np.flatnonzero(red.mask(t)).tolist() == [6]
    t.delete([6, 1])
    assert len(t) == 7 and t.live_count == 5 and t.row(6) == {}
    assert np.flatnonzero(red.mask(t)).tolist() == []
    everything = compile_filter(None, SHOP)
    assert np.flatnonzero(everything.mask(t)).tolist() == [0, 2, 3, 4, 5]
    assert np.flatnonzero(compile_filter("not exists(brand)", SHOP).mask(t)).tolist() == [0, 3, 5]
    t.replace([1], [{"brand": "back"}])  # a deleted row comes back
    assert t.live_count == 6 and t.alive().tolist() == [True, True, True, True, True, True, False]
    before = [t.row(i) for i in range(7) if t.alive()[i]]
    keep = t.compact()
    assert keep.tolist() == [0, 1, 2, 3, 4, 5] and len(t) == 6
    assert [t.row(i) for i in range(6)] == before


def test_table_write_errors_change_nothing():
    t = shop()
    snapshot = [t.row(i) for i in range(len(t))]
    bad = [
        (lambda: t.append([{"price": 1.0}, {"price": "cheap"}]), 'rows\\[1\\]: "price" is float and needs a number'),
        (lambda: t.append([{"stock": True}]), "is int and needs an integer, got true"),
        (lambda: t.append([{"stock": 1.5}]), "is int and needs an integer"),
        (lambda: t.append([{"stock": 2**63}]), "out of range"),
        (lambda: t.append([{"in_stock": 1}]), "is bool and needs true or false"),
        (lambda: t.append([{"tags": "red"}]), "is tags and needs a list of text"),
        (lambda: t.append([{"tags": ["a", 1]}]), "is tags and needs a list of text"),
        (lambda: t.append([{"colour": "red"}]), 'unknown attribute "colour"; known attributes: brand'),
        (lambda: t.append(["not a dict"]), "not a mapping"),
        (lambda: t.replace([9], [{}]), "row position 9 is out of range"),
        (lambda: t.replace([1, 1], [{}, {}]), "appears twice"),
        (lambda: t.replace([1], [{}, {}]), "1 positions but 2 rows"),
        (lambda: t.update([0], [{"price": "x"}]), "needs a number"),
        (lambda: t.values("nope"), "unknown attribute"),
        (lambda: t.add_column("$or", "int"), "not starting with \\$"),
        (lambda: t.add_column("x", "date"), "the types are int, float, bool, str, tags"),
        (lambda: t.add_column("price", "float"), "exists already"),
    ]
    for call, message in bad:
        with pytest.raises(SchemaError, match=message):
            call()
    assert [t.row(i) for i in range(len(t))] == snapshot and len(t) == 6
    t.delete([2])
    with pytest.raises(SchemaError, match="row 2 is deleted"):
        t.update([2], [{"price": 1.0}])


def test_values_are_normalised():
    t = AttributeTable.from_rows(
        {"n": "int", "x": "float", "b": "bool", "t": "tags"},
        [
            {"n": np.int32(4), "x": np.float32(0.5), "b": np.bool_(True), "t": ("a", "b", "a")},
            {"n": 7.0, "x": float("nan"), "b": None, "t": {"z"}},
            {"x": 3},
        ],
    )
    assert t.row(0) == {"n": 4, "x": 0.5, "b": True, "t": ["a", "b"]}
    assert t.row(1) == {"n": 7, "t": ["z"]}  # NaN is missing
    assert t.row(2) == {"x": 3.0}
    assert np.flatnonzero(compile_filter("exists(x)", t.schema).mask(t)).tolist() == [0, 2]
    t.add_column("new", "str")
    assert t.row(0)["n"] == 4 and "new" not in t.row(0)
    t.update([2], [{"new": "v"}])
    assert np.flatnonzero(compile_filter("new = 'v'", t.schema).mask(t)).tolist() == [2]


def test_copy_is_independent():
    t = shop()
    c = t.copy()
    t.replace([0], [{"brand": "changed", "tags": ["new"]}])
    t.delete([1])
    t.append([{"brand": "x"}])
    assert c.row(0) == ROWS[0] and c.row(1) == ROWS[1] and len(c) == 6
    assert rows_of('brand = "x"', table=c) == [1] and np.flatnonzero(
        compile_filter('brand = "x"', SHOP).mask(t)
    ).tolist() == [6]
    c.append([{"tags": ["new"]}])
    assert np.flatnonzero(compile_filter('tags contains "new"', SHOP).mask(c)).tolist() == [6]
    assert np.flatnonzero(compile_filter('tags contains "new"', SHOP).mask(t)).tolist() == [0]


def test_many_rewrites_of_tags_and_text_stay_consistent():
    """Dead tag pairs are squeezed out; cached per-value answers grow with the vocabulary."""
    rng = random.Random(1)
    schema = {"t": "tags", "s": "str"}
    t = AttributeTable.from_rows(schema, [{} for _ in range(50)])
    ref: list[dict] = [{} for _ in range(50)]
    prefix = compile_filter("s prefix 'a'", schema)
    for step in range(3000):
        i = rng.randrange(50)
        row = {"t": rng.sample(["a", "b", "c", "d"], rng.randrange(4)), "s": rng.choice(["a1", "b", f"a{step}", None])}
        t.replace([i], [row])
        ref[i] = {k: v for k, v in row.items() if v is not None}
        if step % 500 == 0:
            assert prefix.mask(t).tolist() == [r.get("s", "").startswith("a") for r in ref]
    assert [t.row(i) for i in range(50)] == ref
    for tag in "abcd":
        f = compile_filter({"t": tag}, schema)
        assert f.mask(t).tolist() == [tag in r.get("t", ()) for r in ref]
    assert prefix.mask(t).tolist() == [r.get("s", "").startswith("a") for r in ref]


# ---------------------------------------------------------------------- random filters against a reference

RSCHEMA = {"n": "int", "x": "float", "b": "bool", "s": "str", "t": "tags"}
_OPS = {
    "int": ["eq", "ne", "lt", "lte", "gt", "gte", "in", "nin", "exists"],
    "bool": ["eq", "ne", "in", "nin", "exists"],
    "str": ["eq", "ne", "lt", "lte", "gt", "gte", "in", "nin", "exists", "prefix"],
    "tags": ["eq", "ne", "in", "nin", "contains", "any", "all", "exists"],
}
_OPS["float"] = _OPS["int"]
_SYM = {"eq": ["=", "=="], "ne": ["!=", "<>"], "lt": ["<"], "lte": ["<="], "gt": [">"], "gte": [">="]}
_TEXTS = ["a", "b", "ab", "ba", "", "é", 'q"uote']


def _random_value(rng: random.Random, t: str):
    if t == "int":
        return rng.randrange(-2, 8)
    if t == "float":
        return rng.choice([rng.randrange(0, 10), round(rng.uniform(-1, 10), 2)])
    if t == "bool":
        return rng.random() < 0.5
    return rng.choice(_TEXTS[:4] if t == "tags" else _TEXTS)


def _random_row(rng: random.Random) -> dict:
    row = {}
    for name, t in RSCHEMA.items():
        if rng.random() < 0.2:
            continue
        if t == "tags":
            row[name] = rng.sample(_TEXTS[:4], rng.randrange(4))
        elif t == "float":
            row[name] = float(_random_value(rng, t))
        else:
            row[name] = _random_value(rng, t)
    return row


def _random_filter(rng: random.Random, depth: int = 0):
    """A filter as a small tuple tree: ("cond", attr, op, value) | ("and"|"or", [...]) | ("not", f)."""
    r = rng.random()
    if depth < 3 and r < 0.3:
        return (rng.choice(["and", "or"]), [_random_filter(rng, depth + 1) for _ in range(rng.randrange(2, 4))])
    if depth < 3 and r < 0.4:
        return ("not", _random_filter(rng, depth + 1))
    attr = rng.choice(list(RSCHEMA))
    t = RSCHEMA[attr]
    op = rng.choice(_OPS[t])
    if op in ("in", "nin", "any", "all"):
        value = [_random_value(rng, t) for _ in range(rng.randrange(1 if op == "all" else 0, 4))]
    elif op == "exists":
        value = rng.random() < 0.7
    else:
        value = _random_value(rng, t)
    return ("cond", attr, op, value)


def _as_dict(f) -> dict:
    if f[0] == "cond":
        return {f[1]: {("$" if len(f[1]) % 2 else "") + f[2]: f[3]}}
    if f[0] == "not":
        return {"$not": _as_dict(f[1])}
    return {"$" + f[0]: [_as_dict(x) for x in f[1]]}


def _lit(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, str) else repr(v)


def _as_text(f, rng: random.Random) -> str:
    if f[0] == "not":
        return f"{rng.choice(['not', 'NOT'])} ({_as_text(f[1], rng)})"
    if f[0] in ("and", "or"):
        word = rng.choice([f[0], f[0].upper()])
        return "(" + f" {word} ".join(_as_text(x, rng) for x in f[1]) + ")"
    _, attr, op, v = f
    if op == "exists":
        return (f"exists({attr})" if rng.random() < 0.5 else f"{attr} exists") if v else f"{attr} not exists"
    if op in ("in", "nin", "any", "all"):
        items = ", ".join(_lit(x) for x in v)
        items = f"[{items}]" if rng.random() < 0.5 else f"({items})"
        word = {"in": "in", "nin": "not in", "any": "contains any", "all": "contains all"}[op]
        return f"{attr} {word} {items}"
    if op in ("contains", "prefix"):
        return f"{attr} {op} {_lit(v)}"
    if attr == "b" and op == "eq" and v is True and rng.random() < 0.5:
        return "b"
    return f"{attr} {rng.choice(_SYM[op])} {_lit(v)}"


def _ref(f, row: dict | None) -> bool:
    if row is None:  # deleted
        return False
    if f[0] == "and":
        return all(_ref(x, row) for x in f[1])
    if f[0] == "or":
        return any(_ref(x, row) for x in f[1])
    if f[0] == "not":
        return not _ref(f[1], row)
    _, attr, op, v = f
    if op == "exists":
        return (attr in row) == v
    if op in ("ne", "nin"):
        return not _ref(("cond", attr, {"ne": "eq", "nin": "in"}[op], v), row)
    if attr not in row:
        return False
    have = row[attr]
    if RSCHEMA[attr] == "tags":
        wanted = {"eq": [v], "contains": [v]}.get(op, v)
        return all(w in have for w in wanted) if op == "all" else any(w in have for w in wanted)
    return {
        "eq": lambda: have == v,
        "lt": lambda: have < v,
        "lte": lambda: have <= v,
        "gt": lambda: have > v,
        "gte": lambda: have >= v,
        "in": lambda: have in v,
        "prefix": lambda: have.startswith(v),
    }[op]()


def test_random_filters_match_a_plain_python_reference():
    rng = random.Random(12)
    rows: list[dict | None] = [_random_row(rng) for _ in range(300)]
    table = AttributeTable.from_rows(RSCHEMA, rows)
    for round_ in range(4):
        for _ in range(150):
            f = _random_filter(rng)
            expected = [_ref(f, r) for r in rows]
            text = _as_text(f, rng)
            by_dict, by_text = compile_filter(_as_dict(f), RSCHEMA), compile_filter(text, RSCHEMA)
            assert by_dict == by_text, (text, by_dict.describe(), by_text.describe())
            assert by_dict.mask(table).tolist() == expected, (round_, text, by_dict.describe())
            canonical = compile_filter(by_dict.describe(), RSCHEMA)
            assert canonical == by_dict and canonical.describe() == by_dict.describe()
        # live writes between rounds: replace, update, delete, append; compaction in the last round
        for _ in range(60):
            i = rng.randrange(len(rows))
            action = rng.random()
            if action < 0.4:
                rows[i] = _random_row(rng)
                table.replace([i], [rows[i]])
            elif action < 0.7 and rows[i] is not None:
                change = _random_row(rng)
                drop = rng.choice(list(RSCHEMA))
                change[drop] = None
                table.update([i], [change])
                rows[i] = {k: v for k, v in {**rows[i], **change}.items() if v is not None}
            elif action < 0.85:
                rows[i] = None
                table.delete([i])
            else:
                rows.append(_random_row(rng))
                table.append([rows[-1]])
        assert [table.row(i) if r is not None else {} for i, r in enumerate(rows)] == [r or {} for r in rows]
        if round_ == 2:
            keep = table.compact()
            rows = [rows[i] for i in keep]


def test_filter_is_a_value():
    a, b = compile_filter("in_stock and stock > 1", SHOP), compile_filter({"stock": {"gt": 1}, "in_stock": True}, SHOP)
    assert a == b and isinstance(a, Filter) and a.describe() == "in_stock = true and stock > 1"


def _timing() -> None:  # python tests/test_filters.py
    rng = np.random.default_rng(0)
    n = 100_000
    schema = {"category": "str", "price": "float", "in_stock": "bool", "brand": "str", "tags": "tags", "path": "str"}
    rows = [
        {
            "category": f"c{rng.integers(50)}",
            "price": float(rng.uniform(0, 500)),
            "in_stock": bool(rng.random() < 0.8),
            "brand": f"b{rng.integers(200)}",
            "tags": [f"t{j}" for j in rng.choice(30, 3, replace=False)],
            "path": f"dir{i % 100}/img{i}.jpg",
        }
        for i in range(n)
    ]
    t0 = time.perf_counter()
    table = AttributeTable.from_rows(schema, rows)
    print(f"build {n} rows: {time.perf_counter() - t0:.2f} s")
    for text in [
        'category = "c3" and price < 100 and in_stock',
        'brand not in ("b1", "b2") and price >= 50 and tags contains "t3"',
        'tags contains any ("t1", "t2", "t3")',
        'path prefix "dir7/"',
    ]:
        f = compile_filter(text, schema)
        times = []
        for _ in range(51):
            t0 = time.perf_counter()
            f.mask(table)
            times.append((time.perf_counter() - t0) * 1e3)
        rest = sorted(times[1:])
        print(f"{text:68s} median {rest[25]:.2f} ms, best {rest[0]:.2f} ms, first {times[0]:.1f} ms")
    t0 = time.perf_counter()
    for i in range(1000):
        table.replace([i * 7], [rows[i]])
    print(f"replace one row: {(time.perf_counter() - t0):.3f} ms (mean of 1000)")
    t0 = time.perf_counter()
    table.replace(np.arange(1000) * 7, rows[:1000])
    print(f"replace 1000 rows at once: {(time.perf_counter() - t0) * 1e3:.1f} ms")
    t0 = time.perf_counter()
    table.copy()
    print(f"copy: {(time.perf_counter() - t0) * 1e3:.1f} ms")


if __name__ == "__main__":
    _timing()
