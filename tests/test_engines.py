"""Inference engines (issue 4): OpenVINO and torch behind one interface, run-time detection, faithfulness to the
fp32 torch reference, draft JPEG decoding, the async pipeline, and index-time == query-time embedding."""

from __future__ import annotations

import importlib.util
import io
import json

import numpy as np
import pytest
import torch
from conftest import SAMPLE, TINY, CountingEngine, pattern_image, write_bad_image, write_image
from PIL import Image, ImageFilter

import simsearch
from simsearch import engines
from simsearch.config.embedding import EmbeddingSettings
from simsearch.embed import Embedder, recorded_settings
from simsearch.engines import NumpyTransform, TorchEngine, create_engine
from simsearch.engines import cache as ir_cache
from simsearch.engines import openvino as ov_engine
from simsearch.errors import SimsearchError
from simsearch.images import draft_size_for, load_image
from simsearch.index import MANIFEST, build_index

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None and engines.openvino_available()
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed or sees no CPU")

SAMPLE_PHOTOS = sorted(SAMPLE.glob("*/*.jpg"))


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def assert_faithful(v: np.ndarray, ref: np.ndarray, median: float = 0.999, minimum: float = 0.98) -> None:
    c = cos(v, ref)
    assert np.median(c) >= median and c.min() >= minimum, f"cosine median {np.median(c):.5f}, min {c.min():.5f}"


def unit(v: np.ndarray) -> None:
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)


@pytest.fixture(scope="module")
def reference(real_backbone):
    """fp32 torch NCHW vectors of the sample photos, full decoding: the reference pipeline."""
    e = Embedder(real_backbone, engine=TorchEngine(real_backbone, "fp32", channels_last=False), workers=2)
    return e.embed(SAMPLE_PHOTOS)


@pytest.fixture(scope="module")
def ov_real(real_backbone):
    if not HAVE_OPENVINO:
        pytest.skip("openvino is not installed")
    return create_engine(real_backbone, "openvino", "fp32")


# ----------------------------------------------------------------------------- detection


def test_detection_gives_valid_choices():
    assert engines.cpu_count() >= 1
    assert engines.resolve_engine("auto") in ("openvino", "torch")
    assert engines.resolve_engine("auto") == ("openvino" if HAVE_OPENVINO else "torch")
    for name in ("openvino", "torch"):
        assert engines.resolve_precision(name, "auto") in ("fp32", "bf16")
        assert engines.resolve_precision(name, "fp32") == "fp32"
    assert engines.resolve_precision("torch", "auto") == ("bf16" if engines.cpu_has_bf16() else "fp32")
    with pytest.raises(ValueError, match="engine"):
        engines.resolve_engine("tensorrt")
    with pytest.raises(ValueError, match="precision"):
        engines.resolve_precision("torch", "fp8")


def test_auto_engine_is_usable(tiny_backbone):
    e = create_engine(tiny_backbone)
    assert e.name == engines.resolve_engine("auto")
    assert e.settings() == {"engine": e.name, "precision": e.precision}
    assert e.precision in ("fp32", "bf16") and e.batch_size >= 1
    x = torch.randn(3, 3, 64, 64)
    v = e(x)
    assert v.shape == (3, tiny_backbone.dim)
    unit(v)


def test_torch_engine_takes_tensors_and_arrays(tiny_backbone):
    e = TorchEngine(tiny_backbone, "fp32")
    x = torch.randn(2, 3, 64, 64)
    v = e(x)
    unit(v)
    np.testing.assert_allclose(e(x.numpy()), v, atol=1e-6)
    assert e(x[:0]).shape == (0, tiny_backbone.dim)


def test_engine_errors(tiny_backbone, monkeypatch):
    with pytest.raises(ValueError, match="engine"):
        create_engine(tiny_backbone, "onnx")
    monkeypatch.setattr(ov_engine, "OpenVINOEngine", _broken_engine)
    monkeypatch.setattr(ov_engine, "openvino_available", lambda: True)
    assert create_engine(tiny_backbone, "auto").name == "torch"  # auto falls back
    with pytest.raises(simsearch.BackboneError, match="OpenVINO"):
        create_engine(tiny_backbone, "openvino")  # explicit does not
    assert create_engine(tiny_backbone, "openvino", fallback=True).name == "torch"


