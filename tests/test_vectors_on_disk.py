"""`--vectors-on-disk`: the exact vectors that re-rank candidates stay in the index file, memory-mapped; the memory
budget counts the compressed codes only (the choice), readers map the file (never writers), and the setting is
recorded, shown, changed and kept by rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from fakevectors import VectorEmbedder, vector_for, write_files

import simsearch
from simsearch import autocandidates
from simsearch.cli import main
from simsearch.config.autoindex import AutoIndexRecord, AutoIndexSpec
from simsearch.errors import IndexFormatError
from simsearch.index import build_index, verify_index

MAPS = Path("/proc/self/maps")
needs_maps = pytest.mark.skipif(not MAPS.exists(), reason="needs /proc/self/maps (Linux)")


def mapped(file: Path) -> bool:
    """Whether this process has ``file`` memory-mapped."""
    return str(file.resolve()) in MAPS.read_text()


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(autocandidates, "FLAT_BELOW", 1000)


def test_the_budget_counts_codes_only_when_the_vectors_stay_on_disk():
    n, dim = 100_000, 1280
    lean = AutoIndexSpec(memory_budget=128 * n)
    assert "RFlat" not in autocandidates.fixed_plan(n, dim, lean).factory  # codes only: approximate scores
    on_disk = AutoIndexSpec(memory_budget=128 * n, vectors_on_disk=True)
    plan = autocandidates.fixed_plan(n, dim, on_disk)
    assert plan.factory.endswith(",RFlat") and plan.bytes_per_vector <= 128 and "memory-mapped" in plan.reason
    both = AutoIndexSpec(memory_budget=128 * n, vectors_on_disk=True, families=("ivf-pqfs-refine", "hnsw"))
    families = {p.family for p in autocandidates.candidates(n, dim, both)}
    assert "ivf-pqfs-refine" in families and "hnsw" not in families  # a graph walk would read all over the file
    for p in autocandidates.candidates(n, dim, on_disk):
        assert p.factory.endswith(",RFlat") and p.bytes_per_vector <= 128, p
    # the floats in memory still need the floats' bytes
    assert autocandidates.fixed_plan(n, dim, AutoIndexSpec(memory_budget=6000 * n)).bytes_per_vector > 4 * dim


def test_record_keeps_the_flag_only_when_true_and_refuses_other_values():
    rec = AutoIndexRecord.new(AutoIndexSpec(vectors_on_disk=True))
    d = rec.to_dict()
    assert d["vectors_on_disk"] is True and AutoIndexRecord.from_dict(d).spec.vectors_on_disk
    assert "vectors_on_disk" not in AutoIndexRecord.new(AutoIndexSpec()).to_dict()  # what older versions read
    assert "vectors_on_disk" not in rec.with_settings(vectors_on_disk=False).to_dict()
    for bad in (1, "yes", None):
        with pytest.raises(IndexFormatError, match="vectors_on_disk"):
            AutoIndexRecord.from_dict({**d, "vectors_on_disk": bad})


@needs_maps
def test_readers_map_the_vectors_writers_load_them(tmp_path, tiny_backbone, small_threshold):
    root, out = tmp_path / "photos", tmp_path / "idx"
    files = write_files(root, 3000)
    emb = VectorEmbedder(tiny_backbone)
    build_index([root], out, embedder=emb, commit_every=1000, target_recall=0.9, vectors_on_disk=True)
    with simsearch.open_index(out) as idx:
        m = idx.manifest
        assert m.index_factory.endswith(",RFlat") and m.extra["index_auto"]["vectors_on_disk"] is True
        vec_file = out / m.vectors_file
        assert mapped(vec_file)
        loaded = faiss.read_index(str(vec_file))  # the same file read into memory: the same answers
        q = np.stack([vector_for(f, tiny_backbone.dim) for f in files[:20]])
        assert [np.array_equal(a, b) for a, b in zip(idx.faiss.search(q, 10), loaded.search(q, 10), strict=True)] == [
            True,
            True,
        ]
        i = idx.id_for_path(files[7])
        assert idx.search(vector_for(files[7], tiny_backbone.dim), k=1, exclude_query=False)[0].id == i
        assert np.allclose(idx.faiss.reconstruct(i), loaded.reconstruct(i))
    # an update adds to and removes from the index (a mapped one would abort the process): the writer loads it
    write_files(root, 100, start=3000)
    (files[0]).unlink()
    r = build_index([root], out, embedder=emb, prune=True)
    assert r.added == 100 and r.removed == 1
    assert verify_index(out)[0] == []
    with simsearch.open_index(out) as idx:
        assert len(idx) == 3099 and mapped(out / idx.manifest.vectors_file)
        new = root / "c3" / "img003003.jpg"
        assert idx.search(vector_for(new, tiny_backbone.dim), k=1, exclude_query=False)[0].id == idx.id_for_path(new)
    runner = CliRunner()
    res = runner.invoke(main, ["info", str(out)])
    assert res.exit_code == 0 and "on disk, memory-mapped" in res.output, res.output
    # the setting is kept by a rebuild, and can be turned off
    res = runner.invoke(main, ["rebuild", str(out), "--target-recall", "0.9", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["record"]["vectors_on_disk"] is True
    res = runner.invoke(main, ["rebuild", str(out), "--target-recall", "0.9", "--vectors-in-memory", "--json"])
    assert res.exit_code == 0, res.output
    assert "vectors_on_disk" not in json.loads(res.stdout)["record"]
    with simsearch.open_index(out) as idx:
        assert not mapped(out / idx.manifest.vectors_file) and len(idx) == 3099


@needs_maps
def test_mmap_open_maps_exact_vectors_too(tmp_path, tiny_backbone):
    root, out = tmp_path / "photos", tmp_path / "idx"
    files = write_files(root, 200)
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone))
    with simsearch.open_index(out) as idx:
        assert idx.manifest.index_factory == "IDMap2,Flat" and not mapped(out / idx.manifest.vectors_file)
        want = [h.id for h in idx.search(vector_for(files[3], tiny_backbone.dim), k=5)]
    with simsearch.open_index(out, mmap=True) as idx:
        assert mapped(out / idx.manifest.vectors_file)
        assert [h.id for h in idx.search(vector_for(files[3], tiny_backbone.dim), k=5)] == want
