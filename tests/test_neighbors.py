"""The precomputed item-to-item neighbour table."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from fakevectors import VectorEmbedder, write_files

import simsearch
from simsearch.cli import main
from simsearch.index import build_index
from simsearch.neighbors import compute_neighbors, select_neighbors

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def flat_index(tmp_path_factory, tiny_backbone):
    base = tmp_path_factory.mktemp("neighbors")
    root = base / "photos"
    files = write_files(root, 400)
    shutil.copy(files[7], root / "c7" / "copy-of-img000007.jpg")  # the fake embedder gives it the same vector
    build_index([root], base / "idx", embedder=VectorEmbedder(tiny_backbone), augment="none")
    idx = simsearch.open_index(base / "idx")
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def augmented_index(tmp_path_factory, tiny_backbone):
    base = tmp_path_factory.mktemp("neighbors-augmented")
    write_files(base / "photos", 300)
    build_index([base / "photos"], base / "idx", embedder=VectorEmbedder(tiny_backbone), augment="dba:k=5")
    idx = simsearch.open_index(base / "idx")
    yield idx
    idx.close()


def table_by_item(path) -> dict[int, list[tuple]]:
    t = pq.read_table(path).to_pylist()
    out: dict[int, list[tuple]] = {}
    for r in t:
        out.setdefault(r["item_id"], []).append((r["rank"], r["neighbor_id"], r["score"], r["neighbor_path"]))
    return out


def test_every_row_equals_exact_search(flat_index, tmp_path):
    r = compute_neighbors(flat_index, tmp_path / "nn.parquet", k=10, batch_size=64)  # several batches
    assert r["items"] == len(flat_index) and r["rows"] == 10 * len(flat_index)
    t = pq.read_table(tmp_path / "nn.parquet")
    assert t.column_names == [
        "item_id",
        "item_path",
        "neighbor_id",
        "neighbor_path",
        "rank",
        "score",
        "item_key",
        "neighbor_key",
    ]
    rows = table_by_item(tmp_path / "nn.parquet")
    for item_id in flat_index.ids()[::7]:
        expected = flat_index.search(int(item_id), k=10)  # "more like this": the item itself is excluded
        got = sorted(rows[int(item_id)])
        assert [g[0] for g in got] == list(range(1, 11))
        assert [g[1] for g in got] == [h.id for h in expected]
        assert [g[3] for g in got] == [h.path for h in expected]
        np.testing.assert_allclose([g[2] for g in got], [h.score for h in expected], atol=1e-5)
    first = t.slice(0, 1).to_pylist()[0]
    assert first["item_path"] == flat_index.item(first["item_id"]).path


def test_augmented_rows_equal_the_libraries_more_like_this(augmented_index, tmp_path):
    idx = augmented_index
    assert idx.snapshot.augmented is not None
    r = compute_neighbors(idx, tmp_path / "aug.parquet", k=8, batch_size=50)
    assert r["augmented"] and r["rows"] == 8 * len(idx)
    rows = table_by_item(tmp_path / "aug.parquet")
    differs = 0
    for item_id in idx.ids()[::5]:
        expected = idx.search(int(item_id), k=8)  # augmented: the index has augmented vectors
        got = sorted(rows[int(item_id)])
        assert [g[1] for g in got] == [h.id for h in expected]
        np.testing.assert_allclose([g[2] for g in got], [h.score for h in expected], atol=1e-5)
        differs += [h.id for h in expected] != [h.id for h in idx.search(int(item_id), k=8, augment="none")]
    assert differs  # augmentation changed some lists
    raw = compute_neighbors(idx, tmp_path / "raw.parquet", k=8, augment="none")
    assert not raw["augmented"]
    first = int(idx.ids()[0])
    raw_rows = sorted(table_by_item(tmp_path / "raw.parquet")[first])
    assert [g[1] for g in raw_rows] == [h.id for h in idx.search(first, k=8, augment="none")]


def test_min_score_and_duplicates(flat_index, tmp_path):
    a = flat_index.id_for_path("c7/img000007.jpg")
    b = flat_index.id_for_path("c7/copy-of-img000007.jpg")
    compute_neighbors(flat_index, tmp_path / "all.parquet", k=5)
    assert table_by_item(tmp_path / "all.parquet")[a][0][1] != a  # self excluded ...
    compute_neighbors(flat_index, tmp_path / "nodup.parquet", k=5, exclude_duplicates=0.999, min_score=0.5)
    rows = table_by_item(tmp_path / "nodup.parquet")
    assert all(n != b for _, n, _, _ in rows[a])  # ... and the exact copy too, with --exclude-duplicates
    assert len(rows[a]) == 5
    assert all(0.5 <= s < 0.999 for lst in rows.values() for _, _, s, _ in lst)
    compute_neighbors(flat_index, tmp_path / "high.parquet", k=5, min_score=0.99)
    rows = table_by_item(tmp_path / "high.parquet")
    assert [n for _, n, _, _ in rows[a]] == [b]  # lists are shorter when few neighbours pass --min-score


def test_select_neighbors_without_self_in_results():
    ids = np.array([[5, 6, 7, 8], [1, 2, 3, -1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [1.0, 0.5, 0.4, 0.0]], dtype=np.float32)
    got, _s, valid = select_neighbors(np.array([1, 1]), ids, scores, 3)
    assert got[0].tolist() == [5, 6, 7] and valid[0].all()
    assert got[1][:2].tolist() == [2, 3] and valid[1].tolist() == [True, True, False]


def test_cli_and_csv(flat_index, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["neighbors", str(flat_index.path), "--out", str(tmp_path / "n.csv"), "-k", "3", "-q"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "n.csv").read_text().splitlines()
    assert lines[0].replace('"', "") == "item_id,item_path,neighbor_id,neighbor_path,rank,score,item_key,neighbor_key"
    assert len(lines) == 1 + 3 * len(flat_index)


@pytest.mark.shared
def test_neighbors_on_caltech_equal_exact_search(tmp_path, tiny_backbone):
    """A slice of the shared Caltech-101 images, embedded with the tiny backbone into a flat index."""
    from conftest import CALTECH, TINY

    images = CALTECH / "images"
    if not images.is_dir():
        pytest.skip("../shared/data/caltech101 is not available")
    root = tmp_path / "caltech"
    for cls in sorted(p for p in images.iterdir() if p.is_dir())[:8]:
        for f in sorted(cls.iterdir())[:6]:
            (root / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / cls.name / f.name)
    build_index([root], tmp_path / "idx", backbone=TINY, index_factory="Flat")
    with simsearch.open_index(tmp_path / "idx") as idx:
        assert len(idx) >= 40
        compute_neighbors(idx, tmp_path / "nn.parquet", k=10)
        rows = table_by_item(tmp_path / "nn.parquet")
        for item_id in idx.ids():
            assert [n for _, n, _, _ in sorted(rows[int(item_id)])] == [h.id for h in idx.search(int(item_id), k=10)]
