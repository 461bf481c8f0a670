"""`--index auto`: choice from size/dim/budget, training and tuning, incremental updates, removal, rebuild."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from fakevectors import VectorEmbedder, vector_for, write_files

import simsearch
import simsearch.store
from simsearch import autocandidates, autoindex, rebuild
from simsearch.backbones import l2_normalize
from simsearch.cli import main
from simsearch.config.autoindex import AutoIndexRecord, AutoIndexSpec, parse_size
from simsearch.errors import IndexFormatError, SimsearchError
from simsearch.index import build_index, verify_index


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = c[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    return l2_normalize(x)


# ------------------------------------------------------------------------------ choice


def test_choose_exact_flat_for_small_collections():
    plan = autoindex.plan(50_000, 1280)
    assert plan.factory == "Flat" and plan.family == "flat"
    assert autoindex.plan(99_999, 512, AutoIndexSpec(memory_budget=10**9)).factory == "Flat"


def test_choose_ivf_with_exact_rerank_when_vectors_fit():
    plan = autoindex.plan(1_000_000, 1280, AutoIndexSpec(memory_budget=12 * 10**9))
    assert plan.factory.startswith("IVF1024,PQ") and plan.factory.endswith(",RFlat")
    assert plan.bytes_per_vector > 4 * 1280
    assert plan.train_size and plan.train_size < 1_000_000


def test_choose_memory_lean_fits_the_budget():
    n = 1_000_000
    plan = autoindex.plan(n, 1280, AutoIndexSpec(memory_budget=128 * n))
    assert plan.factory.startswith("IVF1024,PQ")
    assert plan.bytes_per_vector <= 128
    assert "RFlat" not in plan.factory


def test_choose_budget_too_small_says_so():
    with pytest.raises(SimsearchError, match="memory-budget"):
        autoindex.plan(1_000_000, 1280, AutoIndexSpec(memory_budget=10 * 10**6))


@pytest.mark.parametrize(
    ("text", "value"), [("128MB", 128 * 10**6), ("2GiB", 2 * 2**30), ("1.5G", 1_500_000_000), (4096, 4096)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_parse_size_rejects_nonsense():
    with pytest.raises(SimsearchError):
        parse_size("lots")


def test_record_reads_old_dicts_and_refuses_tampered_ones():
    old = {  # as written by earlier versions (all 16 keys)
        "requested": "auto", "memory_budget": None, "target_recall": 0.95, "flat_below": 1000,
        "choice": "IDMap2,IVF64,PQ8,RFlat", "reason": "why", "built_for": 3000, "trained_on": 3000,
        "estimated_bytes_per_vector": 160.0, "params": {"nprobe": 8, "k_factor": 4}, "recall_at_10": 0.97,
        "recall_queries": 500, "ms_per_query_batched": 0.02, "train_seconds": 1.0, "add_seconds": 0.1,
        "tune_seconds": 0.5,
    }  # fmt: skip
    rec = AutoIndexRecord.from_dict(old)
    assert rec.to_dict() == old and rec.spec == AutoIndexSpec(None, 0.95, 1000)
    fresh = {"requested": "auto", "memory_budget": 2 * 10**9, "target_recall": 0.9}
    assert AutoIndexRecord.from_dict(fresh).to_dict() == fresh
    assert AutoIndexRecord.new(AutoIndexSpec.from_options("2GB", 0.9)).to_dict() == fresh
    changed = AutoIndexRecord.from_dict(fresh).with_settings(memory_budget="1GB")
    assert (changed.memory_budget, changed.target_recall) == (10**9, 0.9)
    for bad in ({**old, "params": {"nprobe": "8; rm -rf"}}, {**old, "built_for": -1}, {**old, "surprise": 1},
                {**old, "target_recall": 7}, {**old, "params": {"bogus": 3}}, "auto", {**old, "choice": 5}):  # fmt: skip
        with pytest.raises(IndexFormatError) as e:
            AutoIndexRecord.from_dict(bad, "m.json")
        assert "\n" not in str(e.value) and str(e.value).startswith("m.json")


# ------------------------------------------------------------------------------ build and tune


def test_build_trains_on_a_sample_and_tunes_to_the_target():
    data = clustered(20_100, 32)
    x, q = data[:20_000], data[20_000:]  # fresh queries from the same distribution
    ids = np.arange(20_000, dtype=np.int64) * 7 + 3
    spec = AutoIndexSpec(flat_below=1000, target_recall=0.9, tuning_queries=200)
    index, rec = autoindex.build(x, ids, "auto", spec)
    assert rec.choice.startswith("IDMap2,IVF") and index.ntotal == 20_000
    assert rec.trained_on <= 20_000 and rec.recall_at_10 >= 0.9
    assert autoindex.search_params(index)["nprobe"] == rec.params["nprobe"]
    assert AutoIndexRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    # recall on fresh queries, against exact search
    _, truth = autoindex.exact_neighbors(q, x, 10)
    _, found = index.search(q, 10)
    assert autoindex.recall_at_k(found, ids[truth]) >= 0.85
    # the tuned parameters are stored in the FAISS file itself
    restored = faiss.deserialize_index(faiss.serialize_index(index))
    assert autoindex.search_params(restored) == autoindex.search_params(index)


def test_tuning_reports_an_unreachable_target():
    x = clustered(12_000, 32)
    spec = AutoIndexSpec(target_recall=0.999, tuning_queries=100)
    _index, rec = autoindex.build(x, np.arange(12_000), "IVF64,PQ4x4", spec)
    assert rec.recall_at_10 < 0.999  # 4-byte codes cannot: the best found is recorded
    assert rec.params["nprobe"] >= 1 and rec.requested == "IVF64,PQ4x4"


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ8x4,RFlat", "PCAR32,IVF32,SQ8"])
def test_remove_ids_keeps_the_id_mapping(factory):
    x = clustered(4000, 32)
    ids = np.arange(4000, dtype=np.int64) * 3 + 11
    index, _ = autoindex.build(x, ids, factory, AutoIndexSpec(tuning_queries=50))
    autoindex.set_search_params(index, {"nprobe": 32, "k_factor": 8})
    drop = ids[::3]
    assert autoindex.remove_ids(index, drop)
    left = np.setdiff1d(ids, drop)
    assert index.ntotal == len(left)
    id_map = faiss.vector_to_array(faiss.downcast_index(index).id_map)
    assert sorted(id_map.tolist()) == left.tolist()
    rows = (left - 11) // 3
    _, found = index.search(x[rows[:200]], 1)
    assert (found[:, 0] == left[:200]).mean() > 0.95  # each remaining vector finds itself, under its own id
    _, found = index.search(x[(drop[:50] - 11) // 3], 5)
    assert not np.isin(found, drop).any()
    rec = index.reconstruct(int(left[10]))
    assert float(rec @ x[rows[10]]) > 0.9
    # adding after a removal continues the inner numbering
    fresh = clustered(5, 32, seed=9)
    index.add_with_ids(fresh, np.arange(5, dtype=np.int64) + 10**6)
    _, found = index.search(fresh, 1)
    assert found[:, 0].tolist() == list(range(10**6, 10**6 + 5))


def test_remove_ids_leaves_other_indexes_to_faiss():
    index, _ = simsearch.store.new_faiss_index(8, "Flat")
    assert autoindex.remove_ids(index, np.array([1])) is False


# ------------------------------------------------------------------------------ with build_index


def exhaustive(idx) -> None:
    """Search every list and re-rank many candidates: results then depend on the stored data, not on tuning."""
    ivf = faiss.extract_index_ivf(idx.faiss)
    autoindex.set_search_params(idx.faiss, {"nprobe": ivf.nlist, "k_factor": 64})


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(autocandidates, "FLAT_BELOW", 1000)


def test_small_collection_stays_exact_flat(tmp_path, tiny_backbone):
    write_files(tmp_path / "photos", 300)
    build_index([tmp_path / "photos"], tmp_path / "idx", embedder=VectorEmbedder(tiny_backbone))
    with simsearch.open_index(tmp_path / "idx") as idx:
        m = idx.manifest
        assert m.index_factory == "IDMap2,Flat"
        rec = m.extra["index_auto"]
        assert rec["requested"] == "auto" and rec["choice"] == "IDMap2,Flat" and rec["recall_at_10"] == 1.0
        assert set(rec) == {"requested", "memory_budget", "target_recall", "choice", "reason", "built_for",
                            "recall_at_10", "params"}  # fmt: skip


def test_explicit_factory_is_not_automatic(tmp_path, tiny_backbone):
    write_files(tmp_path / "photos", 50)
    build_index([tmp_path / "photos"], tmp_path / "idx", embedder=VectorEmbedder(tiny_backbone), index_factory="Flat")
    with simsearch.open_index(tmp_path / "idx") as idx:
        assert "index_auto" not in idx.manifest.extra


def test_auto_switches_to_a_tuned_ivf_and_keeps_incremental_updates(tmp_path, tiny_backbone, small_threshold):
    root = tmp_path / "photos"
    files = write_files(root, 3000)
    out = tmp_path / "idx"
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone), commit_every=1000, target_recall=0.9)
    with simsearch.open_index(out) as idx:
        m = idx.manifest
        assert ",IVF" in m.index_factory and m.count == 3000  # an IVF kind (maybe behind a PCA rotation)
        rec = m.extra["index_auto"]
        assert rec["recall_at_10"] >= 0.9 and rec["params"]["nprobe"] >= 1 and rec["built_for"] == 3000
        assert autoindex.search_params(idx.faiss)["nprobe"] == rec["params"]["nprobe"]
        some = idx.id_for_path(files[5])
        hits = idx.search(some, k=5)  # query by id needs reconstruct (the direct map)
        assert len(hits) == 5 and some not in [h.id for h in hits]
    assert verify_index(out)[0] == []

    # more files: added to the trained index (no retraining)
    write_files(root, 200, start=3000)
    r = build_index([root], out, embedder=VectorEmbedder(tiny_backbone))
    assert r.added == 200
    with simsearch.open_index(out) as idx:
        assert idx.manifest.index_factory == m.index_factory and idx.manifest.count == 3200
        assert idx.manifest.extra["index_auto"]["built_for"] == 3000
        exhaustive(idx)
        new_id = idx.id_for_path(root / "c1" / "img003001.jpg")
        v = vector_for(root / "c1" / "img003001.jpg", tiny_backbone.dim)
        assert idx.search(v, k=1, exclude_query=False)[0].id == new_id
    assert verify_index(out)[0] == []

    # changed files (re-embedded: old ids removed) and deleted files (--prune): removal keeps ids consistent
    import os

    for f in files[:40]:
        f.write_bytes(f.read_bytes() + b"\0")
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 5_000_000_000))
    for f in files[100:130]:
        f.unlink()
    r = build_index([root], out, embedder=VectorEmbedder(tiny_backbone, salt="v2"), prune=True)
    assert r.updated == 40 and r.removed >= 30
    assert verify_index(out)[0] == []
    with simsearch.open_index(out) as idx:
        assert idx.manifest.count == 3170
        exhaustive(idx)
        for f in (files[0], files[200], root / "c1" / "img003001.jpg"):
            i = idx.id_for_path(f)
            salt = "v2" if f == files[0] else ""
            hit = idx.search(vector_for(f, tiny_backbone.dim, salt=salt), k=1, exclude_query=False)[0]
            assert hit.id == i and hit.score > 0.99
        assert idx.id_for_path(files[100]) is None


def test_rebuild_retrains_and_info_shows_the_choice(tmp_path, tiny_backbone, small_threshold):
    root = tmp_path / "photos"
    write_files(root, 1200)
    out = tmp_path / "idx"
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone), target_recall=0.9)
    runner = CliRunner()
    res = runner.invoke(main, ["info", str(out)])
    assert res.exit_code == 0, res.output
    assert "index choice" in res.output and "recall@10" in res.output and "rebuild advised: no" in res.output
    # grow far past what it was trained for: info advises a rebuild
    write_files(root, 3700, start=1200)
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone))
    res = runner.invoke(main, ["info", str(out), "--json"])
    assert json.loads(res.output)["rebuild_advised"]
    res = runner.invoke(main, ["rebuild", str(out), "--target-recall", "0.9"])
    assert res.exit_code == 0, res.output
    with simsearch.open_index(out) as idx:
        rec = idx.manifest.extra["index_auto"]
        assert rec["built_for"] == 4900 and rec["requested"] == "auto" and rec["recall_at_10"] >= 0.9
        assert idx.manifest.count == 4900
    assert verify_index(out)[0] == []
    res = runner.invoke(main, ["info", str(out), "--json"])
    assert json.loads(res.output)["rebuild_advised"] is None


def test_rebuild_with_an_explicit_factory(tmp_path, tiny_backbone):
    root = tmp_path / "photos"
    write_files(root, 2000)
    out = tmp_path / "idx"
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone))
    r = rebuild.rebuild_index(out, "IVF16,Flat", target_recall=0.9)
    assert r["index_factory"] == "IDMap2,IVF16,Flat" and r["record"]["recall_at_10"] >= 0.9
    with simsearch.open_index(out) as idx:
        assert idx.manifest.index_factory == "IDMap2,IVF16,Flat"
        assert len(idx) == 2000
    assert verify_index(out)[0] == []
    # an explicit choice is kept on later updates (not re-decided)
    write_files(root, 10, start=2000)
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone))
    with simsearch.open_index(out) as idx:
        assert idx.manifest.index_factory == "IDMap2,IVF16,Flat" and len(idx) == 2010


def test_memory_mapped_open_of_an_ivf_index(tmp_path, tiny_backbone, small_threshold):
    root = tmp_path / "photos"
    files = write_files(root, 2000)
    out = tmp_path / "idx"
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone), target_recall=0.9)
    with simsearch.open_index(out, mmap=True) as idx:
        i = idx.id_for_path(files[3])
        assert idx.search(vector_for(files[3], tiny_backbone.dim), k=1, exclude_query=False)[0].id == i
