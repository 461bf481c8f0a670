"""Automatic FAISS index choice and tuning (``--index auto``), in the spirit of autofaiss: pure functions over
FAISS indexes and the typed settings of :mod:`simsearch.config.autoindex` (no files, no manifest).

The candidates (:mod:`simsearch.autocandidates`) depend on the number of vectors ``n``, their dimension and a
memory budget: exact ``Flat`` below 100k vectors; IVF with 8-bit or 4-bit fast-scan PQ candidates (optionally
in PCA-reduced space) re-ranked exactly, or an HNSW graph (only when asked for), when the floats fit; PQ codes
only (memory-lean) when they do not. The ``measured`` chooser (default) builds and tunes each candidate on a sample,
then the best two on all vectors, and keeps the fastest at the target recall; the ``fixed`` chooser is the single
rule of commit fe4a9e6 (:func:`plan`), kept as the baseline of the scale benchmark.

:func:`build` trains on a random sample, adds, then :func:`simsearch.autotune.tune` picks the search parameters
(``nprobe``, ``k_factor``, ``efSearch``, set through ``faiss.ParameterSpace``) that reach the target recall@10
against exact search on held-out queries at the lowest measured time. The result is an :class:`AutoIndexRecord`
(the manifest's ``extra["index_auto"]``; ``simsearch info`` shows it). Search parameters are stored in the FAISS
file itself.

The index writer calls :func:`finalize` at the end of a run (an ``auto`` index still exact ``Flat`` is chosen again
for its size) and :func:`remove_ids` to delete: FAISS cannot remove ids from an ``IDMap2`` over an IVF correctly
(the inner ids are not renumbered), so this module does it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .autocandidates import MIN_TRAIN, Plan, candidates, default_memory_budget, fixed_plan, flat_below, nlist_for
from .autotune import Tuning, exact_neighbors, pick, recall_at_k, search_grid, tune
from .config.autoindex import (
    AUTO_INDEX,
    AutoIndexRecord,
    AutoIndexSpec,
    format_size,
    parse_size,
)
from .errors import SimsearchError
from .faissops import (
    FLAT_FACTORY,
    all_vectors,
    is_exact_flat,
    is_exact_storage,
    no_polysemous,
    prepare,
    remove_ids,
    search_params,
    set_search_params,
)
from .progress import progress_bar
from .store import new_faiss_index

log = logging.getLogger("simsearch")

__all__ = [  # the FAISS helpers are re-exported: callers know them as autoindex.remove_ids, prepare...
    "all_vectors",
    "build",
    "describe",
    "exact_neighbors",
    "finalize",
    "is_exact_storage",
    "plan",
    "prepare",
    "rebuild",
    "rebuild_advice",
    "recall_at_k",
    "remove_ids",
    "search_params",
    "set_search_params",
    "tune",
]

AUTO = AUTO_INDEX
HOLD_OUT_MIN = 500  # below this many vectors the measured chooser tunes on items of the collection, like the fixed rule
REBUILD_GROWTH = 4.0  # `simsearch rebuild` is advised once the index holds this many times what it was trained on


# ------------------------------------------------------------------------------ choosing


def plan(n: int, dim: int, spec: AutoIndexSpec | None = None) -> Plan:
    """The index the fixed rule picks for ``n`` vectors (the first candidate of the measured chooser)."""
    return fixed_plan(n, dim, spec)


# ------------------------------------------------------------------------------ building


@dataclass
class _Built:
    index: Any
    full: str
    tuning: Tuning | None
    train_rows: np.ndarray | None
    t_train: float
    t_add: float
    t_tune: float


def held_out_rows(n: int, spec: AutoIndexSpec, avoid: np.ndarray | None = None) -> np.ndarray | None:
    """Rows kept out of the index while it is tuned (their vectors are the tuning queries; they are added after):
    ``spec.tuning_queries`` of them, at most a fifth of ``n``, not in ``avoid`` (the training sample) when
    possible. None where the fixed rule tunes (on items of the collection) or ``n`` is too small."""
    if spec.chooser == "fixed" or n < HOLD_OUT_MIN:
        return None
    pool = np.arange(n)
    if avoid is not None and len(avoid) < n - 2 * HOLD_OUT_MIN:
        pool = np.setdiff1d(pool, avoid)
    size = min(spec.tuning_queries, n // 5, len(pool))
    return np.sort(np.random.default_rng(spec.seed + 1).choice(pool, size=size, replace=False))


def _add(index: Any, xb: np.ndarray, ids: np.ndarray, rows: np.ndarray | None, add_chunk: int, bar: Any) -> None:
    """Add ``xb[rows]`` (all rows when None) in chunks."""
    count = len(xb) if rows is None else len(rows)
    for start in range(0, count, add_chunk):
        part = slice(start, start + add_chunk)
        take = part if rows is None else rows[part]
        index.add_with_ids(
            np.ascontiguousarray(xb[take], dtype=np.float32), np.ascontiguousarray(ids[take], dtype=np.int64)
        )
        bar.update(min(add_chunk, count - start))


def _build_one(
    xb: np.ndarray, ids: np.ndarray, factory: str, spec: AutoIndexSpec, train_size: int | None, progress: bool,
    add_chunk: int,
) -> _Built:  # fmt: skip
    """Train (on a random sample), add and tune one FAISS index. The measured chooser tunes on held-out rows
    (:func:`held_out_rows`): they are added to the index only after tuning, so the tuned recall is that of queries
    the index has never seen (new queries), not of its own items."""
    n = len(xb)
    t0 = time.perf_counter()
    index, full = new_faiss_index(xb.shape[1], factory)
    train_rows = None
    no_polysemous(index)
    if not index.is_trained:
        size = train_size or min(n, max(MIN_TRAIN, 64 * (nlist_for(n) or 1)))
        train_rows = np.sort(np.random.default_rng(spec.seed).choice(n, size=min(n, size), replace=False))
        log.info("training %s on %d of %d vectors", full, len(train_rows), n)
        try:
            index.train(np.ascontiguousarray(xb[train_rows], dtype=np.float32))
        except RuntimeError as e:
            raise SimsearchError(
                f"cannot train FAISS index {full!r} on {len(train_rows)} vectors: "
                f"{str(e).strip().splitlines()[-1][:160]}; use more images or a simpler --index"
            ) from None
    t_train = time.perf_counter() - t0
    prepare(index)
    held = held_out_rows(n, spec, train_rows) if search_grid(index) else None
    kept = None if held is None else np.setdiff1d(np.arange(n), held)
    bar = progress_bar(n, "adding", unit="vec", enabled=progress)
    _add(index, xb, ids, kept, add_chunk, bar)
    t_add = time.perf_counter() - t0 - t_train
    tuning = tune(index, xb, ids, spec, avoid=train_rows, held=held)
    t_tune = time.perf_counter() - t0 - t_train - t_add
    if held is not None:
        t1 = time.perf_counter()
        _add(index, xb, ids, held, add_chunk, bar)
        t_add += time.perf_counter() - t1
    bar.close()
    return _Built(index, full, tuning, train_rows, t_train, t_add, t_tune)


def _result(plan: Plan, built: _Built, *, keep: bool) -> dict[str, Any]:
    """A built candidate as :func:`pick` compares it: its tuned recall@10 and time per query (an index with nothing
    to tune is exact: recall 1, never the cheaper). ``keep``: hold on to the index itself (else it can be freed)."""
    t = built.tuning
    recall, ms = (t.recall_at_10, t.ms_per_query) if t else (1.0, float("inf"))
    return {"plan": plan, "built": built if keep else None, "recall": recall, "ms": ms}


def _listed(results: list[dict[str, Any]]) -> str:
    """The candidates' measurements, for the record's ``reason``."""
    return "; ".join(f"{r['plan'].family} {r['recall']:.3f} at {r['ms']:.3f} ms" for r in results)


def _measure(
    xb: np.ndarray, ids: np.ndarray, plans: list[Plan], spec: AutoIndexSpec, progress: bool, add_chunk: int
) -> tuple[list[Plan], _Built | None, str]:
    """Build and tune every candidate on the same sample (all vectors when there are at most ``trial_size``) and
    rank them with :func:`pick` on their tuned recall and time per query. Returns the winner followed by the other
    trials that reached the target, best first (``spec.finalists`` at most; only the winner when the trials ran on
    all vectors), the winner's index when the trial was on every vector, and a summary of the trials."""
    n = len(xb)
    whole = n <= spec.trial_size
    rows = None if whole else np.sort(np.random.default_rng(spec.seed + 2).choice(n, spec.trial_size, replace=False))
    xs, ids_s = (xb, ids) if rows is None else (np.ascontiguousarray(xb[rows]), ids[rows])
    results: list[dict[str, Any]] = []
    for p in plans:
        factory = p.factory if whole else p.for_size(len(xs))
        log.info("trying %s on %d vectors", factory, len(xs))
        built = _build_one(xs, ids_s, factory, spec, None if not whole else p.train_size, progress, add_chunk)
        results.append(_result(p, built, keep=whole))
        del built
    best = pick(results, spec.target_recall)
    ranked, rest = [best], [r for r in results if r is not best and r["recall"] >= spec.target_recall]
    while rest and not whole and len(ranked) < spec.finalists:
        ranked.append(pick(rest, spec.target_recall))
        rest.remove(ranked[-1])
    where = "all vectors" if whole else f"a sample of {len(xs):,}"
    summary = f"measured on {where} (recall@10 at ms/query): {_listed(results)}"
    return [r["plan"] for r in ranked], best["built"], summary


