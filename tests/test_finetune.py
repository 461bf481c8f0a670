"""Fine-tuning (issue 6): data checks, losses, a tiny real run, checkpoint round trip, resume, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY
from PIL import Image

import simsearch
from simsearch import SimsearchError
from simsearch.cli import main
from simsearch.evaluate import retrieval_metrics
from simsearch.finetuning import checkpoint, losses, train
from simsearch.finetuning import data as ftdata

FAST = dict(backbone=TINY, batch_size=16, per_class=4, workers=0, views=2, batch_size_infer=32)


def write_classes(root: Path, classes: int = 6, per_class: int = 6, seed: int = 0) -> Path:
    """Class folders of small images: a class tint over random patterns (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        tint = rng.integers(0, 256, 3)
        for i in range(per_class):
            pattern = rng.integers(0, 256, (6, 6, 3))
            img = (0.7 * pattern + 0.3 * tint).astype(np.uint8)
            p = root / f"class{c}" / f"img{i}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).resize((40, 32), Image.BICUBIC).save(p)
    return root


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def classes_root(tmp_path_factory) -> Path:
    return write_classes(tmp_path_factory.mktemp("ft") / "photos")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, classes_root, _register_tiny_backbone):
    """One real two-stage run on the class folders (shared by the tests that only read its output)."""
    out = tmp_path_factory.mktemp("ftrun") / "model"
    # fp32, so that validation during training and the fp32 Embedder below compute the same numbers
    result = simsearch.finetune(
        classes_root, out=out, stage1_epochs=4, stage2_epochs=1, patience=10, precision="fp32", **FAST
    )
    return result


# ----------------------------------------------------------------------------- the run and its checkpoint


def test_finetune_writes_a_loadable_checkpoint_with_a_full_card(trained, classes_root):
    out = trained.path
    assert (out / "backbone.json").exists() and (out / "model.safetensors").exists()
    assert (out / "stage1" / "model.safetensors").exists() and trained.stage1_path == out / "stage1"
    assert not (out / "cache").exists()  # removed after a successful run
    card = json.loads((out / "backbone.json").read_text())
    assert card["base_backbone"] == TINY and card["arch"] == "test_efficientnet"
    assert card["head"] == {"in": 256, "out": 256}
    assert len(card["data"]["digest"]) == 64 and card["data"]["images"] == 36
    assert card["hyperparameters"]["stage1_epochs"] == 4 and card["loss"] == "contrastive"  # the default
    assert [(h["stage"], h["epoch"]) for h in card["history"]] == [(0, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 1)]
    assert card["history"] == trained.history
    assert {"cache_seconds", "stage1_seconds", "stage2_seconds", "total_seconds"} <= set(card["timings"])
    assert card["best"] == trained.best
    # the starting head is the better of the identity and supervised whitening on validation (epoch 0)
    init = card["init"]
    assert set(init["validation_map@r"]) == {"identity", "whiten(0.1)", "whiten(1)", "whiten(10)"}
    assert init["validation_map@r"][init["chosen"]] == max(init["validation_map@r"].values())
    assert card["history"][0]["map@r"] == pytest.approx(init["validation_map@r"][init["chosen"]])
    # the weights file holds tensors only (no pickled code)
    from safetensors.torch import load_file

    keys = load_file(str(out / "model.safetensors")).keys()
    assert {"head.weight", "head.bias"} <= set(keys) and all(k.startswith(("body.", "head.")) for k in keys)


def test_training_loss_decreases(trained):
    losses_ = [h["loss"] for h in trained.history if h["stage"] == 1]
    assert losses_[-1] < losses_[0]


def test_checkpoint_reproduces_the_validation_metrics(trained, classes_root):
    """The loaded checkpoint, embedding images from scratch, gives the validation figures recorded for it."""
    bb = simsearch.create_backbone(str(trained.path))
    assert bb.dim == 256 and bb.extra["finetuned"]["base_backbone"] == TINY
    card = json.loads((trained.path / "backbone.json").read_text())
    summary = card["data"]
    assert summary["validation"] == "classes" and summary["val_groups"] == 2
    val = ftdata.load_training_data(classes_root, seed=0)
    emb = simsearch.Embedder(bb, batch_size=8, workers=1).embed([val.paths[i] for i in val.val])
    names = [val.group_names[g] for g in val.groups[val.val]]
    m = retrieval_metrics(emb, names, ks=(1, 5))
    assert m["map@r"] == pytest.approx(trained.best["map@r"], abs=1e-3)


