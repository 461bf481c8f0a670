"""Shared fixtures: a tiny random-weight backbone, the real bundled backbone, synthetic images and indexes.

Unit tests use ``tiny-test``: timm's ``test_efficientnet`` (pretrained=False, fixed seed) run at 64x64, registered
in simsearch's backbone registry so that indexes built with it can be reopened by name. Tests where the weights
matter use the real default backbone ``efficientnet_lite0``, built once per session.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import simsearch
from simsearch.backbones import l2_normalize
from simsearch.embed import TorchEngine

TINY = "tiny-test"
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "simsearch" / "sample"
CALTECH = REPO.parent / "shared" / "data" / "caltech101"

_tiny_cache: dict[str, simsearch.Backbone] = {}


def _tiny_factory() -> simsearch.Backbone:
    """Deterministic (seeded) random-weight EfficientNet, built once and then shared."""
    if TINY not in _tiny_cache:
        import torch

        torch.manual_seed(0)
        bb = simsearch.create_backbone("test_efficientnet", pretrained=False)
        cfg = dict(bb.data_config, input_size=[3, 64, 64], crop_pct=1.0)
        _tiny_cache[TINY] = dataclasses.replace(bb, name=TINY, data_config=cfg)
    return _tiny_cache[TINY]


@pytest.fixture(scope="session", autouse=True)
def _register_tiny_backbone():
    simsearch.register_backbone(TINY, _tiny_factory)
    yield


@pytest.fixture(scope="session")
def tiny_backbone(_register_tiny_backbone) -> simsearch.Backbone:
    return simsearch.create_backbone(TINY)


@pytest.fixture(scope="session")
def real_backbone() -> simsearch.Backbone:
    """The default backbone with its bundled ImageNet weights (loaded offline), once per session."""
    return simsearch.create_backbone(simsearch.DEFAULT_BACKBONE)


# ----------------------------------------------------------------------------- synthetic images


def pattern_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A smooth random colour pattern: different seeds give visibly different images."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.BICUBIC)


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (64, 48), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern_image(seed, size).save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", "") else None))
    return path


def write_solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


def write_bad_image(path: Path) -> Path:
    """A file with an image extension that is not an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


def write_truncated_jpeg(path: Path, seed: int = 0) -> Path:
    write_image(path, seed, size=(120, 90))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# The small labelled collection most tests index: relative path -> pattern seed (8 images, 3 labels).
LAYOUT = {
    "cats/c1.jpg": 1,
    "cats/c2.jpg": 2,
    "cats/c3.png": 3,
    "dogs/d1.jpg": 4,
    "dogs/d2.png": 5,
    "dogs/puppies/p1.jpg": 6,
    "birds/b1.jpg": 7,
    "birds/b2.jpg": 8,
}


def bump_mtime(path: Path) -> None:
    """Make sure a rewritten file's mtime differs from the indexed one even on coarse clocks."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """photos/{cats,dogs,birds}/*.jpg|png: 8 distinct pattern images in 3 labelled folders."""
    root = tmp_path / "photos"
    for rel, seed in LAYOUT.items():
        write_image(root / rel, seed)
    return root


# ----------------------------------------------------------------------------- engines


class CountingEngine:
    """Wraps an engine and counts the images it is asked to embed (proves what was, or was not, embedded)."""

    def __init__(self, inner):
        self.inner = inner
        self.images = 0
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        self.images += int(batch.shape[0])
        return self.inner(batch)


def color_vector(rgb, dim: int = 256) -> np.ndarray:
    """The unit vector :class:`ColorEngine` gives a solid ``rgb`` image: along (r, g, b, 0, ...)."""
    v = np.zeros(dim, np.float32)
    v[:3] = rgb
    return v / np.linalg.norm(v)


class ColorEngine:
    """Embeds an image as its mean RGB colour (undoing the backbone's normalisation), padded to ``dim``.

    Gives hand-checkable vectors: a solid (r, g, b) image becomes the unit vector along (r, g, b, 0, ...).
    """

    def __init__(self, backbone: simsearch.Backbone):
        self.dim = backbone.dim
        self.mean = np.asarray(backbone.data_config["mean"], np.float32)
        self.std = np.asarray(backbone.data_config["std"], np.float32)

    def __call__(self, batch):
        x = batch.float().mean(dim=(2, 3)).numpy() * self.std + self.mean
        out = np.zeros((len(x), self.dim), np.float32)
        out[:, :3] = x
        return l2_normalize(out)


@pytest.fixture
def counting_engine(tiny_backbone):
    """Factory: ``counting_engine()`` wraps the tiny backbone's torch engine, ``counting_engine(inner)`` any engine."""

    def make(inner=None):
        return CountingEngine(inner or TorchEngine(tiny_backbone))

    return make


# ----------------------------------------------------------------------------- indexes


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, _register_tiny_backbone):
    """A read-only index of the ``image_folder`` layout built with the tiny backbone (shared by a module); raw
    vectors only (``augment="none"``), so that searches are exact inner-product searches."""
    base = tmp_path_factory.mktemp("built")
    root = base / "photos"
    for rel, seed in LAYOUT.items():
        write_image(root / rel, seed)
    out = base / "index"
    simsearch.index.build_index([root], out, backbone=TINY, batch_size=4, workers=2, augment="none")
    idx = simsearch.open_index(out)
    yield idx
    idx.close()


COLORS = {
    "red/r1.png": (255, 0, 0),
    "red/r2.png": (230, 20, 0),
    "red/r3.png": (200, 0, 30),
    "green/g1.png": (0, 255, 0),
    "green/g2.png": (20, 230, 0),
    "green/g3.png": (0, 200, 30),
    "blue/b1.png": (0, 0, 255),
    "blue/b2.png": (0, 20, 230),
    "blue/b3.png": (30, 0, 200),
}


@pytest.fixture
def make_color_index(tmp_path, tiny_backbone):
    """Factory: an index of solid-colour images whose vectors are their colours (``ColorEngine``).

    ``make_color_index({"red/r1.png": (255, 0, 0), ...})``: results are predictable by hand (raw vectors only,
    unless ``augment`` is given).
    """
    opened = []

    def make(colors: dict[str, tuple[int, int, int]], name: str = "colors", augment: str = "none"):
        root = tmp_path / name
        for rel, rgb in colors.items():
            write_solid(root / rel, rgb)
        out = tmp_path / f"{name}-index"
        engine = ColorEngine(tiny_backbone)
        simsearch.index.build_index(
            [root], out, backbone=tiny_backbone, engine=engine, batch_size=4, workers=2, augment=augment
        )
        idx = simsearch.open_index(out, backbone=tiny_backbone, embedder_options={"engine": engine})
        opened.append(idx)
        return idx

    yield make
    for idx in opened:
        idx.close()


@pytest.fixture
def colors(make_color_index):
    """An index of :data:`COLORS` (three reds, greens and blues) built with :class:`ColorEngine`."""
    return make_color_index(COLORS)


@pytest.fixture
def color_index(make_color_index):
    return make_color_index(COLORS)


def copy_file(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst
