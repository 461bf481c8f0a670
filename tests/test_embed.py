"""The Embedder: decode → preprocess → batch → infer, in order, with bad files reported rather than raised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CountingEngine, pattern_image, write_bad_image, write_image, write_truncated_jpeg

from simsearch import Embedder, ImageError
from simsearch.embed import TorchEngine


@pytest.fixture
def files(tmp_path):
    return [write_image(tmp_path / f"img{i}.jpg", seed=i) for i in range(5)]


def test_vectors_are_unit_length_float32(tiny_backbone, files):
    v = Embedder(tiny_backbone, batch_size=2, workers=2).embed(files)
    assert v.shape == (5, tiny_backbone.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[~np.eye(5, dtype=bool)].max() < 0.999  # different images, different vectors


def test_batch_equals_one_by_one(tiny_backbone, files):
    e = Embedder(tiny_backbone, batch_size=3, workers=2)
    batch = e.embed(files)
    single = np.vstack([e.embed([f]) for f in files])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    big = Embedder(tiny_backbone, batch_size=64, workers=1).embed(files)
    np.testing.assert_allclose(batch, big, atol=1e-5)


def test_same_image_same_vector_whatever_the_source(tiny_backbone, files):
    from PIL import Image

    e = Embedder(tiny_backbone, workers=1)
    v = e.embed([files[0], str(files[0]), files[0].read_bytes(), Image.open(files[0])])
    np.testing.assert_allclose(v, np.repeat(v[:1], 4, axis=0), atol=1e-6)


def test_embed_raises_image_error_on_a_bad_file(tiny_backbone, files, tmp_path):
    bad = write_bad_image(tmp_path / "bad.jpg")
    with pytest.raises(ImageError, match=r"bad\.jpg"):
        Embedder(tiny_backbone, workers=1).embed([files[0], bad])


def test_embed_nothing(tiny_backbone):
    assert Embedder(tiny_backbone).embed([]).shape == (0, tiny_backbone.dim)


def test_embed_files_reports_bad_files_and_keeps_order(tiny_backbone, files, tmp_path):
    bad = write_bad_image(tmp_path / "bad.jpg")
    cut = write_truncated_jpeg(tmp_path / "cut.jpg")
    missing = tmp_path / "gone.jpg"
    items = [files[0], bad, files[1], files[2], cut, files[3], missing, files[4]]
    engine = CountingEngine(TorchEngine(tiny_backbone))
    e = Embedder(tiny_backbone, engine=engine, batch_size=2, workers=3)
    batches = list(e.embed_files(items))
    good = [it for b in batches for it in b.items]
    skipped = [s for b in batches for s in b.skipped]
    assert good == files  # input order, bad ones left out
    assert [path for path, _ in skipped] == [bad, cut, missing]
    reasons = dict(skipped)
    assert "not an image" in reasons[bad]
    assert "not found" in reasons[missing]
    assert all(reason for reason in reasons.values())
    assert engine.images == 5  # only decodable images reach the model
    assert all(len(b.items) <= 2 and len(b.vectors) == len(b.items) for b in batches)
    vectors = np.vstack([b.vectors for b in batches])
    np.testing.assert_allclose(vectors, Embedder(tiny_backbone, workers=1).embed(files), atol=1e-5)


def test_embed_files_with_path_of_and_only_bad_files(tiny_backbone, tmp_path, files):
    rows = [("a", files[1]), ("b", files[0])]
    batches = list(Embedder(tiny_backbone, batch_size=8).embed_files(rows, path_of=lambda r: r[1]))
    assert [b.items for b in batches] == [rows]
    np.testing.assert_allclose(batches[0].vectors, Embedder(tiny_backbone).embed([files[1], files[0]]), atol=1e-5)
    bad = [write_bad_image(tmp_path / f"bad{i}.png") for i in range(3)]
    only_bad = list(Embedder(tiny_backbone, batch_size=2).embed_files(bad))
    assert [s[0] for b in only_bad for s in b.skipped] == bad
    assert all(b.vectors.shape == (0, tiny_backbone.dim) for b in only_bad)
    assert list(Embedder(tiny_backbone).embed_files([])) == []


def test_many_files_stream_in_order(tiny_backbone, tmp_path):
    """More files than the decode window: order and count still exact."""
    paths = [write_image(tmp_path / f"{i:02d}.png", seed=100 + i, size=(24, 24)) for i in range(23)]
    e = Embedder(tiny_backbone, batch_size=4, workers=2)
    batches = list(e.embed_files(paths))
    assert [p for b in batches for p in b.items] == paths
    assert [len(b.items) for b in batches] == [4, 4, 4, 4, 4, 3]


def test_pixel_limit_is_applied(tiny_backbone, tmp_path):
    big = write_image(tmp_path / "big.png", size=(200, 100))
    small = write_image(tmp_path / "small.png", size=(20, 10))
    e = Embedder(tiny_backbone, max_pixels=10_000)
    batches = list(e.embed_files([big, small]))
    assert [b.items for b in batches] == [[small]]
    assert "pixel limit" in batches[0].skipped[0][1]


def test_preprocess_uses_the_backbone_transform(tiny_backbone):
    x = Embedder(tiny_backbone).preprocess(pattern_image(1, size=(300, 100)))
    assert tuple(x.shape) == (3, 64, 64)
    assert x.dtype == torch.float32


def test_torch_engine_precision(tiny_backbone):
    with pytest.raises(ValueError, match="precision"):
        TorchEngine(tiny_backbone, precision="fp8")
    e32, e16 = Embedder(tiny_backbone), Embedder(tiny_backbone, engine=TorchEngine(tiny_backbone, "bf16"))
    imgs = [pattern_image(i) for i in range(3)]
    a, b = e32.embed(imgs), e16.embed(imgs)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
    assert (np.sum(a * b, axis=1) > 0.97).all()  # bf16 approximates fp32