def test_save_checkpoint_round_trip_reproduces_embeddings(tmp_path, tiny_backbone):
    """Trained body and head weights come back exactly through create_backbone(PATH)."""
    import copy

    model = copy.deepcopy(tiny_backbone.model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.blocks[-1].parameters():
            p.add_(torch.randn_like(p) * 0.1)
    head = torch.nn.Linear(256, 32)
    card = {"arch": tiny_backbone.arch, "data_config": tiny_backbone.data_config, "head": {"in": 256, "out": 32}}
    checkpoint.save_checkpoint(tmp_path / "ck", model, head, card)
    bb = simsearch.create_backbone(str(tmp_path / "ck"))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = torch.nn.functional.normalize(head(model.eval()(x)), dim=1).numpy()
        got = torch.nn.functional.normalize(bb.model(x), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert bb.weights_sha256 != tiny_backbone.weights_sha256


def test_index_built_with_the_checkpoint_records_it(trained, classes_root, tmp_path):
    idx = simsearch.build_index([classes_root], tmp_path / "idx", backbone=str(trained.path), workers=1, engine="torch")
    m = idx.manifest
    assert m.backbone == str(trained.path) and m.dim == 256 and idx.manifest.count == 36
    assert (
        m.extra["finetuned"]["data_digest"]
        == json.loads((trained.path / "backbone.json").read_text())["data"]["digest"]
    )
    hits = idx.search(str(classes_root / "class0" / "img0.jpg"), k=3)
    assert len(hits) == 3
    idx.close()


def test_existing_output_is_not_overwritten(trained, classes_root):
    with pytest.raises(SimsearchError, match="--resume"):
        simsearch.finetune(classes_root, out=trained.path, **FAST)


def test_resume_continues_an_interrupted_run(tmp_path, classes_root, monkeypatch):
    out = tmp_path / "model"
    calls = {"n": 0}
    real = train.Run.train_epoch

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(train.Run, "train_epoch", flaky)
    settings = dict(stage1_epochs=4, stage2_epochs=0, patience=10, **FAST)
    with pytest.raises(KeyboardInterrupt):
        simsearch.finetune(classes_root, out=out, **settings)
    # the last good checkpoint is there and loads
    assert simsearch.create_backbone(str(out)).dim == 256
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["epoch"][1] == 2 and not state["done"]
    assert (out / "cache").exists()  # kept for the resumed run
    monkeypatch.setattr(train.Run, "train_epoch", real)
    result = simsearch.finetune(classes_root, out=out, resume=True, **settings)
    assert [(h["stage"], h["epoch"]) for h in result.history] == [(0, 0), (1, 1), (1, 2), (1, 3), (1, 4)]
    assert calls["n"] == 3  # epochs 1-2 were not trained again
    again = simsearch.finetune(classes_root, out=out, resume=True, **settings)  # already complete: no-op
    assert again.history == result.history


def test_pairs_run_with_contrastive_loss(tmp_path, classes_root):
    data = ftdata.load_training_data(classes_root)
    labels = [data.group_names[g] for g in data.groups]
    pairs = ftdata.make_pairs(labels, positives=2, negatives=2, seed=0)
    assert {y for *_, y in pairs} == {0, 1}
    assert all(labels[i] == labels[j] for i, j, y in pairs if y) and all(
        labels[i] != labels[j] for i, j, y in pairs if not y
    )
    rows = [[data.paths[i].relative_to(classes_root), data.paths[j].relative_to(classes_root), y] for i, j, y in pairs]
    csv_path = write_csv(tmp_path / "pairs.csv", ["left", "right", "label"], rows)
    result = simsearch.finetune(
        pairs=csv_path, root=classes_root, out=tmp_path / "m", stage1_epochs=3, stage2_epochs=0, holdout="images",
        val_fraction=0.34, **FAST,
    )  # fmt: skip
    card = result.card
    assert card["loss"] == "contrastive" and card["data"]["kind"] == "pairs"
    assert card["data"]["train_groups"] == 6  # similar pairs join each class into one group
    assert len(result.history) == 4


def test_default_stage2_length_follows_the_images_per_epoch():
    from simsearch.finetuning import STAGE2_IMAGES, default_stage2_epochs

    assert default_stage2_epochs(5_000) == 16  # a catalogue of 5,000 training images
    assert default_stage2_epochs(45_000) == 2  # 22,500 pairs: two images each
    assert default_stage2_epochs(STAGE2_IMAGES // 5) == 5
    assert default_stage2_epochs(10) == 16 and default_stage2_epochs(10**7) == 2  # kept within 2..16
    assert default_stage2_epochs(0) == 16


def test_default_stage2_epochs_are_resolved_and_recorded(tmp_path, classes_root):
    result = simsearch.finetune(classes_root, out=tmp_path / "m", stage1_epochs=1, stage2_patience=1, **FAST)
    epochs = result.card["hyperparameters"]["stage2_epochs"]
    assert epochs == 16  # 36 tiny images per epoch: the upper end of the range
    stage2 = [h for h in result.history if h["stage"] == 2]
    assert 1 <= len(stage2) <= epochs  # ran, and stopped early at the latest after the resolved number


def test_cli_finetune_then_index(tmp_path, classes_root):
    out = tmp_path / "cli-model"
    runner = CliRunner()
    r = runner.invoke(
        main,
        ["finetune", str(classes_root), "--out", str(out), "--backbone", TINY, "--stage1-epochs", "2",
         "--stage2-epochs", "1", "--views", "1", "--batch-size", "16", "--workers", "0", "--json", "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["path"] == str(out) and len(data["history"]) == 4 and data["best"]["map@r"] > 0
    r = runner.invoke(main, ["index", str(classes_root), "--out", str(tmp_path / "idx"), "--backbone", str(out), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["info", str(tmp_path / "idx"), "--json"])
    assert json.loads(r.output)["backbone"] == str(out)
    r = runner.invoke(main, ["finetune", str(classes_root), "--out", str(tmp_path / "x"), "--labels", "a.csv"])
    assert r.exit_code == 1 and "exactly one source" in r.output


# ----------------------------------------------------------------------------- bad input, before any training


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a model would be loaded: input errors must come first."""

    def boom(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(train.Run, "setup", boom)


def test_labels_csv_with_missing_files(tmp_path, classes_root, no_training):
    rows = [[f"class{c}/img{i}.jpg", f"c{c}"] for c in range(4) for i in range(3)] + [["class9/nope.jpg", "c9"]]
    path = write_csv(tmp_path / "labels.csv", ["path", "label"], rows)
    with pytest.raises(SimsearchError, match=r"1 image file\(s\) not found:\n.*nope.jpg"):
        simsearch.finetune(labels=path, root=classes_root, out=tmp_path / "m", **FAST)
    assert not (tmp_path / "m").exists()


def test_labels_csv_with_unknown_or_missing_columns(tmp_path, classes_root, no_training):
    path = write_csv(tmp_path / "a.csv", ["path", "label", "colour"], [["class0/img0.jpg", "a", "red"]])
    with pytest.raises(SimsearchError, match=r"unknown column.*colour"):
        simsearch.finetune(labels=path, root=classes_root, out=tmp_path / "m", **FAST)
    path = write_csv(tmp_path / "b.csv", ["file", "class"], [["class0/img0.jpg", "a"]])
    with pytest.raises(SimsearchError, match="needs a header with columns label,path"):
        simsearch.finetune(labels=path, root=classes_root, out=tmp_path / "m", **FAST)


def test_single_class_and_too_few_images(tmp_path, classes_root, no_training):
    one = write_csv(tmp_path / "one.csv", ["path", "label"], [[f"class0/img{i}.jpg", "a"] for i in range(6)])
    with pytest.raises(SimsearchError, match="single class"):
        simsearch.finetune(labels=one, root=classes_root, out=tmp_path / "m", **FAST)
    few = write_csv(tmp_path / "few.csv", ["path", "label"], [["class0/img0.jpg", "a"], ["class1/img0.jpg", "b"]])
    with pytest.raises(SimsearchError, match="too few"):
        simsearch.finetune(labels=few, root=classes_root, out=tmp_path / "m", **FAST)
    three = write_csv(
        tmp_path / "three.csv", ["path", "label"], [[f"class{c}/img{i}.jpg", c] for c in range(3) for i in range(3)]
    )
    with pytest.raises(SimsearchError, match="too few classes to hold some out"):
        simsearch.finetune(labels=three, root=classes_root, out=tmp_path / "m", **FAST)


def test_bad_pairs_csv(tmp_path, classes_root, no_training):
    bad = write_csv(tmp_path / "p.csv", ["left", "right", "label"], [["class0/img0.jpg", "class0/img1.jpg", "maybe"]])
    with pytest.raises(SimsearchError, match="line 2: label must be 1"):
        simsearch.finetune(pairs=bad, root=classes_root, out=tmp_path / "m", **FAST)
    neg = write_csv(tmp_path / "n.csv", ["left", "right", "label"], [["class0/img0.jpg", "class1/img1.jpg", 0]])
    with pytest.raises(SimsearchError, match="no similar pairs"):
        simsearch.finetune(pairs=neg, root=classes_root, out=tmp_path / "m", **FAST)
    miss = write_csv(tmp_path / "m.csv", ["left", "right", "label"], [["class0/img0.jpg", "gone.jpg", 1]])
    with pytest.raises(SimsearchError, match="not found"):
        simsearch.finetune(pairs=miss, root=classes_root, out=tmp_path / "m", **FAST)
    with pytest.raises(SimsearchError, match="proxy_anchor needs class labels"):
        ok = [[f"class{c}/img{i}.jpg", f"class{c}/img{i + 1}.jpg", 1] for c in range(6) for i in range(5)]
        simsearch.finetune(
            pairs=write_csv(tmp_path / "ok.csv", ["left", "right", "label"], ok), root=classes_root,
            out=tmp_path / "m2", loss="proxy_anchor", **FAST,
        )  # fmt: skip


def test_split_column_selects_train_and_val_rows(tmp_path, classes_root):
    rows = [[f"class{c}/img{i}.jpg", f"c{c}", ["train", "train", "train", "val", "val", "test"][i]]
            for c in range(6) for i in range(6)]  # fmt: skip
    path = write_csv(tmp_path / "l.csv", ["path", "label", "split"], rows)
    data = ftdata.load_training_data(labels=path, root=classes_root)
    assert len(data.train) == 18 and len(data.val) == 12 and data.source["validation"] == "explicit"
    sub = ftdata.load_training_data(labels=path, root=classes_root, classes="first-half", exclude_labels=["c0"])
    assert sorted({sub.group_names[g] for g in sub.groups}) == ["c1", "c2"]


def test_holdout_by_classes_keeps_validation_classes_unseen(classes_root):
    data = ftdata.load_training_data(classes_root, holdout="classes", val_fraction=0.3)
    assert not set(data.groups[data.train]) & set(data.groups[data.val])
    data = ftdata.load_training_data(classes_root, holdout="images", val_fraction=0.3)
    assert set(data.groups[data.val]) <= set(data.groups[data.train]) and not set(data.train) & set(data.val)


# ----------------------------------------------------------------------------- losses


def _clustered(n_classes=4, per=4, dim=8, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g)
    x = centers.repeat_interleave(per, 0) + spread * torch.randn(n_classes * per, dim, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per)
    return x, labels


@pytest.mark.parametrize("name", ["multi_similarity", "contrastive", "proxy_anchor"])
def test_losses_separate_classes(name):
    x, labels = _clustered(spread=2.0)
    layer = torch.nn.Linear(8, 8)
    proxies = losses.ProxyAnchor(4, 8) if name == "proxy_anchor" else None
    params = list(layer.parameters()) + (list(proxies.parameters()) if proxies else [])
    opt = torch.optim.Adam(params, lr=0.05)
    pos, neg = labels[:, None] == labels[None, :], labels[:, None] != labels[None, :]

    def loss_fn():
        emb = torch.nn.functional.normalize(layer(x), dim=1)
        if proxies is not None:
            return proxies(emb, labels)
        return getattr(losses, name)(emb, pos, neg)

    first = loss_fn().detach().item()
    for _ in range(60):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert loss_fn().detach().item() < 0.5 * first


def test_unknown_relations_are_ignored_and_drift_is_zero_for_the_frozen_embedding():
    emb = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    none = torch.zeros(6, 6, dtype=torch.bool)
    assert float(losses.multi_similarity(emb, none, none)) == 0.0
    assert float(losses.contrastive(emb, none, none)) == 0.0
    assert float(losses.similarity_drift(emb, emb)) == pytest.approx(0.0, abs=1e-7)


def test_importing_simsearch_does_not_import_the_training_stack():
    code = "import sys, simsearch; simsearch.finetune; print('torch' in sys.modules, 'simsearch.finetuning.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