def _final(
    xb: np.ndarray, ids: np.ndarray, finalists: list[Plan], spec: AutoIndexSpec, progress: bool, add_chunk: int
) -> tuple[Plan, _Built, str]:
    """Build the finalists on all vectors, one after the other, and keep the one :func:`pick` prefers on its
    tuning there: a sample is less dense than the whole collection, so it can misjudge how deep a family must
    search (4-bit codes needed 4× the re-ranking depth on 1M vectors that they needed on 50,000). The next
    finalist is built only while two finished indexes fit the memory budget."""
    n = len(xb)
    budget = spec.memory_budget or default_memory_budget()
    kept: dict[str, Any] | None = None
    checked: list[dict[str, Any]] = []
    for p in finalists:
        if kept is not None and (p.bytes_per_vector + kept["plan"].bytes_per_vector) * n > budget:
            break
        result = _result(p, _build_one(xb, ids, p.factory, spec, p.train_size, progress, add_chunk), keep=True)
        checked.append({key: v for key, v in result.items() if key != "built"})
        if kept is None or pick([kept, result], spec.target_recall) is result:
            kept = result
        del result  # the index not kept is dropped here: at most two are held at once
    assert kept is not None
    if len(checked) < 2:
        return kept["plan"], kept["built"], ""
    return kept["plan"], kept["built"], f"then on all {n:,} vectors: {_listed(checked)}; kept {kept['plan'].family}"