def _broken_engine(*args, **kwargs):
    raise RuntimeError("conversion failed")


def test_a_registered_engine_is_made_by_name_with_its_options(image_folder, tmp_path, monkeypatch):
    from simsearch.engines import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # restored after the test
    made = []

    class Tagged(TorchEngine):
        name = "tagged"

    def factory(backbone, precision, batch_size, **options):
        made.append((precision, batch_size, options))
        return Tagged(backbone, precision, batch_size)

    engines.register_engine("tagged", factory)
    assert "tagged" in engines.list_engines()
    with pytest.raises(ValueError, match="already registered"):
        engines.register_engine("tagged", factory)
    with pytest.raises(ValueError, match="auto"):
        engines.register_engine("auto", factory)
    out = tmp_path / "index"
    r = build_index(
        [image_folder], out, backbone=TINY, engine="tagged", precision="fp32", batch_size=3,
        engine_options={"flavour": "x"},
    )  # fmt: skip
    assert made == [("fp32", 3, {"flavour": "x"})]
    assert r.embedding == {"engine": "tagged", "precision": "fp32", "draft": True}
    with simsearch.open_index(out) as idx:
        assert idx.embedder.engine.name == "tagged"  # query time makes the recorded engine by name


# ----------------------------------------------------------------------------- OpenVINO


@needs_openvino
def test_openvino_matches_torch_on_random_inputs(tiny_backbone):
    ov = create_engine(tiny_backbone, "openvino", "fp32")
    assert ov.name == "openvino" and ov.precision == "fp32"
    x = torch.randn(5, 3, 64, 64)
    v = ov(x)
    unit(v)
    np.testing.assert_allclose(v, TorchEngine(tiny_backbone, "fp32")(x), atol=1e-4)
    assert ov(x[:0]).shape == (0, tiny_backbone.dim)


@needs_openvino
def test_openvino_stream_keeps_order(tiny_backbone):
    ov = create_engine(tiny_backbone, "openvino", "fp32")
    batches = [torch.randn(n, 3, 64, 64) for n in (4, 1, 3, 4, 2, 4)]
    batches.insert(2, None)  # a batch whose images all failed to decode
    out = list(ov.stream((f"k{i}", b) for i, b in enumerate(batches)))
    assert [k for k, _ in out] == [f"k{i}" for i in range(len(batches))]
    for (_, v), b in zip(out, batches, strict=True):
        if b is None:
            assert v.shape == (0, tiny_backbone.dim)
        else:
            np.testing.assert_allclose(v, ov(b), atol=1e-5)


@needs_openvino
def test_openvino_model_is_cached_on_disk(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    first = create_engine(tiny_backbone, "openvino", "fp32")
    assert list((tmp_path / "cache" / "openvino").glob("*/model.xml"))
    x = torch.randn(2, 3, 64, 64)

    def no_conversion(*a, **k):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(ir_cache, "convert", no_conversion)
    second = create_engine(tiny_backbone, "openvino", "fp32")
    np.testing.assert_allclose(second(x), first(x), atol=1e-6)


@needs_openvino
def test_openvino_on_real_photos_is_faithful(real_backbone, reference, ov_real):
    v = Embedder(real_backbone, engine=ov_real, workers=2).embed(SAMPLE_PHOTOS)
    unit(v)
    assert_faithful(v, reference, median=0.9999, minimum=0.999)  # fp32: the same up to rounding


@needs_openvino
@pytest.mark.skipif(not engines.openvino_has_bf16(), reason="no native bf16 on this CPU")
def test_openvino_bf16_on_real_photos_is_faithful(real_backbone, reference):
    ov = create_engine(real_backbone, "openvino", "bf16")
    assert ov.precision == "bf16"
    assert_faithful(Embedder(real_backbone, engine=ov, workers=2).embed(SAMPLE_PHOTOS), reference)


@pytest.mark.skipif(not engines.cpu_has_bf16(), reason="no native bf16 on this CPU (emulated bf16 is very slow)")
def test_torch_bf16_on_real_photos_is_faithful(real_backbone, reference):
    e = Embedder(real_backbone, engine=TorchEngine(real_backbone, "bf16"), workers=2)
    assert_faithful(e.embed(SAMPLE_PHOTOS), reference)


def test_default_pipeline_on_real_photos_is_faithful(real_backbone, reference):
    """Whatever auto picks here (engine, precision) plus draft decoding stays within the bounds."""
    e = Embedder(real_backbone, engine="auto", precision="auto", draft=True, workers=2)
    v = np.vstack([b.vectors for b in e.embed_files(SAMPLE_PHOTOS)])
    unit(v)
    assert_faithful(v, reference)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    "cfg",
    [
        None,  # the default backbone's
        {"input_size": [3, 64, 64], "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center"},
        {"input_size": [3, 160, 160], "interpolation": "bilinear", "crop_pct": 0.95, "crop_mode": "squash"},
    ],
)
def test_numpy_transform_equals_the_timm_transform(cfg, real_backbone):
    from timm.data import create_transform

    cfg = real_backbone.data_config if cfg is None else {**cfg, "mean": [0.485, 0.456, 0.406], "std": [0.229] * 3}
    timm_t, np_t = create_transform(**cfg, is_training=False), NumpyTransform.for_config(cfg)
    assert np_t is not None
    rng = np.random.default_rng(0)
    imgs = [Image.open(p).convert("RGB") for p in SAMPLE_PHOTOS[:4]]
    for w, h in [(300, 100), (100, 300), (50, 40), (257, 256), (1, 500), (225, 224), (223, 500)]:
        imgs.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    for img in imgs:
        np.testing.assert_array_equal(np_t(img), timm_t(img).numpy())
    assert NumpyTransform.for_config({**cfg, "crop_mode": "border"}) is None


