"""simsearch.catalog: reading catalogue files (CSV/TSV, JSONL, Parquet) written by the tests, and their errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from simsearch.catalog import Catalog, CatalogRow, read_catalog
from simsearch.errors import CatalogError, SimsearchError
from simsearch.filters import AttributeTable, compile_filter


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error(path: Path, **kw) -> str:
    with pytest.raises(CatalogError) as e:
        read_catalog(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, SimsearchError)
    return msg


SHOP_CSV = """key,image,category,price,in_stock,stock,tags,code,note
sku-1,photos/a.jpg,shoes,80,true,3,"[""red"", ""sale""]",007,
sku-2,photos/b.jpg|photos/c.jpg | /abs/d.jpg,shoes,120.5,FALSE,0,[],010,"two
lines"
sku-3,e.jpg,hats,,True,,"[""blue""]",,12
"sku,4",e.jpg|e.jpg,hats,20,false,7,,100,words
"""


def test_csv_types_images_and_lines(tmp_path):
    cat = read_catalog(write(tmp_path / "items.csv", SHOP_CSV))
    assert isinstance(cat, Catalog) and len(cat) == 4
    assert cat.key_column == "key" and cat.image_column == "image"
    assert cat.schema == {
        "category": "str",
        "price": "float",  # 80 and 120.5
        "in_stock": "bool",  # true, FALSE, True, false
        "stock": "int",
        "tags": "tags",
        "code": "str",  # 007 keeps its zeros, so the column is text
        "note": "str",  # a number and words: text, as written
    }
    r1, r2, r3, r4 = cat.rows
    assert r1 == CatalogRow(
        "sku-1",
        (tmp_path / "photos/a.jpg",),
        {"category": "shoes", "price": 80.0, "in_stock": True, "stock": 3, "tags": ["red", "sale"], "code": "007"},
        2,
    )
    assert r2.images == (tmp_path / "photos/b.jpg", tmp_path / "photos/c.jpg", Path("/abs/d.jpg"))
    assert r2.attributes["note"] == "two\nlines" and r2.attributes["in_stock"] is False and r2.attributes["tags"] == []
    assert r2.line == 3 and r3.line == 5 and r4.line == 6  # a quoted cell spans lines 3-4
    assert r3.attributes == {"category": "hats", "in_stock": True, "tags": ["blue"], "note": "12"}  # empty = missing
    assert r4.key == "sku,4" and r4.images == (tmp_path / "e.jpg",)  # repeats dropped
    assert all(p.is_absolute() for r in cat.rows for p in r.images)


def test_root_and_missing_images(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.jpg").write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    path = write(sub / "items.csv", "key,photos\na,a.jpg|b.jpg\nb,../pics/a.jpg\n")
    cat = read_catalog(path)
    assert cat.image_column == "photos" and cat.rows[1].images == (tmp_path / "pics" / "a.jpg",)
    assert [(r.key, p.name) for r, p in cat.missing_images()] == [("a", "a.jpg"), ("a", "b.jpg")]
    cat = read_catalog(path, root=tmp_path / "pics")
    assert cat.rows[0].images[0] == tmp_path / "pics" / "a.jpg"
    assert [(r.key, str(p)) for r, p in cat.missing_images()] == [("a", str(tmp_path / "pics" / "b.jpg"))]


def test_csv_inference_details(tmp_path):
    text = (
        "key;Image;i;f;b;t;empty;big;neg;word;sci\n"
        "a;x.jpg;1;1;true;[];;99999999999999999999;-3;nan;1e3\n"
        'b;x.jpg;2;2.5;false;["q"];;1;+4;inf;-2.5E-2\n'
    )
    cat = read_catalog(write(tmp_path / "items.csv", "\ufeff" + text))  # a BOM, ; separated, Image in capitals
    assert cat.image_column == "Image"
    assert cat.schema == {
        "i": "int",
        "f": "float",
        "b": "bool",
        "t": "tags",
        "empty": "str",
        "big": "str",  # beyond 64 bits: kept exact, as text
        "neg": "int",
        "word": "str",  # nan and inf are words in a CSV
        "sci": "float",
    }
    assert cat.rows[1].attributes["neg"] == 4 and cat.rows[1].attributes["sci"] == -0.025
    tsv = read_catalog(write(tmp_path / "items.tsv", "key\timage\tprice\na\tx.jpg\t3\n"))
    assert tsv.schema == {"price": "int"} and tsv.rows[0].attributes == {"price": 3}
    spaced = read_catalog(write(tmp_path / "spaced.csv", "key , image , price\n a , x.jpg , 3 \n\n"))
    assert spaced.rows[0].key == "a" and spaced.rows[0].attributes == {"price": 3}
    trailing = read_catalog(write(tmp_path / "trailing.csv", "key,image\na,x.jpg,,\nb,y.jpg\n"))
    assert [r.key for r in trailing.rows] == ["a", "b"]
    short = read_catalog(write(tmp_path / "short.csv", "key,image,price\na,x.jpg\n"))
    assert short.rows[0].attributes == {}


def test_jsonl(tmp_path):
    lines = [
        {"key": "a", "images": ["x.jpg", "y.jpg"], "price": 3, "stock": 2, "on": True, "tags": ["r", "r", "g"]},
        {"key": 17, "images": "z|w.jpg", "price": 2.5, "stock": None, "on": False, "tags": []},
        {"key": "c", "images": "x.jpg", "extra": "only here"},
    ]
    text = "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n"
    text = text.replace('"price": 2.5', '"price": 2.5, "nan": NaN')
    cat = read_catalog(write(tmp_path / "items.jsonl", text))
    assert cat.image_column == "images"
    assert cat.schema == {"price": "float", "stock": "int", "on": "bool", "tags": "tags", "nan": "str", "extra": "str"}
    a, b, c = cat.rows
    assert a.attributes == {"price": 3.0, "stock": 2, "on": True, "tags": ["r", "g"]}
    assert isinstance(a.attributes["price"], float)
    assert b.key == "17" and b.images == (tmp_path / "z|w.jpg",)  # a string is one path in JSONL
    assert b.attributes == {"price": 2.5, "on": False, "tags": []}  # null and NaN are missing
    assert c.line == 4 and c.attributes == {"extra": "only here"}


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "sku": pa.array(["a", "b", "c"]),
            "photos": pa.array([["x.jpg", "y.jpg"], ["z.jpg"], ["/abs/w.jpg"]], pa.list_(pa.string())),
            "price": pa.array([1.5, None, float("nan")]),
            "stock": pa.array([1, 2, None], pa.int32()),
            "on": pa.array([True, None, False]),
            "brand": pa.array(["p", "q", None]).dictionary_encode(),
            "tags": pa.array([["t"], None, []], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, tmp_path / "items.parquet")
    cat = read_catalog(tmp_path / "items.parquet", key_column="sku")
    assert cat.key_column == "sku" and cat.image_column == "photos"
    assert cat.schema == {"price": "float", "stock": "int", "on": "bool", "brand": "str", "tags": "tags"}
    assert [r.line for r in cat.rows] == [1, 2, 3]
    assert cat.rows[0].images == (tmp_path / "x.jpg", tmp_path / "y.jpg")
    assert cat.rows[0].attributes == {"price": 1.5, "stock": 1, "on": True, "brand": "p", "tags": ["t"]}
    assert cat.rows[2].attributes == {"on": False, "tags": []}
    pq.write_table(pa.table({"key": [1, 1], "image": ["a.jpg", "b.jpg"]}), tmp_path / "dupes.parquet")
    assert 'the key "1" appears twice, on rows 1 and 2' in error(tmp_path / "dupes.parquet")
    pq.write_table(pa.table({"key": [b"\xff"], "image": ["a.jpg"]}), tmp_path / "binary.parquet")
    assert "row 1: the key b'\\xff' is not valid UTF-8 text" in error(tmp_path / "binary.parquet")
    write(tmp_path / "broken.parquet", "not parquet")
    assert "not a readable Parquet file" in error(tmp_path / "broken.parquet")


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    path = write(tmp_path / "items.parquet", "whatever")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails
    assert "reading Parquet needs pyarrow: pip install 'simsearch[scale]'" in error(path)


def test_catalogue_attributes_feed_the_filters(tmp_path):
    cat = read_catalog(write(tmp_path / "items.csv", SHOP_CSV))
    table = AttributeTable.from_rows(cat.schema, [r.attributes for r in cat.rows])
    f = compile_filter('category = "shoes" and in_stock and tags contains "red"', cat.schema)
    assert [cat.rows[i].key for i in np.flatnonzero(f.mask(table))] == ["sku-1"]
    f = compile_filter({"price": {"lt": 100}, "code": {"prefix": "0"}}, cat.schema)
    assert [cat.rows[i].key for i in np.flatnonzero(f.mask(table))] == ["sku-1"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "sku,image\na,x.jpg\n", 'no key column (looked for a "key" column); found columns: sku, image;'),
        (
            "a.csv",
            "key,picture,x\na,x.jpg,1\n",
            "no image column (looked for any of image, images, photo, photos, "
            "path, paths, file); found columns: key, picture, x; name it with image_column / --image-column",
        ),
        ("a.csv", "key,image\na,x.jpg\nb,y.jpg\na,z.jpg\n", 'line 4: the key "a" appears twice, on lines 2 and 4'),
        ("a.csv", "key,image\n,x.jpg\n", "a.csv line 2: empty key (every row needs one)"),
        ("a.csv", "key,image\na,\n", 'line 2 (key "a"): no image'),
        ("a.csv", "key,image\na, | \n", 'line 2 (key "a"): no image'),
        ("a.csv", "key,image,score\na,x.jpg,1\n", 'the column "score" has a reserved name (id, images, key, '),
        ("a.csv", "key,image,photos\na,x.jpg,1\n", 'the column "photos" has a reserved name'),
        ("a.csv", "key,image,s\na,x.jpg," + "x" * 10_001 + "\n", "is longer than 10000 characters"),
        ("a.csv", "key,image,$or\na,x.jpg,1\n", 'bad column name "$or"'),
        ("a.csv", "key,image,x,x\na,x.jpg,1,2\n", 'line 1: the header has the column "x" twice'),
        ("a.csv", "key,image,\na,x.jpg,1\n", "line 1: the header has a column without a name"),
        ("a.csv", "key,image\na,x.jpg,extra\n", "line 2: 3 cells but the header has 2 columns"),
        (
            "a.csv",
            'key,image,t\na,x.jpg,"[""x""]"\nb,x.jpg,plain\n',
            'line 3: the column "t" mixes types: line 2 has "[\\"x\\"]" (a list of text), line 3 has "plain" (text)',
        ),
        ("a.csv", "key,image\na,https://example.com/a.jpg\n", "is a URL; download the images"),
        ("a.csv", 'key,image\n"a\tb",x.jpg\n', 'the key "a\\tb" contains a control character'),
        ("a.csv", "", "the catalogue is empty"),
        ("a.csv", "\n\n", "the catalogue is empty"),
        (
            "a.jsonl",
            '{"key": "a", "image": "x.jpg", "price": 12}\n{"key": "b", "image": "x.jpg", "price": "abc"}\n',
            'a.jsonl line 2: the column "price" mixes types: line 1 has 12 (a number), line 2 has "abc" (text)',
        ),
        (
            "a.jsonl",
            '{"key": "a", "image": "x.jpg", "n": 1.5}\n{"key": "b", "image": "x.jpg", "n": 1}\n'
            '{"key": "c", "image": "x.jpg", "n": true}\n',
            'line 3: the column "n" mixes types: line 1 has 1.5 (a number), line 3 has True (true/false)',
        ),
        ("a.jsonl", '{"key": "a", "image": "x.jpg", "n": [1]}\n', '"n" = [1] (list) is not an attribute value'),
        ("a.jsonl", '{"key": "a", "image": "x.jpg", "n": {"a": 1}}\n', "is not an attribute value"),
        ("a.jsonl", '{"key": "a", "image": "x.jpg", "n": 123456789012345678901234567890}\n', "out of range"),
        ("a.jsonl", '{"key": "a", "image": "x.jpg"}\n{"key": "b", "image": [1]}\n', "an image path is text, got 1"),
        ("a.jsonl", '{"key": "a", "image": "x.jpg"}\n{"key": "b", "image": 3}\n', "images are a path or a list"),
        ("a.jsonl", '{"key": true, "image": "x.jpg"}\n', "a key is text or an integer, got True"),
        ("a.jsonl", '{"key": "\\ud800", "image": "x.jpg"}\n', 'line 1: the key "\\ud800" is not valid UTF-8 text'),
        ("a.jsonl", '{"key": "a", "image": "x.jpg", "s": "\\udc00"}\n', "is not valid UTF-8 text"),
        ("a.jsonl", '{"key": "a", "image": "x.jpg", "t": ["ok", "\\udc00"]}\n', 'a tag of "t" "\\udc00" is not valid'),
        ("a.jsonl", '{"key": "a", "image": "x\\ud800.jpg"}\n', "the image path"),
        ("a.jsonl", '{"key": "a", "image": "x.jpg", "\\ud800": 1}\n', "bad column name"),
        ("a.jsonl", '{"key": "a", "image": "x.jpg"}\n{"key": "b", \n', "line 2: not valid JSON"),
        ("a.jsonl", "[1, 2]\n", "line 1: each line must be a JSON object"),
        ("a.jsonl", '{"image": "x.jpg"}\n', 'no key column (looked for a "key" column); found columns: image'),
        ("a.json", "{}", "unknown catalogue format '.json': use .csv, .tsv, .jsonl or .parquet"),
    ],
)
def test_bad_catalogues_get_one_clear_line(tmp_path, name, text, message):
    assert message in error(write(tmp_path / name, text))


def test_more_errors(tmp_path):
    assert "no such catalogue file" in error(tmp_path / "nope.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("key,image\na,x.jpg\nb,caf\xe9.jpg\n".encode("latin-1"))
    assert "latin1.csv line 3: not valid UTF-8 text (byte 0xe9); save the file as UTF-8" in error(bad)
    path = write(tmp_path / "items.csv", "id,image\na,x.jpg\n")
    assert read_catalog(path, key_column="id").rows[0].key == "a"  # id is the key here, not an attribute
    path = write(tmp_path / "two.csv", "key,image,photo\na,x.jpg,y.jpg\n")
    assert read_catalog(path).image_column == "image"
    assert read_catalog(path, image_column="photo").rows[0].attributes == {"image": "x.jpg"}
    assert 'no image column (looked for a "pic" column)' in error(path, image_column="pic")
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"key,image\na,x\x00.jpg\n")
    assert "NUL" in error(nul)
