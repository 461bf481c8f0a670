"""Building, reopening, incrementally updating and verifying saved indexes."""

from __future__ import annotations

import csv
import dataclasses
import json
import sqlite3
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import TINY, bump_mtime, write_bad_image, write_image, write_truncated_jpeg

import simsearch
from simsearch import IndexFormatError, IndexLockedError, Manifest, SimsearchError, open_index
from simsearch.build import DEFAULT_INDEX_DIR, default_index_path
from simsearch.index import MANIFEST, build_index, read_manifest, verify_index, writer_lock
from simsearch.store import FORMAT_VERSION, label_from_path

EXPECTED = {
    "birds/b1.jpg": "birds",
    "birds/b2.jpg": "birds",
    "cats/c1.jpg": "cats",
    "cats/c2.jpg": "cats",
    "cats/c3.png": "cats",
    "dogs/d1.jpg": "dogs",
    "dogs/d2.png": "dogs",
    "dogs/puppies/p1.jpg": "puppies",
}


def build(roots, out, **kwargs):
    kwargs.setdefault("backbone", TINY)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("workers", 2)
    return build_index(roots, out, **kwargs)


def ids_by_path(idx) -> dict[str, int]:
    return {it.path: it.id for it in idx.items()}


def rewrite_manifest(out, **changes):
    data = json.loads((out / MANIFEST).read_text())
    data.update(changes)
    (out / MANIFEST).write_text(json.dumps(data))


# ----------------------------------------------------------------------------- build and open


def test_build_then_open(image_folder, tmp_path, tiny_backbone):
    out = tmp_path / "idx"
    report = build(image_folder, out)
    assert (report.scanned, report.added, report.updated, report.removed, report.count) == (8, 8, 0, 0, 8)
    assert report.embedded == 8 and report.skipped == []
    with open_index(out) as idx:
        assert len(idx) == 8 == idx.manifest.count
        assert {it.path: it.label for it in idx.items()} == EXPECTED
        assert all(it.root == str(image_folder.resolve()) and it.abspath.exists() for it in idx.items())
        assert sorted(idx.ids().tolist()) == list(range(8))
        ids, vecs = idx.vectors()
        assert vecs.shape == (8, tiny_backbone.dim)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
        # query-time embedding is exactly index-time embedding
        item = idx.item(int(ids[3]))
        np.testing.assert_allclose(idx.embed([item.abspath])[0], vecs[3], atol=1e-5)
        m = idx.manifest
        assert (m.backbone, m.arch, m.dim, m.metric) == (TINY, "test_efficientnet", tiny_backbone.dim, "inner_product")
        assert m.weights_sha256 == tiny_backbone.weights_sha256
        assert m.preprocessing == tiny_backbone.preprocessing()
        assert m.roots == [str(image_folder.resolve())]
        assert m.format_version == FORMAT_VERSION and m.next_id == 8
        info = idx.info()
        assert info["count"] == 8 and info["labels"] == 4 and info["faiss_ntotal"] == 8 and info["size_bytes"] > 0
        with pytest.raises(KeyError):
            idx.item(99)
        assert idx.id_for_path(image_folder / "cats" / "c2.jpg") == idx.id_for_path("cats/c2.jpg")
        assert idx.id_for_path("cats/nope.jpg") is None


def test_package_level_build_index_returns_an_open_index(image_folder, tmp_path):
    idx = simsearch.build_index([image_folder], tmp_path / "idx", backbone=TINY, workers=2)
    try:
        assert isinstance(idx, simsearch.Index) and len(idx) == 8
        assert idx.report.added == 8
        assert idx.search(0, k=3)
    finally:
        idx.close()


def test_default_index_path_and_labels(tmp_path):
    assert default_index_path([tmp_path / "holiday"]) == DEFAULT_INDEX_DIR / "holiday"
    assert label_from_path("a/b/c.jpg") == "b"
    assert label_from_path("c.jpg") is None


def test_several_roots(tmp_path):
    write_image(tmp_path / "one" / "x" / "a.jpg", 1)
    write_image(tmp_path / "two" / "b.jpg", 2)
    out = tmp_path / "idx"
    build([tmp_path / "one", tmp_path / "two"], out)
    with open_index(out) as idx:
        assert {(it.root.rsplit("/", 1)[1], it.path, it.label) for it in idx.items()} == {
            ("one", "x/a.jpg", "x"),
            ("two", "b.jpg", None),
        }


# ----------------------------------------------------------------------------- manifest


def test_manifest_round_trip(built_index):
    m = built_index.manifest
    assert Manifest(**asdict(m)) == m
    on_disk = json.loads((built_index.path / MANIFEST).read_text())
    assert Manifest.from_dict(on_disk) == m
    assert json.loads(m.to_json()) == on_disk
    assert read_manifest(built_index.path) == m


