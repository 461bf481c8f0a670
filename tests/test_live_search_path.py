"""Live writes stay off the search path: searches do not wait for journal appends or for each other's journal
reads, this process's writes are seen at once, live items are expanded once (not per search), and the service's
compaction swaps generations without a search finding its generation stale."""

from __future__ import annotations

import importlib
import threading
from dataclasses import replace

import numpy as np
from conftest import COLORS, color_vector

import simsearch
import simsearch.index_reader
from simsearch.compact import compact_index, truncate_journal
from simsearch.config.index import READER

search_module = importlib.import_module("simsearch.search")  # (simsearch.search is also a function)
search_live = importlib.import_module("simsearch.search_live")


def _in_thread(fn):
    """Run ``fn`` in a thread; its result, or None if it is still blocked after a minute."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout=60)
    return out[0] if out else None


def test_searches_wait_neither_for_an_append_nor_for_another_journal_read(colors, monkeypatch):
    teal = color_vector((0, 128, 128))
    photo = colors.item(colors.id_for_key("red/r1.png")).photos[0].abspath
    colors.put("sku-teal", [photo], {"label": "teal"}, vectors=[teal])
    monkeypatch.setattr(
        simsearch.index_reader, "READER", replace(READER, live_poll_seconds=0.0)
    )  # every search is due to read the journal
    with colors._journal._lock:  # an append is committing (its fsync can take long on a busy disk)
        hits = _in_thread(lambda: colors.search(teal, k=1))
        assert hits is not None, "a search waited for the journal append"
        assert hits[0].key == "sku-teal"
    with colors._live._lock:  # another search is reading the journal: this one takes the current state
        hits = _in_thread(lambda: colors.search(teal, k=1))
        assert hits is not None and hits[0].key == "sku-teal"


def test_own_writes_are_seen_at_once_and_others_within_the_poll(colors, monkeypatch):
    monkeypatch.setattr(
        simsearch.index_reader, "READER", replace(READER, live_poll_seconds=1e9)
    )  # searches never read the journal
    photo = colors.item(colors.id_for_key("red/r1.png")).photos[0].abspath
    colors.search(color_vector((255, 0, 0)), k=1)
    colors.put("own", [photo], {"label": "own"}, vectors=[color_vector((0, 128, 128))])
    colors.patch("red/r2.png", {"label": "crimson"})
    assert [h.key for h in colors.search(color_vector((255, 0, 0)), k=9, filter={"label": "own"})] == ["own"]
    assert [h.key for h in colors.search(color_vector((255, 0, 0)), k=9, filter={"label": "crimson"})] == ["red/r2.png"]
    with simsearch.open_index(colors.path) as other:  # another writer (as another process would be)
        other.put("theirs", [photo], {"label": "theirs"}, vectors=[color_vector((128, 0, 128))])
        # this index has not read the journal since: not seen yet, nor does a write of its own skip it
        assert colors.search(color_vector((128, 0, 128)), k=9, filter={"label": "theirs"}) == []
        colors.delete(["own"])
        assert [h.key for h in colors.search(color_vector((128, 0, 128)), k=9, filter={"label": "theirs"})] == [
            "theirs"
        ]
        assert colors.search(color_vector((0, 128, 128)), k=9, filter={"label": "own"}) == []
        monkeypatch.setattr(simsearch.index_reader, "READER", replace(READER, live_poll_seconds=0.0))
        other.patch("theirs", {"label": "changed"})
        assert [h.key for h in colors.search(color_vector((128, 0, 128)), k=9, filter={"label": "changed"})] == [
            "theirs"
        ]


def test_live_items_are_expanded_once_not_on_every_search(make_color_index, monkeypatch):
    idx = make_color_index(COLORS, name="aug", augment="dba:k=3")
    assert idx.manifest.augmented
    expanded: list[int] = []
    real = search_module.expand

    def counting(snap, vectors, spec, found=None):
        expanded.append(len(vectors))
        return real(snap, vectors, spec, found)

    monkeypatch.setattr(search_module, "expand", counting)  # queries
    monkeypatch.setattr(search_live, "expand", counting)  # the live segment
    photo = idx.item(idx.id_for_key("red/r1.png")).photos[0].abspath
    for n, rgb in enumerate([(0, 128, 128), (128, 0, 128), (128, 128, 0)]):
        idx.put(f"live-{n}", [photo], {"label": "live"}, vectors=[color_vector(rgb)])
    q = color_vector((0, 120, 130))
    first = idx.search(q, k=4)
    assert sorted(expanded) == [1, 3]  # the query, and the three live items at once
    expanded.clear()
    again = idx.search(q, k=4)
    assert expanded == [1] and [h.key for h in again] == [h.key for h in first]  # only the query
    assert first[0].key == "live-0"
    expanded.clear()
    idx.put("live-3", [photo], {"label": "live"}, vectors=[color_vector((0, 130, 120))])
    idx.patch("live-0", {"label": "patched"})  # attributes only: its expansion is kept
    hits = idx.search(q, k=4)
    assert sorted(expanded) == [1, 1]  # the query and the new item
    assert {h.key for h in hits[:2]} == {"live-0", "live-3"}
    assert next(h for h in hits if h.key == "live-0").attributes["label"] == "patched"
    # the same ranking as after folding the writes into the index
    compact_index(idx.path)
    with simsearch.open_index(idx.path) as folded:
        assert [h.key for h in folded.search(q, k=4)] == [h.key for h in hits]


def test_compaction_without_truncation_keeps_old_readers_current(colors):
    photo = colors.item(colors.id_for_key("red/r1.png")).photos[0].abspath
    colors.put("sku", [photo], {"label": "live"}, vectors=[color_vector((0, 128, 128))])
    gen = colors.manifest.generation
    r = compact_index(colors.path, truncate=False)
    assert r["folded"] == 1 and r["delta_seq"] >= 1
    colors.search(color_vector((0, 128, 128)), k=1)
    assert colors.manifest.generation == gen  # the rows are still there: not stale, no reload
    with simsearch.open_index(colors.path) as new:  # the new generation ignores the folded rows
        assert new.manifest.generation == gen + 1 and new.pending_writes() == 0
        assert [h.key for h in new.search(color_vector((0, 128, 128)), k=9)].count("sku") == 1
    truncate_journal(colors.path, r["delta_seq"])
    assert colors._journal.read(0) == []


def test_service_compaction_swaps_without_a_search_reopening_and_keeps_the_model(tmp_path, make_color_index):
    from simsearch.server.state import ServiceState

    path = make_color_index(COLORS, name="served").path
    state = ServiceState(path, compact_seconds=3600)
    try:
        state.preload()
        before = state.current
        assert before._embedder is not None
        photo = before.item(before.id_for_key("red/r1.png")).photos[0].abspath
        with state.index() as idx:
            idx.put("sku", [photo], {"label": "live"}, vectors=[color_vector((0, 128, 128))])
        seen = []
        real = state.reload

        def reload(**kw):  # a request in flight on the old generation while the new one is being opened
            with state.index() as old:
                seen.append((old.manifest.generation, [h.key for h in old.search(color_vector((0, 128, 128)), k=1)]))
            return real(**kw)

        state.reload = reload  # type: ignore[method-assign]
        assert state.compact_once() == 1
        assert seen == [(before.manifest.generation, ["sku"])]
        after = state.current
        assert after is not before and after.manifest.generation == before.manifest.generation + 1
        assert after._embedder is before._embedder  # the model was not loaded again
        assert after.pending_writes() == 0 and after._journal.read(0) == []
        assert [h.key for h in after.search(color_vector((0, 128, 128)), k=1)] == ["sku"]
        assert state.compact_once() == 0
    finally:
        state.close()


def test_batched_rows_merge_live_items_as_single_searches_do(colors):
    photo = colors.item(colors.id_for_key("red/r1.png")).photos[0].abspath
    colors.put("teal", [photo], {"label": "live"}, vectors=[color_vector((0, 128, 128))])
    colors.put("red/r2.png", [photo], {"label": "moved"}, vectors=[color_vector((0, 0, 250))])  # a stored item replaced
    colors.delete(["blue/b1.png"])
    rows = np.stack([color_vector(rgb) for rgb in [(0, 130, 120), (255, 0, 0), (0, 0, 255), (10, 200, 10)]])
    together = colors.search_vectors(rows, k=4)
    alone = [colors.search_vectors(row[None], k=4)[0] for row in rows]
    assert [[(h.key, h.score) for h in r] for r in together] == [[(h.key, h.score) for h in r] for r in alone]
    assert together[0][0].key == "teal" and together[2][0].key == "red/r2.png"
    assert all("blue/b1.png" not in [h.key for h in r] for r in together)


def _rank_live_by_photo(live, queries, filter, skip, matrix=None, limit=None):
    """The live ranking spelled out photo by photo: every allowed photo's score, each item's best (first photo
    on ties), items by score then id."""
    ids, table = live.table
    allowed = set(ids[search_live.compile_filter(filter, live.schema).mask(table)].tolist()) if filter else set(ids)
    m = live.matrix if matrix is None else matrix
    best: dict[int, tuple[float, int]] = {}
    for row, (owner, photo) in enumerate(zip(live.owners.tolist(), live.photo_ids.tolist(), strict=True)):
        if owner in allowed and owner not in skip:
            s = float((queries @ m[row]).max())
            if owner not in best or s > best[owner][0]:
                best[owner] = (s, photo)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
    return [(i, s, p) for i, (s, p) in ranked]


def test_live_ranking_is_each_items_best_photo_with_filters_skips_and_ties(colors):
    photo = colors.item(colors.id_for_key("red/r1.png")).photos[0].abspath
    rng = np.random.default_rng(3)
    for n in range(12):  # items of 1-3 photos; some share vectors (ties between items and within one)
        k = 1 + n % 3
        vecs = [color_vector(tuple(rng.integers(0, 256, 3))) for _ in range(k)]
        if n % 4 == 0:
            vecs = [color_vector((255, 0, 0))] * k
        colors.put(f"live-{n}", [photo] * k, {"label": "even" if n % 2 == 0 else "odd", "n": n}, vectors=vecs)
    colors.patch("red/r2.png", {"n": 99})  # a stored item made live by a patch (its own photo ids)
    live = colors.live_state()
    assert len(live.items) == 13 and len(live.matrix) > 13
    ids = live.table[0]
    queries = [color_vector((255, 0, 0))[None], np.stack([color_vector((0, 255, 0)), color_vector((0, 0, 255))])]
    cases = [(None, set()), ({"label": "even"}, set()), ({"n": {"gte": 5}}, {int(ids[6]), int(ids[7])})]
    cases += [(None, {int(i) for i in ids[:12]}), ({"label": "nothing"}, set())]
    for q in queries:
        for filter, skip in cases:
            for limit in (None, 1, 3, 5, 50):
                got = search_live.rank_live(live, q, filter, skip, limit=limit)
                want = _rank_live_by_photo(live, q, filter, skip, limit=limit)
                assert [(i, p) for i, _, p in got] == [(i, p) for i, _, p in want], (filter, skip, limit)
                assert np.allclose([s for _, s, _ in got], [s for _, s, _ in want], atol=1e-6)
    assert search_live.rank_live(live, queries[0], {"path_prefix": "red"}, set()) == []
    top = [h.key for h in colors.search(color_vector((255, 0, 0)), k=4)]
    assert set(top[:4]) >= {"red/r1.png", "live-0", "live-4"}  # exact red: the stored one and the live ties
