"""Indexes written by simsearch 0.1 (format 1: items were files) open, search and update with format 2."""

from __future__ import annotations

import json
import sqlite3

import faiss
import numpy as np
import pytest
from conftest import LAYOUT, TINY, write_image

import simsearch
from simsearch.index import build_index, verify_index
from simsearch.store import read_manifest

V1_SCHEMA = """
CREATE TABLE items(
    id INTEGER PRIMARY KEY, root INTEGER NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, label TEXT, UNIQUE(root, path));
CREATE INDEX items_label ON items(label);
CREATE TABLE skipped(
    root INTEGER NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL, PRIMARY KEY(root, path));
"""


def downgrade_to_v1(path) -> dict[str, int]:
    """Rewrite a freshly built index exactly as simsearch 0.1 wrote it (manifest and metadata of format 1)."""
    m = read_manifest(path)
    new = sqlite3.connect(path / m.metadata_file)
    rows = new.execute(
        "SELECT p.id, p.root, p.path, p.size, p.mtime_ns, json_extract(i.attrs, '$.label') "
        "FROM photos p JOIN items i ON i.id = p.item ORDER BY p.id"
    ).fetchall()
    skipped = new.execute("SELECT root, path, size, mtime_ns, reason FROM skipped").fetchall()
    new.close()
    (path / m.metadata_file).unlink()
    old = sqlite3.connect(path / m.metadata_file)
    old.executescript(V1_SCHEMA)
    old.executemany("INSERT INTO items VALUES (?,?,?,?,?,?)", rows)
    old.executemany("INSERT INTO skipped VALUES (?,?,?,?,?)", skipped)
    old.commit()
    old.close()
    d = json.loads((path / "manifest.json").read_text())
    for field in ("items", "attributes", "item_pooling", "source", "delta_seq"):
        d.pop(field)
    d["format_version"] = 1
    (path / "manifest.json").write_text(json.dumps(d, indent=2))
    return {r[2]: r[0] for r in rows}


@pytest.fixture
def v1_index(tmp_path, _register_tiny_backbone):
    root = tmp_path / "photos"
    for rel, seed in LAYOUT.items():
        write_image(root / rel, seed)
    out = tmp_path / "index"
    build_index([root], out, backbone=TINY, batch_size=4, workers=2)
    ids = downgrade_to_v1(out)
    return root, out, ids


def test_a_format_1_index_opens_and_searches_unchanged(v1_index):
    _, out, ids = v1_index
    assert json.loads((out / "manifest.json").read_text())["format_version"] == 1
    assert verify_index(out)[0] == []
    with simsearch.open_index(out) as idx:
        assert idx.manifest.format_version == 1 and len(idx) == len(LAYOUT)
        it = idx.item(ids["cats/c1.jpg"])
        assert (it.key, it.label, it.path) == ("cats/c1.jpg", "cats", "cats/c1.jpg")
        hits = idx.search(ids["cats/c1.jpg"], k=3)
        assert len(hits) == 3 and ids["cats/c1.jpg"] not in {h.id for h in hits}
        assert [h.key for h in idx.search(ids["cats/c1.jpg"], k=9, filter={"label": "dogs"})] == [
            h.key for h in idx.search(ids["cats/c1.jpg"], k=9, filter="label = 'dogs'")
        ]
        vec = faiss.read_index(str(out / idx.manifest.vectors_file)).reconstruct(ids["dogs/d1.jpg"])
        assert np.allclose(idx.vector(ids["dogs/d1.jpg"]), vec)
    # nothing on disk was changed by reading it
    assert json.loads((out / "manifest.json").read_text())["format_version"] == 1


def test_the_next_run_rewrites_it_as_format_2_keeping_ids(v1_index):
    root, out, ids = v1_index
    write_image(root / "birds" / "b9.jpg", seed=99)
    r = build_index([root], out)
    assert (r.added, r.unchanged) == (1, len(LAYOUT))
    m = read_manifest(out)
    assert m.format_version == 2 and m.items == len(LAYOUT) + 1 and m.attributes == {"label": "str"}
    assert verify_index(out)[0] == []
    with simsearch.open_index(out) as idx:
        assert all(idx.id_for_key(rel) == i for rel, i in ids.items())
        assert idx.item(idx.id_for_key("birds/b9.jpg")).label == "birds"


def test_a_newer_format_is_refused_with_what_to_do(v1_index):
    _, out, _ = v1_index
    d = json.loads((out / "manifest.json").read_text())
    d["format_version"] = 3
    (out / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(simsearch.IndexFormatError, match="upgrade simsearch or rebuild"):
        simsearch.open_index(out)
