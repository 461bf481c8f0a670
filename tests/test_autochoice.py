"""The measured `auto` chooser: candidate families (fast-scan PQ, PCA, HNSW), choice by measurement, the fallback
when the target recall is out of reach, removals from an auto-chosen HNSW index, augmentation with the new kinds;
and the realistic vector generator of the scale benchmark (simsearch/synthetic.py)."""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest
from fakevectors import VectorEmbedder, write_files

import simsearch
from simsearch import autocandidates, autoindex, autotune, faissops, synthetic
from simsearch.backbones import l2_normalize
from simsearch.compact import compact_index
from simsearch.config.autoindex import AutoIndexSpec
from simsearch.index import build_index, verify_index


def structured(n: int, dim: int = 64, seed: int = 0, clusters: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors with a decaying spectrum (like embeddings: a few directions carry most variance)."""
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(np.arange(1, dim + 1, dtype=np.float32))
    labels = rng.integers(0, clusters, n)
    c = rng.standard_normal((clusters, dim)).astype(np.float32) * scale
    x = c[labels] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32) * scale
    return l2_normalize(x), labels


# ------------------------------------------------------------------------------ generator


def test_realistic_generator_keeps_the_spectrum_and_sets_the_distance():
    base, labels = structured(1500)
    at = (1, 5, 20)
    real = synthetic.pca_shares(base, at)
    gen = synthetic.PcaNoise.fit(base, factor=0.5)
    x = gen.sample(3000, seed=1)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)
    shares = synthetic.pca_shares(x, at)
    assert all(abs(shares[k] - real[k]) < 0.03 for k in at), (shares, real)
    # the mixture generator's isotropic noise flattens the spectrum: the realistic one is closer to the real set
    mixed = synthetic.pca_shares(synthetic.mixture_vectors(base, labels, 3000, seed=1, noise=0.5), at)
    assert abs(mixed[5] - real[5]) > abs(shares[5] - real[5])
    # the noise has the set's covariance × factor²: a generated vector's cosine to its source is 1/sqrt(1 + f²·Σσ²)
    expected = 1 / np.sqrt(1 + 0.5**2 * float(np.sum(gen.stds.astype(np.float64) ** 2)))
    top1, _ = synthetic.neighbour_similarity(x, base)
    assert expected - 0.03 < top1 < expected + 0.1
    # more noise, lower neighbour similarity; the real rows come first with keep_real
    noisier = gen.with_factor(1.0).sample(3000, seed=1)
    assert synthetic.neighbour_similarity(noisier, base)[0] < top1 - 0.05
    assert np.array_equal(gen.sample(2000, seed=3, keep_real=True)[:1500], base)


def test_neighbour_similarity_leaves_each_query_out():
    base, _ = structured(400)
    top1, top10 = synthetic.neighbour_similarity(base, base, exclude_self=True)
    sims = base @ base.T
    np.fill_diagonal(sims, -np.inf)
    ranked = -np.sort(-sims, axis=1)
    assert top1 == pytest.approx(float(np.median(ranked[:, 0])), abs=1e-5)
    assert top10 == pytest.approx(float(np.median(ranked[:, 9])), abs=1e-5)


# ------------------------------------------------------------------------------ candidates and choice

GENEROUS, LEAN = 12 * 10**9, 128


@pytest.mark.parametrize(
    ("n", "lean", "families"),
    [
        (100_000, False, {"ivf-pq-refine", "ivf-pqfs-refine", "ivf-pqfs-fine-refine", "pca-ivf-pqfs-refine"}),
        (1_000_000, False, {"ivf-pq-refine", "ivf-pqfs-refine", "ivf-pqfs-fine-refine", "pca-ivf-pqfs-refine"}),
        (100_000, True, {"ivf-pq", "ivf-pqfs", "pca-ivf-pqfs"}),
        (1_000_000, True, {"ivf-pq", "ivf-pqfs", "pca-ivf-pqfs"}),
    ],
)
def test_every_candidate_is_a_valid_factory_string_within_the_budget(n, lean, families):
    spec = AutoIndexSpec(memory_budget=LEAN * n if lean else GENEROUS)
    plans = autocandidates.candidates(n, 1280, spec)
    assert {p.family for p in plans} == families
    assert plans[0] == autoindex.plan(n, 1280, spec)  # the fixed rule's choice is always a candidate
    for p in plans:
        for factory in (p.factory, p.for_size(20_000)):
            index = faiss.index_factory(1280, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
            assert index.d == 1280
        if lean:
            assert p.bytes_per_vector <= LEAN and "RFlat" not in p.factory
        else:
            assert p.factory.endswith(",RFlat") or p.family == "hnsw"
    asked = autocandidates.candidates(n, 1280, AutoIndexSpec(memory_budget=spec.memory_budget, families=("hnsw",)))
    assert [p.family for p in asked] == (["hnsw"] if n <= autocandidates.HNSW_MAX and not lean else [plans[0].family])
    only = autocandidates.candidates(n, 1280, AutoIndexSpec(memory_budget=spec.memory_budget, families=("ivf-pqfs",)))
    assert [p.family for p in only] == (["ivf-pqfs"] if lean else [plans[0].family])


def test_pick_keeps_the_cheapest_setting_within_0_002_of_the_best_recall():
    tried = [
        {"nprobe": 32, "recall": 0.901, "ms": 1.0},
        {"nprobe": 64, "recall": 0.9121, "ms": 2.0},
        {"nprobe": 96, "recall": 0.9124, "ms": 3.0},  # the best recall, by less than 0.002: not worth its cost
        {"nprobe": 128, "recall": 0.9123, "ms": 4.0},
    ]
    assert autotune.pick(tried, 0.95)["nprobe"] == 64
    assert autotune.pick(tried, 0.9)["nprobe"] == 32  # reachable: the cheapest that reaches it


def test_tuning_an_unreachable_target_keeps_the_cheapest_near_best_setting():
    x, _ = structured(4000, seed=2)
    ids = np.arange(4000, dtype=np.int64) * 3
    index, _ = autoindex.build(x, ids, "IVF64,PQ8", AutoIndexSpec(target_recall=0.999, tuning_queries=100))
    tuning = autoindex.tune(index, x, ids, AutoIndexSpec(target_recall=0.999, tuning_queries=100))
    assert tuning is not None and not tuning.reached
    best = max(t["recall"] for t in tuning.tried)
    near = [t for t in tuning.tried if t["recall"] >= best - 0.002]
    assert tuning.recall_at_10 >= best - 0.002
    assert tuning.ms_per_query == min(t["ms"] for t in near)
    assert autoindex.search_params(index)["nprobe"] == tuning.params["nprobe"]


def test_measured_chooser_tries_every_family_and_builds_the_winner():
    x, _ = structured(4000, seed=1)
    ids = np.arange(4000, dtype=np.int64) + 100
    spec = AutoIndexSpec(
        memory_budget=10**9, flat_below=1000, tuning_queries=100, trial_size=2000, target_recall=0.9, chooser="measured"
    )
    plans = autocandidates.candidates(4000, 64, spec)
    assert len(plans) == 3 and "hnsw" not in {p.family for p in plans}  # a graph only when asked for
    index, record = autoindex.build(x, ids, "auto", spec)
    assert record.choice in {f"IDMap2,{p.factory}" for p in plans}
    assert all(p.family in (record.reason or "") for p in plans) and "sample of 2,000" in (record.reason or "")
    assert index.ntotal == 4000 and record.built_for == 4000
    _, found = index.search(x[:20], 10)  # tuned for recall@10: each item is among its own 10 nearest
    assert (found == ids[:20, None]).any(axis=1).mean() >= 0.9
    _, rec_fixed = autoindex.build(x, ids, "auto", dataclasses.replace(spec, chooser="fixed"))
    assert rec_fixed.choice == "IDMap2," + autoindex.plan(4000, 64, spec).factory


# ------------------------------------------------------------------------------ new kinds inside an index


@pytest.fixture
def only_family(monkeypatch):
    """``only_family(name)``: `auto` considers that candidate family alone (above 1,000 vectors)."""
    monkeypatch.setattr(autocandidates, "FLAT_BELOW", 1000)
    real = autocandidates.candidates

    def use(family: str) -> None:
        def one(n, dim, spec=None):
            spec = dataclasses.replace(spec or AutoIndexSpec(), families=(family,))
            plans = [p for p in real(n, dim, spec) if p.family == family]
            assert plans, family
            return plans

        monkeypatch.setattr(autoindex, "candidates", one)  # the measured chooser
        monkeypatch.setattr(autoindex, "fixed_plan", lambda n, dim, spec=None: one(n, dim, spec)[0])  # the default

    return use


def test_auto_chosen_hnsw_removes_through_the_journal_and_a_rebuild(tmp_path, tiny_backbone, only_family, caplog):
    only_family("hnsw")
    root = tmp_path / "photos"
    files = write_files(root, 1200)
    out = tmp_path / "idx"
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone), augment="none", target_recall=0.9)
    gone = [str(f.relative_to(root)) for f in files[:5]]
    with simsearch.open_index(out) as idx:
        assert idx.manifest.index_factory == "IDMap2,HNSW32"
        ef = idx.manifest.extra["index_auto"]["params"]["efSearch"]
        assert autoindex.search_params(idx.faiss)["efSearch"] == ef
        ids = {idx.id_for_path(f) for f in files[:5]}
        assert idx.delete(gone) == 5  # a live removal: journalled, hidden from searches at once
        hits = idx.search(idx.id_for_path(files[10]), k=50)
        assert not ids & {h.id for h in hits}
    done = compact_index(out)  # folded: FAISS cannot remove from HNSW, so the graph is rebuilt without them
    assert done["folded"] == 5
    assert sum("rebuilding it from the 1195 kept" in r.getMessage() for r in caplog.records) == 1  # once for all
    with simsearch.open_index(out) as idx:
        assert idx.manifest.index_factory == "IDMap2,HNSW32" and idx.faiss.ntotal == 1195 == len(idx)
        assert autoindex.search_params(idx.faiss)["efSearch"] == ef  # the tuned setting survives the rebuild
        assert all(idx.id_for_path(f) is None for f in files[:5])
    assert verify_index(out)[0] == []


@pytest.mark.parametrize("family", ["hnsw", "ivf-pqfs-refine", "pca-ivf-pqfs-refine"])
def test_augmentation_clones_the_new_index_kinds(tmp_path, tiny_backbone, only_family, family):
    only_family(family)
    root = tmp_path / "photos"
    files = write_files(root, 1100)
    out = tmp_path / "idx"
    build_index([root], out, embedder=VectorEmbedder(tiny_backbone), augment="dba:k=5", target_recall=0.9)
    with simsearch.open_index(out) as idx:
        kind = type(faiss.downcast_index(idx.faiss.index))
        aug = idx.snapshot.augmented
        assert aug is not None and aug.ntotal == len(idx) == 1100
        assert type(faiss.downcast_index(aug.index)) is kind
        some = idx.id_for_path(files[3])
        assert len(idx.search(some, k=5)) == 5
    for f in files[:20]:
        f.unlink()
    r = build_index([root], out, embedder=VectorEmbedder(tiny_backbone), prune=True)  # incremental: removals
    assert r.removed == 20
    with simsearch.open_index(out) as idx:
        assert idx.manifest.extra["augment"]["mode"] == "incremental"
        assert idx.snapshot.augmented.ntotal == len(idx) == 1080
        assert type(faiss.downcast_index(idx.snapshot.augmented.index)) is kind
    assert verify_index(out)[0] == []


# ------------------------------------------------------------------------------ tuning on held-out rows


def test_exact_neighbors_can_leave_rows_out_without_copying():
    x, _ = structured(3000, seed=4)
    q = x[:50] + 0.01
    skip = np.sort(np.random.default_rng(0).choice(3000, 400, replace=False))
    kept = np.setdiff1d(np.arange(3000), skip)
    d, rows = autoindex.exact_neighbors(q, x, 10, chunk=700, skip=skip)
    d_ref, sub = autoindex.exact_neighbors(q, x[kept], 10)
    assert not np.isin(rows, skip).any()
    assert np.array_equal(rows, kept[sub]) and np.allclose(d, d_ref, atol=1e-5)


def two_fast_scan_families(target_recall: float) -> AutoIndexSpec:
    """The measured chooser over two fast-scan families, tried on 2,500 vectors, tuned on 150 held-out rows."""
    return AutoIndexSpec(
        memory_budget=10**9, flat_below=1000, tuning_queries=150, trial_size=2500, target_recall=target_recall,
        chooser="measured", families=("ivf-pqfs-refine", "pca-ivf-pqfs-refine"),
    )  # fmt: skip


def test_measured_chooser_tunes_on_rows_kept_out_of_the_trial_index(monkeypatch):
    x, _ = structured(4000, seed=5)
    ids = np.arange(4000, dtype=np.int64) * 2 + 1
    spec = two_fast_scan_families(0.9)
    real, seen = autoindex.tune, []

    def spy(index, xb, ids_, spec_=None, **kw):
        held = kw.get("held")
        in_index = faiss.vector_to_array(faiss.downcast_index(index).id_map)
        seen.append((len(xb), int(index.ntotal), None if held is None else ids_[held]))
        if held is not None:  # the tuning queries are vectors the index does not hold yet
            assert not np.isin(ids_[held], in_index).any() and index.ntotal == len(xb) - len(held)
        tuning = real(index, xb, ids_, spec_, **kw)
        if held is not None:
            kept = np.setdiff1d(np.arange(len(xb)), held)
            _, truth = autoindex.exact_neighbors(xb[held], xb[kept], 10)
            _, found = index.search(xb[held], 10)
            assert tuning.recall_at_10 == pytest.approx(
                autoindex.recall_at_k(found, ids_[kept][truth]), abs=1e-3
            )  # recall of those queries against the rows in the index, with the tuned setting
        return tuning

    monkeypatch.setattr(autoindex, "tune", spy)
    index, record = autoindex.build(x, ids, "auto", dataclasses.replace(spec, finalists=1))
    trials, final = seen[:-1], seen[-1]
    assert len(trials) == 2 and all(n == 2500 and len(h) == 150 and t == 2350 for n, t, h in trials)
    assert final[0] == 4000 and final[1] == 3850 and len(final[2]) == 150 and record.recall_queries == 150
    assert index.ntotal == 4000  # the held-out rows are added once tuned
    assert sorted(faiss.vector_to_array(faiss.downcast_index(index).id_map).tolist()) == ids.tolist()
    _, found = index.search(x[np.searchsorted(ids, final[2])], 10)
    assert (found == final[2][:, None]).any(axis=1).mean() >= 0.9  # and found under their own ids
    seen.clear()
    autoindex.build(x, ids, "auto", dataclasses.replace(spec, chooser="fixed"))
    assert [h for _, _, h in seen] == [None]  # the fixed rule (the baseline) tunes on items of the collection


def test_measured_chooser_keeps_the_finalist_that_does_best_on_all_vectors(monkeypatch):
    """The two best trials (on a sample) are built and tuned on all vectors; the one faster there is kept, even
    when the sample ranked it second (a denser collection can need a deeper search)."""
    x, _ = structured(4000, seed=6)
    ids = np.arange(4000, dtype=np.int64)
    spec = two_fast_scan_families(0.85)
    real, calls = autoindex.tune, []

    def slow_winner(index, xb, ids_, spec_=None, **kw):
        tuning = real(index, xb, ids_, spec_, **kw)
        pca = faissops.find_stage(index, faiss.IndexPreTransform) is not None
        calls.append((len(xb), pca, tuning.reached))
        if len(calls) == 3:  # the sample's winner, on all vectors: make it ten times slower than measured
            tuning = dataclasses.replace(tuning, ms_per_query=tuning.ms_per_query * 10)
        return tuning

    monkeypatch.setattr(autoindex, "tune", slow_winner)
    index, record = autoindex.build(x, ids, "auto", spec)
    assert [n for n, _, _ in calls] == [2500, 2500, 4000, 4000] and all(ok for _, _, ok in calls)
    winner_pca, runner_up_pca = calls[2][1], calls[3][1]
    assert winner_pca != runner_up_pca  # the sample's winner first, then the other family
    assert ("PCA" in (record.choice or "")) == runner_up_pca  # the runner-up is kept
    assert "then on all 4,000 vectors" in (record.reason or "") and index.ntotal == 4000
    assert record.recall_at_10 >= 0.85
    _, found = index.search(x[:50], 10)
    assert (found == ids[:50, None]).any(axis=1).mean() >= 0.85

    calls.clear()  # a budget that holds one finished index only: the runner-up is not built
    one = autocandidates.candidates(4000, 64, spec)[0].bytes_per_vector * 4000 * 1.5
    autoindex.build(x, ids, "auto", dataclasses.replace(spec, memory_budget=int(one)))
    assert [n for n, _, _ in calls] == [2500, 2500, 4000]
