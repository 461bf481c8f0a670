"""End to end on real photos: a Caltech-101 subset indexed in place with the real bundled backbone.

Needs ../shared/data/caltech101 beside the repository; skipped when it is absent. Nothing from it is copied into
the repository: the subset's class folders are indexed where they are (one file is copied to a temp folder).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import CALTECH, CountingEngine

import simsearch
from simsearch.embed import TorchEngine
from simsearch.evaluate import read_labels_csv
from simsearch.images import load_image, scan
from simsearch.index import build_index, verify_index

IMAGES = CALTECH / "images"
LABELS = CALTECH / "labels.csv"
N_CLASSES = 10

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not (IMAGES.is_dir() and LABELS.is_file()), reason=f"Caltech-101 not found at {CALTECH}"),
]


def subset_classes() -> list:
    """The 10 smallest object classes (about 340 images), a deterministic choice."""
    dirs = [d for d in IMAGES.iterdir() if d.is_dir() and d.name != "BACKGROUND_Google"]
    return sorted(dirs, key=lambda d: (sum(1 for _ in d.iterdir()), d.name))[:N_CLASSES]


@pytest.fixture(scope="module")
def caltech(real_backbone, tmp_path_factory):
    classes = subset_classes()
    out = tmp_path_factory.mktemp("caltech") / "index"
    engine = CountingEngine(TorchEngine(real_backbone))
    report = build_index(classes, out, backbone=real_backbone, engine=engine, batch_size=32)
    idx = simsearch.open_index(out, backbone=real_backbone)
    yield {"classes": classes, "out": out, "report": report, "engine": engine, "index": idx}
    idx.close()


@pytest.fixture(scope="module")
def truth(caltech):
    """Class of every indexed item, from the dataset's own labels.csv."""
    by_path = read_labels_csv(LABELS)
    idx = caltech["index"]
    labels = {it.id: by_path[it.abspath.resolve()] for it in idx.items()}
    assert set(labels.values()) == {d.name for d in caltech["classes"]}
    return labels


@pytest.mark.slow
def test_every_readable_file_is_indexed(caltech):
    files = sorted(p for d in caltech["classes"] for p in d.iterdir() if p.is_file())
    assert 250 <= len(files) <= 450
    report, idx = caltech["report"], caltech["index"]
    assert report.skipped == []
    assert report.added == report.count == len(files) == len(idx)
    assert caltech["engine"].images == len(files)
    assert sorted(it.abspath for it in idx.items()) == files
    assert verify_index(caltech["out"])[0] == []


@pytest.mark.slow
def test_queries_return_mostly_the_same_class(caltech, truth):
    idx = caltech["index"]
    ids = idx.ids()[::3]  # a third of the items as queries
    same = []
    for item_id in ids.tolist():
        hits = idx.search(item_id, k=10)
        assert len(hits) == 10 and item_id not in {h.id for h in hits}
        same.append(sum(truth[h.id] == truth[item_id] for h in hits))
    same = np.array(same)
    assert (same >= 7).mean() >= 0.8, np.bincount(same, minlength=11)
    assert same.mean() >= 8


@pytest.mark.slow
def test_evaluate_recall_on_the_subset(caltech):
    r = simsearch.evaluate_index(caltech["index"], labels_csv=LABELS)
    assert r["items"] == caltech["report"].count and r["classes"] == N_CLASSES and r["unlabelled"] == 0
    assert r["recall@1"] >= 0.85
    assert r["recall@5"] >= r["recall@1"]
    assert r["map@r"] >= 0.5


@pytest.mark.slow
def test_rerun_embeds_nothing(caltech, real_backbone):
    engine = CountingEngine(TorchEngine(real_backbone))
    report = build_index(caltech["classes"], caltech["out"], backbone=real_backbone, engine=engine)
    assert engine.images == 0
    assert (report.embedded, report.unchanged, report.count) == (0, caltech["report"].count, caltech["report"].count)


def test_extensionless_background_file_is_indexed(real_backbone, tmp_path):
    src = IMAGES / "BACKGROUND_Google" / "tmp"
    if not src.is_file():
        pytest.skip("BACKGROUND_Google/tmp is not in this copy of Caltech-101")
    folder = tmp_path / "bg"
    folder.mkdir()
    shutil.copyfile(src, folder / "tmp")  # the one file, at test time, into a temp folder
    assert [f.relpath for f in scan([folder])] == ["tmp"]
    assert load_image(folder / "tmp").mode == "RGB"
    report = build_index([folder], tmp_path / "index", backbone=real_backbone)
    assert (report.added, report.count, report.skipped) == (1, 1, [])
    with simsearch.open_index(tmp_path / "index", backbone=real_backbone) as idx:
        (item,) = idx.items()
        assert item.path == "tmp"
        hits = idx.search(folder / "tmp", k=1, exclude_query=False)
        assert hits[0].id == item.id and hits[0].score == pytest.approx(1.0, abs=1e-4)