def test_manifest_refuses_mismatched_backbone(image_folder, tmp_path, tiny_backbone):
    out = tmp_path / "idx"
    build(image_folder, out)
    torch.manual_seed(1)
    other = simsearch.create_backbone("test_efficientnet", pretrained=False)  # same arch and dim, other weights
    assert other.dim == tiny_backbone.dim and other.weights_sha256 != tiny_backbone.weights_sha256
    with pytest.raises(IndexFormatError, match="built with backbone 'tiny-test'"):
        open_index(out, backbone=other)
    with pytest.raises(IndexFormatError, match="built with backbone"):
        build(image_folder, out, backbone=other)
    resized = dataclasses.replace(tiny_backbone, data_config=dict(tiny_backbone.data_config, input_size=[3, 72, 72]))
    with pytest.raises(IndexFormatError, match="preprocessing"):
        open_index(out, backbone=resized)
    with pytest.raises(IndexFormatError):
        open_index(out, backbone="efficientnet_lite0")  # other dim
    with open_index(out, backbone=tiny_backbone) as idx:  # the right one is accepted
        assert len(idx) == 8


def test_tampered_manifest_count_is_refused(built_index, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(built_index.path, out)
    rewrite_manifest(out, count=7)
    with pytest.raises(IndexFormatError, match="inconsistent"):
        open_index(out)
    problems, _ = verify_index(out)
    assert any("counts differ" in p for p in problems)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format_version": FORMAT_VERSION + 1}, "format version"),
        ({"format_version": "1"}, "format version"),
        ({"hologram": True}, "unknown fields"),
        ({"metric": "l2"}, "invalid metric"),
        ({"dim": 0}, "invalid metric, dim"),
    ],
)
def test_bad_manifests_are_refused(built_index, tmp_path, changes, message):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(built_index.path, out)
    rewrite_manifest(out, **changes)
    with pytest.raises(IndexFormatError, match=message):
        open_index(out)
    assert verify_index(out)[0]


def test_unreadable_or_missing_index(tmp_path):
    with pytest.raises(IndexFormatError, match="no index at"):
        open_index(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="not a simsearch index"):
        open_index(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MANIFEST).write_text("{not json")
    with pytest.raises(IndexFormatError, match="cannot read"):
        open_index(tmp_path / "broken")