def build(
    xb: np.ndarray,
    ids: np.ndarray,
    factory: str = AUTO,
    spec: AutoIndexSpec | None = None,
    *,
    progress: bool = False,
    add_chunk: int = 65536,
) -> tuple[Any, AutoIndexRecord]:
    """Build an IDMap2-wrapped FAISS index over ``xb`` (unit vectors) with ``ids``: train, add, tune.

    ``factory`` is ``"auto"`` or any FAISS factory string. With ``auto`` and the ``measured`` chooser, every
    candidate family that fits (:func:`simsearch.autocandidates.candidates`) is built and tuned on a sample; the
    fastest reaching the target recall (when none reaches it: the best recall, the cheapest within 0.002 of it) and
    the next ``spec.finalists - 1`` that reach it are built and tuned on all vectors, and the one that does best
    there is kept (:func:`_final`); the ``fixed`` chooser takes :func:`plan`. Returns the index and its record
    (``record.choice`` is the full factory string).
    """
    spec = spec or AutoIndexSpec()
    n, dim = xb.shape
    t0 = time.perf_counter()
    chosen: Plan | None = None
    built: _Built | None = None
    reason = "given with --index"
    if factory == AUTO:
        plans = candidates(n, dim, spec) if spec.chooser == "measured" else [fixed_plan(n, dim, spec)]
        chosen, reason = plans[0], plans[0].reason
        if len(plans) > 1:
            finalists, built, summary = _measure(xb, ids, plans, spec, progress, add_chunk)
            chosen, reason = finalists[0], f"{finalists[0].reason}; {summary}"
            if built is None and len(finalists) > 1:
                chosen, built, checked = _final(xb, ids, finalists, spec, progress, add_chunk)
                reason = f"{chosen.reason}; {summary}; {checked}" if checked else reason
    t_trials = time.perf_counter() - t0 - (built.t_train + built.t_add + built.t_tune if built else 0.0)
    if built is None:
        built = _build_one(
            xb, ids, chosen.factory if chosen else factory, spec, chosen.train_size if chosen else None, progress,
            add_chunk,
        )  # fmt: skip
    tuning = built.tuning
    if tuning is not None and not tuning.reached:
        log.warning(
            "%s reaches recall@10 %.3f at best (target %.2f): raise --memory-budget or choose another --index",
            built.full,
            tuning.recall_at_10,
            spec.target_recall,
        )
    record = AutoIndexRecord(
        requested=AUTO if chosen else factory,
        memory_budget=spec.memory_budget,
        target_recall=spec.target_recall,
        flat_below=spec.flat_below,
        choice=built.full,
        reason=reason,
        built_for=int(n),
        trained_on=len(built.train_rows) if built.train_rows is not None else 0,
        estimated_bytes_per_vector=round(chosen.bytes_per_vector, 1) if chosen else None,
        params=tuning.params if tuning else {},
        recall_at_10=tuning.recall_at_10 if tuning else (1.0 if factory == "Flat" else None),
        recall_queries=tuning.queries if tuning else 0,
        ms_per_query_batched=tuning.ms_per_query if tuning else None,
        train_seconds=round(built.t_train + t_trials, 2),
        add_seconds=round(built.t_add, 2),
        tune_seconds=round(built.t_tune, 2),
        vectors_on_disk=spec.vectors_on_disk or None,
    )
    return built.index, record


