"""Augmentation as part of an index: built at the end of a run, updated incrementally, searched by default,
turned off per query (then exactly the raw results), recorded in the manifest, evaluated side by side."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fakevectors import VectorEmbedder, write_files

import simsearch
from simsearch import SimsearchError
from simsearch.augment import augment, knn_graph
from simsearch.config.augment import AugmentSpec
from simsearch.evaluate import evaluate_index
from simsearch.index import build_index

SPEC = "dba:k=5"


def _build(root, out, tiny_backbone, augment=SPEC, **kw):
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone), augment=augment, **kw)
    return simsearch.open_index(out)


def _by_path(idx, augmented: bool) -> dict[str, np.ndarray]:
    snap = idx.snapshot
    source = snap.augmented if augmented else snap.faiss
    out = {}
    for it in idx.items():
        pid = it.photos[0].id
        out[it.path] = np.asarray(source.reconstruct(int(pid)), np.float32)
    return out


def test_new_index_is_augmented_and_none_gives_exactly_the_raw_results(tmp_path, tiny_backbone):
    root = tmp_path / "photos"
    write_files(root, 120)
    with _build(root, tmp_path / "aug", tiny_backbone, augment=None) as aug_idx:  # the default: augmented
        m = json.loads((tmp_path / "aug" / "manifest.json").read_text())
        rec = m["extra"]["augment"]
        assert rec["generation"] == m["generation"] and rec["spec"]["method"] == "dba" and rec["spec"]["k"] == "auto"
        assert 1 <= rec["k"] <= 20 and rec["mode"] == "full" and rec["graph"] == "exact"
        assert (tmp_path / "aug" / f"augmented-{m['generation']:06d}.faiss").exists()
        assert aug_idx.snapshot.augmented.ntotal == len(aug_idx)
        with _build(root, tmp_path / "raw", tiny_backbone, augment="none") as raw_idx:
            assert raw_idx.snapshot.augmented is None
            assert "augment" not in raw_idx.manifest.extra
            ids = {it.path: it.id for it in raw_idx.items()}
            changed = 0
            for it in list(aug_idx.items())[::9]:
                off = aug_idx.search(it.id, k=10, augment="none")
                raw = raw_idx.search(ids[it.path], k=10)
                assert [h.path for h in off] == [h.path for h in raw]
                assert [h.score for h in off] == [h.score for h in raw]
                on = aug_idx.search(it.id, k=10)
                changed += [h.path for h in on] != [h.path for h in off]
                v = aug_idx.vector(it.id)
                assert [h.path for h in aug_idx.search(v, k=10, augment=False)] == [
                    h.path for h in raw_idx.search(v, k=10)
                ]
            assert changed  # augmentation reorders some lists


def test_guard_keeps_the_raw_top_results_and_scores_stay_raw(tmp_path, tiny_backbone):
    root = tmp_path / "photos"
    write_files(root, 150)
    with _build(root, tmp_path / "idx", tiny_backbone) as idx:
        spec = AugmentSpec.parse(SPEC)
        for it in list(idx.items())[::10]:
            raw = idx.search(it.id, k=10, augment="none")
            on = idx.search(it.id, k=10)
            head = {h.id for h in on[: spec.guard + 1]}
            assert {h.id for h in raw[: spec.guard]} <= head  # the raw top 5 within the first 6
            q = idx.vector(it.id)
            for h in on:  # every score is the raw cosine of the two photos
                assert h.score == pytest.approx(float(q @ idx.vector(h.id)), abs=1e-5)
        # a new vector (not an item): the raw top 5 come first, in their order
        v = idx.vector(int(idx.ids()[3])) + 0.05
        raw = idx.search_vectors(v[None, :], k=8, augment="none")[0]
        on = idx.search_vectors(v[None, :], k=8)[0]
        assert [h.id for h in on[: spec.guard]] == [h.id for h in raw[: spec.guard]]


def test_incremental_runs_equal_a_from_scratch_build(tmp_path, tiny_backbone):
    root = tmp_path / "photos"
    files = write_files(root, 200)
    with _build(root, tmp_path / "idx", tiny_backbone):
        pass
    write_files(root, 30, start=200)  # added
    for f in files[:10]:  # removed
        f.unlink()
    with _build(root, tmp_path / "idx", tiny_backbone, prune=True) as idx:
        rec = idx.manifest.augment_record
        assert rec["mode"] == "incremental" and 0 < rec["recomputed"] < len(idx)
        got = _by_path(idx, augmented=True)
    fresh = tmp_path / "photos2"
    shutil.copytree(root, fresh)
    with _build(fresh, tmp_path / "scratch", tiny_backbone) as scratch:
        assert scratch.manifest.augment_record["mode"] == "full"
        want = _by_path(scratch, augmented=True)
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_allclose(got[path], want[path], atol=1e-6)


def test_unchanged_run_keeps_the_generation_and_a_new_spec_recomputes(tmp_path, tiny_backbone):
    root = tmp_path / "photos"
    write_files(root, 60)
    with _build(root, tmp_path / "idx", tiny_backbone) as idx:
        gen = idx.manifest.generation
    with _build(root, tmp_path / "idx", tiny_backbone, augment=None) as idx:  # nothing changed: same generation
        assert idx.manifest.generation == gen
    with _build(root, tmp_path / "idx", tiny_backbone, augment="dba:k=3,rounds=1") as idx:
        rec = idx.manifest.augment_record
        assert idx.manifest.generation == gen + 1 and rec["k"] == 3 and rec["mode"] == "full"
        ids, vecs = idx.vectors()
        expected = augment(vecs, ids, AugmentSpec(k=3, rounds=1), graph=knn_graph(vecs, ids, 3))
        got = np.asarray(idx.snapshot.augmented.reconstruct_batch(ids), np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-6)
    with _build(root, tmp_path / "idx", tiny_backbone, augment="none") as idx:
        assert idx.snapshot.augmented is None and idx.manifest.augment_record is None
        with pytest.raises(SimsearchError, match="no augmented vectors"):
            idx.search(int(idx.ids()[0]), k=3, augment="on")


def test_live_writes_and_compaction_keep_augmentation(tmp_path, tiny_backbone):
    from simsearch.compact import compact_index

    root = tmp_path / "photos"
    write_files(root, 80)
    with _build(root, tmp_path / "idx", tiny_backbone) as idx:
        first = idx.item(int(idx.ids()[0]))
        v = idx.vector(first.id)
        idx.put("live-1", [first.photos[0].abspath], vectors=[v])
        hits = idx.search(v, k=3)  # the live copy is found by the augmented search too
        assert "live-1" in [h.key for h in hits[:2]]
    r = compact_index(tmp_path / "idx")
    assert r["folded"] == 1
    with simsearch.open_index(tmp_path / "idx") as idx:
        assert idx.manifest.augmented and idx.manifest.augment_record["mode"] == "incremental"
        assert idx.snapshot.augmented.ntotal == len(idx) == 81
        assert "live-1" in [h.key for h in idx.search(v, k=3)[:2]]


def test_evaluate_reports_raw_and_augmented_and_new_queries(tmp_path, tiny_backbone):
    root = tmp_path / "photos"
    write_files(root, 200)
    with _build(root, tmp_path / "idx", tiny_backbone) as idx:
        loo = evaluate_index(idx)
        assert loo["protocol"] == "leave-one-out" and set(loo["augmented"]) >= {"recall@1", "map@r"}
        assert loo["augment"]["k"] == 5
        new = evaluate_index(idx, queries=0.3)
        assert new["protocol"].startswith("new queries (0.3): 60 queries, 140 indexed")
        assert new["augmented"]["map@r"] > 0
        off = evaluate_index(idx, augment="none")
        assert "augmented" not in off and off["map@r"] == loo["map@r"]
        with pytest.raises(SimsearchError, match="fraction"):
            evaluate_index(idx, queries=1.5)


def test_cli_index_query_and_evaluate(tmp_path, tiny_backbone):
    from click.testing import CliRunner

    from simsearch.cli import main

    root = tmp_path / "photos"
    write_files(root, 60)
    with _build(root, tmp_path / "idx", tiny_backbone) as idx:
        item = int(idx.ids()[0])
        raw_ids = [h.id for h in idx.search(item, k=5, augment="none")]
        aug_ids = [h.id for h in idx.search(item, k=5)]
    runner = CliRunner()
    out = runner.invoke(main, ["query", str(tmp_path / "idx"), "--id", str(item), "-k", "5", "--augment", "none",
                               "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert [r["id"] for r in json.loads(out.output)["results"]] == raw_ids
    out = runner.invoke(main, ["query", str(tmp_path / "idx"), "--id", str(item), "-k", "5", "--json"])
    assert [r["id"] for r in json.loads(out.output)["results"]] == aug_ids
    out = runner.invoke(main, ["evaluate", str(tmp_path / "idx"), "--queries", "0.25"])
    assert out.exit_code == 0, out.output
    assert "augmented" in out.output and "new queries" in out.output
