"""Helpers for the scale tests: many tiny image files whose "embeddings" are synthetic clustered vectors.

``VectorEmbedder`` stands in for :class:`simsearch.embed.Embedder` in ``build_index(embedder=...)``: it never decodes
anything and returns, for each file, a deterministic unit vector (a function of the file name) near one of a few
cluster centres. That lets tests build indexes of thousands of items in well under a second each.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from simsearch.backbones import l2_normalize
from simsearch.config.embedding import EmbeddingSettings
from simsearch.embed import EmbeddedBatch


def _tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buf, "JPEG")
    return buf.getvalue()


TINY_JPEG = _tiny_jpeg()  # every test file is a copy (the fake embedder never decodes it)


def write_files(root: Path, n: int, classes: int = 10, start: int = 0) -> list[Path]:
    """``n`` tiny JPEG files ``root/c{k}/img{i:06d}.jpg`` spread over ``classes`` folders."""
    out = []
    for i in range(start, start + n):
        p = root / f"c{i % classes}" / f"img{i:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(TINY_JPEG)
        out.append(p)
    return out


def centres(dim: int, clusters: int = 10, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32))


def vector_for(path: Path, dim: int, noise: float = 0.3, salt: str = "") -> np.ndarray:
    """Deterministic unit vector for a file: its folder's cluster centre, one of 20 sub-centres picked by the
    file name, plus name-seeded noise (so neighbours are structured, as with real embeddings). ``copy-of-NAME``
    gets the vector of ``NAME`` in the same folder (an exact duplicate)."""
    c = centres(dim)
    k = int(path.parent.name[1:]) % len(c) if path.parent.name[1:].isdigit() else 0
    name = path.name.removeprefix("copy-of-")  # a copy has the same vector as its original
    h = zlib.crc32(name.encode())
    sub = np.random.default_rng(1000 + 20 * k + h % 20).standard_normal(dim).astype(np.float32) / np.sqrt(dim)
    rng = np.random.default_rng(zlib.crc32((name + salt).encode()))
    v = c[k] + 0.7 * sub + noise * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
    return l2_normalize(v.astype(np.float32))


class VectorEmbedder:
    """A fake embedder: synthetic vectors per file name (``salt`` changes every vector, like a re-encoded file)."""

    def __init__(self, backbone, salt: str = "", batch_size: int = 512):
        self.backbone = backbone
        self.salt = salt
        self.batch_size = batch_size
        self.embedded = 0

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def settings(self) -> EmbeddingSettings:
        return EmbeddingSettings(engine="torch", precision="fp32", draft=False)

    def embed(self, sources):
        return np.stack([vector_for(Path(s), self.dim, salt=self.salt) for s in sources])

    def embed_files(self, items, *, path_of=lambda x: x, progress=False, desc="embedding"):
        for s in range(0, len(items), self.batch_size):
            part = list(items[s : s + self.batch_size])
            self.embedded += len(part)
            vecs = np.stack([vector_for(Path(path_of(it)), self.dim, salt=self.salt) for it in part])
            yield EmbeddedBatch(items=part, vectors=vecs, skipped=[])