def finalize(faiss_index: Any, record: AutoIndexRecord | None) -> tuple[Any | None, AutoIndexRecord] | None:
    """At the end of a run: an ``auto`` index still held as exact Flat is chosen again for its current size.

    Returns None when nothing changes; ``(None, record)`` when only the record changes (still exact search);
    ``(new index, record)`` when the index was replaced by a trained, tuned one (``record.choice`` is its
    factory string). Other indexes (explicit, or already chosen: adds go into them; ``rebuild`` retrains) and
    non-automatic records give None.
    """
    if record is None or not record.automatic or not is_exact_flat(faiss_index):
        return None
    n = int(faiss_index.ntotal)
    spec = record.spec
    chosen = plan(n, int(faiss_index.d), spec)
    if chosen.family == "flat":
        if record.choice == FLAT_FACTORY and record.built_for == n:
            return None
        return None, dataclasses.replace(
            record, choice=FLAT_FACTORY, reason=chosen.reason, built_for=n, recall_at_10=1.0, params={}
        )
    ids, xb = all_vectors(faiss_index)
    log.info("%d vectors: switching from exact search to %s (%s)", n, chosen.factory, chosen.reason)
    return build(xb, ids, AUTO, spec)


def rebuild(
    index: Any,
    factory: str = AUTO,
    previous: AutoIndexRecord | None = None,
    *,
    memory_budget: str | int | None = None,
    target_recall: float | None = None,
    vectors_on_disk: bool | None = None,
    progress: bool = False,
) -> tuple[Any, AutoIndexRecord]:
    """Retrain ``index``'s vectors into a new index (``factory`` ``auto`` or any factory string) and re-tune it.
    Budget, target and where the floats are kept default to ``previous``'s (the index's record), else to the
    defaults."""
    prev = previous or AutoIndexRecord()
    if not is_exact_storage(index):
        log.warning(
            "the index stores compressed vectors: retraining on their reconstructions (re-index the images into a "
            "new --out for full accuracy)"
        )
    prepare(index)
    ids, xb = all_vectors(index)
    factory = (factory or AUTO).strip()
    auto = factory.lower() == AUTO
    spec = AutoIndexSpec(
        memory_budget=parse_size(memory_budget) if memory_budget is not None else prev.memory_budget,
        target_recall=float(target_recall or prev.target_recall),
        flat_below=prev.flat_below,
        vectors_on_disk=bool(prev.vectors_on_disk) if vectors_on_disk is None else vectors_on_disk,
    )
    return build(xb if auto else np.ascontiguousarray(xb), ids, AUTO if auto else factory, spec, progress=progress)


# ------------------------------------------------------------------------------ describing


def rebuild_advice(record: AutoIndexRecord | None, count: int, index_factory: str) -> str | None:
    """Why ``simsearch rebuild`` is advisable for an index of ``count`` items (None when it is not)."""
    if record is None:
        return None
    if record.automatic and index_factory.endswith(",Flat") and "IVF" not in index_factory:
        below = flat_below(record.spec)
        if count >= below:
            return f"{count:,} items: past {below:,}, a compressed index would be faster"
        return None
    built = record.built_for or 0
    if built and count > REBUILD_GROWTH * built:
        return f"the index was trained for {built:,} items and now holds {count:,}: retrain with `simsearch rebuild`"
    return None


def describe(record: AutoIndexRecord | None, count: int, index_factory: str) -> dict[str, Any]:
    """What ``simsearch info`` shows about the index choice: ``lines`` for text, other keys for JSON."""
    advice = rebuild_advice(record, count, index_factory)
    lines = []
    if record is not None:
        lines.append(("index choice", f"{record.requested}: {record.reason or 'decided at the end of indexing'}"))
        if record.params:
            lines.append(("search params", ", ".join(f"{k}={v}" for k, v in record.params.items())))
        if record.recall_at_10 is not None:
            exact = record.recall_at_10 == 1.0 and not record.params
            what = (
                "exact search"
                if exact
                else f"measured on {record.recall_queries} held-out queries, target {record.target_recall}"
            )
            lines.append(("recall@10", f"{record.recall_at_10} ({what})"))
        if record.memory_budget:
            lines.append(("memory budget", format_size(record.memory_budget)))
        if record.vectors_on_disk:
            lines.append(("exact vectors", "on disk, memory-mapped (not counted in the memory budget)"))
        if record.trained_on:
            lines.append(("trained on", f"{record.trained_on:,} vectors (index built for {record.built_for or 0:,})"))
    lines.append(("rebuild advised", advice or "no"))
    return {"rebuild_advised": advice, "lines": lines}