# ----------------------------------------------------------------------------- draft decoding


def big_textured_jpeg(path, scale: int = 4) -> bytes:
    """A large JPEG with fine detail (a sample photo upscaled, sharpened, with noise): the hard case for draft."""
    rng = np.random.default_rng(len(str(path)))
    with Image.open(path) as im:
        big = im.convert("RGB").resize((im.width * scale, im.height * scale), Image.LANCZOS)
    big = big.filter(ImageFilter.UnsharpMask(4, 150, 2))
    a = np.asarray(big).astype(np.int16) + rng.normal(0, 8, (big.height, big.width, 1)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_draft_size_follows_the_transform(real_backbone):
    assert draft_size_for(real_backbone.data_config) == 2 * 256  # 224 / 0.875 = 256, with a 2x margin
    assert draft_size_for({"input_size": [3, 64, 64], "crop_pct": 1.0}) == 128
    assert draft_size_for({"input_size": [3, 64, 64], "crop_pct": 1.0, "crop_border_pixels": 2}) is None


def test_draft_decodes_smaller_but_not_below_the_target(real_backbone):
    blob = big_textured_jpeg(SAMPLE_PHOTOS[0])
    size = draft_size_for(real_backbone.data_config)
    full, small = load_image(blob), load_image(blob, draft_size=size)
    assert min(small.size) >= size and small.width < full.width
    photo = SAMPLE_PHOTOS[0]  # small photos decode in full, unchanged
    np.testing.assert_array_equal(np.asarray(load_image(photo, draft_size=size)), np.asarray(load_image(photo)))


def test_draft_decoding_is_faithful(real_backbone):
    blobs = [big_textured_jpeg(p) for p in SAMPLE_PHOTOS[::4]]
    engine = TorchEngine(real_backbone, "fp32")
    full = Embedder(real_backbone, engine=engine, workers=2).embed(blobs)
    draft = Embedder(real_backbone, engine=engine, workers=2, draft=True).embed(blobs)
    assert_faithful(draft, full)


# ----------------------------------------------------------------------------- the pipeline


@needs_openvino
def test_embed_files_with_the_async_engine_keeps_order_and_skips(tiny_backbone, tmp_path):
    files = [write_image(tmp_path / f"img{i}.jpg", seed=i) for i in range(9)]
    bad, missing = write_bad_image(tmp_path / "bad.jpg"), tmp_path / "gone.jpg"
    items = [files[0], bad, *files[1:5], missing, *files[5:]]
    e = Embedder(tiny_backbone, engine="openvino", precision="fp32", batch_size=2, workers=3, draft=True)
    assert hasattr(e.engine, "stream")
    batches = list(e.embed_files(items))
    assert [it for b in batches for it in b.items] == files
    assert [s for b in batches for s, _ in b.skipped] == [bad, missing]
    assert all(len(b.vectors) == len(b.items) <= 2 for b in batches)
    vectors = np.vstack([b.vectors for b in batches])
    unit(vectors)
    ref = Embedder(tiny_backbone, workers=1).embed(files)  # fp32 torch, one by one
    np.testing.assert_allclose(vectors, ref, atol=1e-4)
    np.testing.assert_allclose(e.embed(files), vectors, atol=1e-5)  # embed() streams several batches too
    only_bad = list(e.embed_files([bad, missing]))
    assert [s for b in only_bad for s, _ in b.skipped] == [bad, missing]
    assert all(b.vectors.shape == (0, tiny_backbone.dim) for b in only_bad)


def test_embed_files_with_a_plain_callable_engine(tiny_backbone, tmp_path):
    files = [write_image(tmp_path / f"img{i}.png", seed=i, size=(24, 24)) for i in range(7)]
    engine = CountingEngine(create_engine(tiny_backbone, "auto", "fp32"))  # no stream(): synchronous calls
    batches = list(Embedder(tiny_backbone, engine=engine, batch_size=3, workers=2).embed_files(files))
    assert [p for b in batches for p in b.items] == files and engine.images == 7 and engine.calls == 3


def test_embedder_batch_size_defaults_to_the_engine(tiny_backbone):
    assert Embedder(tiny_backbone).batch_size == 32
    e = Embedder(tiny_backbone, engine="auto", precision="fp32")
    assert e.batch_size == e.engine.batch_size
    assert Embedder(tiny_backbone, engine="torch", batch_size=5).batch_size == 5
    settings = Embedder(tiny_backbone, engine="torch", precision="fp32", draft=True).settings()
    assert settings == EmbeddingSettings(engine="torch", precision="fp32", draft=True)


# ----------------------------------------------------------------------------- index time == query time


def test_index_time_and_query_time_vectors_agree(real_backbone, tmp_path):
    """Real photos, default settings: a new Index object (fresh embedder, torch-free when the OpenVINO model is
    cached) embeds an indexed file to the vector stored for it; the backbone check still passes."""
    folder = SAMPLE / "flowers"
    out = tmp_path / "flowers-index"
    report = build_index([folder], out, backbone=real_backbone)
    settings = json.loads((out / MANIFEST).read_text())["extra"]["embedding"]
    assert settings == report.embedding and settings["draft"] is True
    assert settings["engine"] == engines.resolve_engine("auto")
    files = sorted(folder.glob("*.jpg"))
    with simsearch.open_index(out) as idx:
        stored = np.vstack([idx.vector(idx.id_for_path(f)) for f in files])
        fresh = idx.embed([Image.open(f) for f in files])  # images, so they are embedded, not looked up
        assert idx.embedder.settings().to_dict() == settings
        np.testing.assert_allclose(fresh, stored, atol=1e-5)
        idx.set_backbone(real_backbone)  # the manifest's weights digest and preprocessing check passes
        np.testing.assert_allclose(idx.embed([Image.open(f) for f in files]), stored, atol=1e-5)
        copy = tmp_path / "copy.jpg"
        copy.write_bytes(files[0].read_bytes())
        top = idx.search(copy, k=1)[0]
        assert top.path == files[0].name and top.score > 0.9999


def test_query_uses_the_settings_recorded_at_index_time(image_folder, tmp_path):
    out = tmp_path / "index"
    build_index([image_folder], out, backbone=TINY, engine="torch", precision="fp32", draft=False, batch_size=4)
    m = json.loads((out / MANIFEST).read_text())
    assert m["extra"]["embedding"] == {"engine": "torch", "precision": "fp32", "draft": False}
    with simsearch.open_index(out) as idx:
        assert idx.embedder.settings().to_dict() == {"engine": "torch", "precision": "fp32", "draft": False}
        some = next(iter(idx.items()))
        np.testing.assert_allclose(idx.embed([Image.open(some.abspath)])[0], idx.vector(some.id), atol=1e-5)
    # an update keeps them (auto = the recorded ones); explicitly different ones are refused
    write_image(image_folder / "cats" / "c9.jpg", seed=99)
    assert build_index([image_folder], out, backbone=TINY).embedding["engine"] == "torch"
    write_image(image_folder / "cats" / "c10.jpg", seed=100)
    other = "openvino" if HAVE_OPENVINO else None
    if other:
        with pytest.raises(SimsearchError, match="engine torch"):
            build_index([image_folder], out, backbone=TINY, engine=other)
    with pytest.raises(SimsearchError, match="--draft"):
        build_index([image_folder], out, backbone=TINY, draft=True)


def test_indexes_without_recorded_settings_use_the_reference(image_folder, tmp_path):
    out = tmp_path / "index"
    build_index([image_folder], out, backbone=TINY, batch_size=4)
    m = json.loads((out / MANIFEST).read_text())
    del m["extra"]["embedding"]  # as written before the settings were recorded
    (out / MANIFEST).write_text(json.dumps(m))
    assert recorded_settings(m["extra"], m["count"]) == EmbeddingSettings("torch", "fp32", draft=False)
    assert recorded_settings({}, 0) is None
    with simsearch.open_index(out) as idx:
        assert idx.embedder.settings() == EmbeddingSettings("torch", "fp32", draft=False)


def test_an_index_of_a_precision_this_version_does_not_know_says_upgrade(image_folder, tmp_path):
    from click.testing import CliRunner

    from simsearch.cli import main

    out = tmp_path / "index"
    build_index([image_folder], out, backbone=TINY, engine="torch", precision="fp32", batch_size=4)
    m = json.loads((out / MANIFEST).read_text())
    m["extra"]["embedding"]["precision"] = "int4"  # as a newer simsearch could write
    (out / MANIFEST).write_text(json.dumps(m))
    new = image_folder / "cats" / "c9.jpg"
    write_image(new, seed=99)
    for args in (["index", str(image_folder), "--out", str(out), "--backbone", TINY], ["query", str(out), str(new)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and "newer simsearch" in r.output and "Upgrade simsearch" in r.output, r.output
        assert "'int4'" in r.output and len(r.output.strip().splitlines()) == 1, r.output  # one line, no traceback
    r = CliRunner().invoke(main, ["info", str(out)])  # reading it needs no embedding
    assert r.exit_code == 0 and "int4" in r.output, r.output


def test_cli_engine_options(image_folder, tmp_path):
    from click.testing import CliRunner

    from simsearch.cli import main

    out = tmp_path / "index"
    args = ["index", str(image_folder), "--out", str(out), "--backbone", TINY, "--engine", "torch"]
    r = CliRunner().invoke(main, [*args, "--precision", "fp32", "--batch-size", "3", "--no-draft", "-q"])
    assert r.exit_code == 0, r.output
    assert "torch fp32" in r.output
    assert json.loads((out / MANIFEST).read_text())["extra"]["embedding"]["engine"] == "torch"
    r = CliRunner().invoke(main, ["info", str(out)])
    assert r.exit_code == 0 and "embedding: torch fp32, full decoding" in r.output, r.output
    r = CliRunner().invoke(main, ["index", str(image_folder), "--out", str(out), "--precision", "fp8"])
    assert r.exit_code != 0 and "fp8" in r.output


def test_pattern_images_embed_with_every_available_engine(tiny_backbone):
    imgs = [pattern_image(i) for i in range(4)]
    ref = Embedder(tiny_backbone).embed(imgs)
    names = ["torch"] + (["openvino"] if HAVE_OPENVINO else [])
    for name in names:
        v = Embedder(tiny_backbone, engine=name, precision="fp32").embed(imgs)
        unit(v)
        assert cos(v, ref).min() > 0.9999, name


@needs_openvino
def test_weights_changed_in_place_are_converted_not_taken_from_the_cache(tiny_backbone, tmp_path, monkeypatch):
    import copy
    import dataclasses

    monkeypatch.setenv("SIMSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    bb = dataclasses.replace(tiny_backbone, model=copy.deepcopy(tiny_backbone.model))
    create_engine(bb, "openvino", "fp32")  # caches the model under the weights' digest
    with torch.no_grad():
        for p in bb.model.parameters():
            p.mul_(0.5)  # e.g. trained in this process after the backbone was created
    x = torch.randn(2, 3, 64, 64)
    ov = create_engine(bb, "openvino", "fp32")
    np.testing.assert_allclose(ov(x), TorchEngine(bb, "fp32")(x), atol=1e-4)
    assert len(list((tmp_path / "cache" / "openvino").glob("*/model.xml"))) == 1