def test_missing_generation_files(built_index, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(built_index.path, out)
    (out / built_index.manifest.vectors_file).unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        open_index(out)
    assert verify_index(out)[0] == [f"missing {built_index.manifest.vectors_file}"]


# ----------------------------------------------------------------------------- incremental updates


def test_rerun_on_unchanged_folder_embeds_nothing(image_folder, tmp_path, counting_engine):
    out = tmp_path / "idx"
    first = counting_engine()
    build(image_folder, out, engine=first)
    assert first.images == 8
    generation = read_manifest(out).generation
    again = counting_engine()
    report = build(image_folder, out, engine=again)
    assert again.images == 0 and again.calls == 0
    assert (report.unchanged, report.embedded, report.count) == (8, 0, 8)
    assert read_manifest(out).generation == generation  # nothing to commit


def test_adding_files_embeds_only_them(image_folder, tmp_path, counting_engine):
    out = tmp_path / "idx"
    build(image_folder, out)
    with open_index(out) as idx:
        before = ids_by_path(idx)
        old_vectors = idx.vectors()[1]
    for i, rel in enumerate(["cats/c4.jpg", "fish/f1.jpg", "fish/f2.png"]):
        write_image(image_folder / rel, seed=50 + i)
    engine = counting_engine()
    report = build(image_folder, out, engine=engine)
    assert engine.images == 3
    assert (report.added, report.updated, report.unchanged, report.count) == (3, 0, 8, 11)
    with open_index(out) as idx:
        after = ids_by_path(idx)
        assert {p: after[p] for p in before} == before  # existing items keep their ids...
        np.testing.assert_array_equal(idx.vectors(sorted(before.values()))[1], old_vectors)  # ...and vectors
        assert sorted(after[p] for p in ["cats/c4.jpg", "fish/f1.jpg", "fish/f2.png"]) == [8, 9, 10]
        assert idx.item(after["fish/f1.jpg"]).label == "fish"


def test_modified_file_is_reembedded_with_a_new_id(image_folder, tmp_path, counting_engine):
    out = tmp_path / "idx"
    build(image_folder, out, engine="torch", precision="fp32")  # what the counting engine wraps, and idx.embed uses
    with open_index(out) as idx:
        before = ids_by_path(idx)
        old_vector = idx.vector(before["dogs/d1.jpg"])
    target = image_folder / "dogs" / "d1.jpg"
    write_image(target, seed=999)  # same path, new content
    bump_mtime(target)
    engine = counting_engine()
    report = build(image_folder, out, engine=engine)
    assert engine.images == 1
    assert (report.added, report.updated, report.unchanged) == (0, 1, 7)
    with open_index(out) as idx:
        after = ids_by_path(idx)
        new_id, old_id = after["dogs/d1.jpg"], before["dogs/d1.jpg"]
        assert new_id != old_id and new_id == 8
        assert not idx.has_id(old_id)
        with pytest.raises(KeyError):
            idx.vector(old_id)
        assert {p: i for p, i in after.items() if p != "dogs/d1.jpg"} == {
            p: i for p, i in before.items() if p != "dogs/d1.jpg"
        }
        new_vector = idx.vector(new_id)
        assert float(new_vector @ old_vector) < 0.999
        np.testing.assert_allclose(idx.embed([target])[0], new_vector, atol=1e-5)
        assert len(idx) == 8 and not verify_index(out)[0]


def test_touched_file_with_same_content_is_reembedded(image_folder, tmp_path, counting_engine):
    out = tmp_path / "idx"
    build(image_folder, out)
    bump_mtime(image_folder / "birds" / "b2.jpg")
    engine = counting_engine()
    assert build(image_folder, out, engine=engine).updated == 1
    assert engine.images == 1


def test_prune(image_folder, tmp_path, counting_engine):
    out = tmp_path / "idx"
    build(image_folder, out)
    (image_folder / "cats" / "c1.jpg").unlink()
    (image_folder / "birds" / "b2.jpg").unlink()
    engine = counting_engine()
    report = build(image_folder, out, engine=engine)  # without --prune the entries stay
    assert (report.missing, report.removed, report.count, engine.images) == (2, 0, 8, 0)
    with open_index(out) as idx:
        assert "cats/c1.jpg" in ids_by_path(idx)
    report = build(image_folder, out, prune=True, engine=engine)
    assert (report.missing, report.removed, report.count, engine.images) == (2, 2, 6, 0)
    with open_index(out) as idx:
        assert set(ids_by_path(idx)) == set(EXPECTED) - {"cats/c1.jpg", "birds/b2.jpg"}
        assert len(idx) == 6
    assert not verify_index(out)[0]


def test_prune_only_touches_the_scanned_roots(tmp_path):
    write_image(tmp_path / "a" / "x.jpg", 1)
    write_image(tmp_path / "b" / "y.jpg", 2)
    out = tmp_path / "idx"
    build([tmp_path / "a", tmp_path / "b"], out)
    report = build([tmp_path / "a"], out, prune=True)
    assert report.removed == 0 and report.count == 2


def test_ids_are_never_reused(image_folder, tmp_path):
    out = tmp_path / "idx"
    build(image_folder, out)
    with open_index(out) as idx:
        gone = ids_by_path(idx)["birds/b2.jpg"]
    (image_folder / "birds" / "b2.jpg").unlink()
    build(image_folder, out, prune=True)
    write_image(image_folder / "birds" / "b2.jpg", seed=8)  # the same file comes back
    write_image(image_folder / "birds" / "b3.jpg", seed=9)
    build(image_folder, out)
    with open_index(out) as idx:
        ids = ids_by_path(idx)
        assert ids["birds/b2.jpg"] == 8 and ids["birds/b3.jpg"] == 9
        assert gone not in ids.values()  # the returning file got a fresh id
        assert idx.manifest.next_id == 10
        assert len(set(ids.values())) == len(ids) == 9


def test_skipped_files_are_reported(image_folder, tmp_path, counting_engine):
    bad = write_bad_image(image_folder / "cats" / "notreally.jpg")
    cut = write_truncated_jpeg(image_folder / "dogs" / "cut.jpg")
    out = tmp_path / "idx"
    report = build(image_folder, out)
    assert report.count == 8
    assert sorted(p for p, _ in report.skipped) == sorted([str(bad.resolve()), str(cut.resolve())])
    with open(out / "skipped.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == {str(bad.resolve()), str(cut.resolve())}
    assert all(r["reason"] for r in rows)
    assert next(r["reason"] for r in rows if r["path"].endswith("notreally.jpg")).startswith("not an image")
    with open_index(out) as idx:
        assert dict(idx.skipped()) == {r["path"]: r["reason"] for r in rows}
        assert idx.manifest.skipped == 2
    # unchanged bad files are not retried
    engine = counting_engine()
    again = build(image_folder, out, engine=engine)
    assert engine.images == 0 and again.embedded == 0
    assert len(again.skipped) == 2
    assert all("unchanged since it was skipped" in r for _, r in again.skipped)
    # a fixed file is indexed and leaves the report
    write_image(bad, seed=77)
    bump_mtime(bad)
    fixed = build(image_folder, out, engine=engine)
    assert fixed.added == 1 and engine.images == 1
    with open(out / "skipped.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [str(cut.resolve())]
    # and a deleted bad file leaves the report with --prune
    cut.unlink()
    build(image_folder, out, prune=True)
    with open(out / "skipped.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []


def test_update_method_and_commit_every(image_folder, tmp_path):
    out = tmp_path / "idx"
    build(image_folder, out, commit_every=3)
    manifest = read_manifest(out)
    assert manifest.count == 8 and manifest.generation >= 2  # committed in several steps (batches of 4)
    files = sorted(f.name for f in out.iterdir() if f.name.startswith(("vectors-", "meta-")))
    assert len(files) <= 4  # only the current and the previous generation are kept
    write_image(image_folder / "new" / "n.jpg", seed=31)
    with open_index(out) as idx:
        report = idx.update()
        assert report.added == 1 and report.count == 9
    with open_index(out) as idx:
        assert len(idx) == 9


def test_writer_lock_refuses_a_second_writer(image_folder, tmp_path):
    out = tmp_path / "idx"
    with writer_lock(out), pytest.raises(IndexLockedError, match="another simsearch process"):
        build(image_folder, out)
    build(image_folder, out)  # released


# ----------------------------------------------------------------------------- verify


def test_verify_ok_and_detects_tampering(image_folder, tmp_path):
    out = tmp_path / "idx"
    build(image_folder, out)
    problems, stats = verify_index(out)
    assert problems == [] and stats["count"] == stats["vectors"] == 8
    m = read_manifest(out)
    # metadata row removed behind the index's back
    db = sqlite3.connect(out / m.metadata_file)
    db.execute("DELETE FROM items WHERE id=3")
    db.commit()
    db.close()
    problems, _ = verify_index(out)
    assert any("counts differ" in p for p in problems)
    assert any("ids in the FAISS index and in the metadata differ" in p for p in problems)


def test_verify_detects_faiss_and_metadata_id_mismatch(image_folder, tmp_path):
    import faiss

    out = tmp_path / "idx"
    build(image_folder, out)
    m = read_manifest(out)
    index = faiss.read_index(str(out / m.vectors_file))
    vec = index.reconstruct(5)
    index.remove_ids(np.array([5], dtype=np.int64))
    index.add_with_ids(vec[None, :], np.array([42], dtype=np.int64))  # same count, wrong id
    faiss.write_index(index, str(out / m.vectors_file))
    problems, _ = verify_index(out)
    assert "ids in the FAISS index and in the metadata differ" in problems
    assert not any("counts differ" in p for p in problems)
    # vectors that are not unit length
    index.remove_ids(np.array([42], dtype=np.int64))
    index.add_with_ids(3 * vec[None, :], np.array([5], dtype=np.int64))
    faiss.write_index(index, str(out / m.vectors_file))
    assert any("unit length" in p for p in verify_index(out)[0])


# ----------------------------------------------------------------------------- FAISS factories


def test_hnsw_index_end_to_end(image_folder, tmp_path):
    out = tmp_path / "hnsw"
    build(image_folder, out, index_factory="HNSW16")
    assert read_manifest(out).index_factory == "IDMap2,HNSW16"
    assert verify_index(out)[0] == []
    with open_index(out) as idx:
        ids = ids_by_path(idx)
        hits = idx.search(idx.vector(ids["cats/c1.jpg"]), k=3)
        assert hits[0].id == ids["cats/c1.jpg"] and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert len(idx.search(ids["cats/c1.jpg"], k=20)) == 7
    # HNSW cannot remove vectors: a modified file makes the writer rebuild the index without the old one
    target = image_folder / "cats" / "c1.jpg"
    write_image(target, seed=555)
    bump_mtime(target)
    (image_folder / "birds" / "b1.jpg").unlink()
    report = build(image_folder, out, prune=True)
    assert (report.updated, report.removed, report.count) == (1, 1, 7)
    assert verify_index(out)[0] == []
    with open_index(out) as idx:
        new = ids_by_path(idx)
        assert not idx.has_id(ids["cats/c1.jpg"]) and new["cats/c1.jpg"] == 8
        assert idx.search(idx.vector(8), k=1)[0].id == 8
    with pytest.raises(SimsearchError, match="uses FAISS index"):
        build(image_folder, out, index_factory="Flat")


def test_invalid_factory_is_a_clean_error(image_folder, tmp_path):
    with pytest.raises(SimsearchError, match="invalid FAISS factory string"):
        build(image_folder, tmp_path / "bad", index_factory="NotAnIndex42")
    assert not (tmp_path / "bad" / MANIFEST).exists()


def test_missing_root_is_a_clean_error(tmp_path):
    with pytest.raises(SimsearchError, match="folder not found"):
        build([tmp_path / "nowhere"], tmp_path / "idx")
