"""Export (Parquet, npy) and the hand-off into a real embedded vector database (LanceDB)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from fakevectors import VectorEmbedder, write_files

import simsearch
from simsearch import autocandidates
from simsearch.cli import main
from simsearch.export import export_index, read_parquet_manifest
from simsearch.index import build_index

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def flat_index(tmp_path_factory, tiny_backbone):
    base = tmp_path_factory.mktemp("export")
    write_files(base / "photos", 600)
    build_index([base / "photos"], base / "idx", embedder=VectorEmbedder(tiny_backbone))
    idx = simsearch.open_index(base / "idx")
    yield idx
    idx.close()


def test_parquet_export_has_every_item_and_its_exact_vector(flat_index, tmp_path):
    r = export_index(flat_index, tmp_path / "items.parquet", batch_size=128)  # several batches
    assert r["items"] == 600 and r["format"] == "parquet" and r["exact_vectors"]
    t = pq.read_table(tmp_path / "items.parquet")
    assert t.column_names == ["id", "path", "root", "label", "size", "mtime_ns", "key", "attributes", "vector"]
    assert t.schema.field("vector").type == pa.list_(pa.float32(), flat_index.manifest.dim)
    ids, vectors = flat_index.vectors()
    assert t["id"].to_pylist() == ids.tolist()
    got = np.stack(t["vector"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(got, vectors)
    first = flat_index.item(int(ids[0]))
    row = t.slice(0, 1).to_pylist()[0]
    assert (row["path"], row["label"], row["root"], row["size"]) == (first.path, first.label, first.root, first.size)
    assert read_parquet_manifest(tmp_path / "items.parquet")["count"] == 600


def test_npy_export(flat_index, tmp_path):
    r = export_index(flat_index, tmp_path / "out", "npy", batch_size=100)
    assert r["items"] == 600
    vectors = np.load(tmp_path / "out" / "vectors.npy", mmap_mode="r")
    ids = np.load(tmp_path / "out" / "ids.npy")
    np.testing.assert_array_equal(ids, flat_index.ids())
    np.testing.assert_array_equal(np.asarray(vectors[:5]), flat_index.vectors(ids[:5])[1])
    with open(tmp_path / "out" / "items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 600 and rows[3]["id"] == str(ids[3]) and rows[3]["label"]
    assert (tmp_path / "out" / "manifest.json").exists()


def test_export_refuses_to_overwrite_and_cli(flat_index, tmp_path):
    out = tmp_path / "items.parquet"
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(flat_index.path), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "600 items" in res.output
    res = runner.invoke(main, ["export", str(flat_index.path), "--out", str(out), "-q"])
    assert res.exit_code == 1 and "already exists" in res.output
    res = runner.invoke(main, ["export", str(flat_index.path), "--out", str(out), "--overwrite", "-q", "--json"])
    assert res.exit_code == 0 and '"items": 600' in res.output


def test_export_of_a_compressed_ivf_index(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setattr(autocandidates, "FLAT_BELOW", 1000)
    write_files(tmp_path / "photos", 2000)
    build_index([tmp_path / "photos"], tmp_path / "idx", embedder=VectorEmbedder(tiny_backbone), target_recall=0.9)
    with simsearch.open_index(tmp_path / "idx") as idx:
        assert "IVF" in idx.manifest.index_factory
        r = export_index(idx, tmp_path / "ivf.parquet")
        assert r["items"] == 2000 and r["exact_vectors"]  # RFlat keeps the exact vectors
        t = pq.read_table(tmp_path / "ivf.parquet", columns=["id", "vector"])
        _ids, vectors = idx.vectors()
        np.testing.assert_allclose(np.stack(t["vector"].to_numpy(zero_copy_only=False)), vectors, atol=1e-6)


def test_lancedb_handoff_gives_the_same_top10_as_exact_search(flat_index, tmp_path):
    """The Parquet export loaded into an embedded LanceDB table, searched for real (flat scan, dot product)."""
    lancedb = pytest.importorskip("lancedb")
    export_index(flat_index, tmp_path / "items.parquet")
    db = lancedb.connect(str(tmp_path / "lancedb"))
    table = db.create_table("images", data=pq.read_table(tmp_path / "items.parquet"))
    assert table.count_rows() == 600
    ids, vectors = flat_index.vectors()
    rng = np.random.default_rng(0)
    for row in rng.choice(len(ids), size=25, replace=False):
        q = vectors[row]
        expected = [h.id for h in flat_index.search_vectors(q[None, :], k=10, augment="none")[0]]
        query = table.search(q, vector_column_name="vector")
        query = query.distance_type("dot") if hasattr(query, "distance_type") else query.metric("dot")
        got = query.limit(10).select(["id", "path"]).to_arrow()
        assert got["id"].to_pylist() == expected
