"""Test helpers for issue 5 ("never lose an index"): a corpus of bad and odd files made at test time, and a
tiny checkpoint backbone that subprocesses (the real ``simsearch`` command) can load from disk.

``make_corpus(root)`` writes, next to good images, every kind of file a real collection throws at an indexer
and returns a :class:`Corpus` saying what must happen to each: indexed (``good``), skipped with a reason
(``bad``: relpath -> a word the reason must contain) or silently ignored as not an image (``ignored``).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Corpus:
    root: Path
    outside: Path  # a folder beside the root that symlinks point into
    good: dict[str, str] = field(default_factory=dict)  # relpath -> kind
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)  # relpath -> (kind, word in the reason)
    ignored: dict[str, str] = field(default_factory=dict)  # not images: neither indexed nor reported
    notes: list[str] = field(default_factory=list)  # sub-cases that could not be made here

    @property
    def kinds(self) -> set[str]:
        return set(self.good.values()) | {k for k, _ in self.bad.values()} | set(self.ignored.values())


def pattern(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A smooth random colour pattern (distinct per seed)."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.BICUBIC)


def asymmetric(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """An image whose orientation is obvious: a red block top-left on a blue-to-green gradient."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    arr = np.stack([np.zeros_like(x), x, 255 - x], axis=-1)
    arr[: h // 3, : w // 4] = (255, 0, 0)
    return Image.fromarray(arr.astype(np.uint8))


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kwargs)
    return buf.getvalue()


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 ("rotate 90° clockwise to display"): shows as ``upright``."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(stored, exif=exif.tobytes())


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of width x height pixels, all black, ~100 KB on disk.

    Decoded it would need ``width*height`` bytes (900 MB) and more as RGB; written row by row, so making it
    needs no memory either.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    rows_per_piece = max(1, (1 << 20) // len(row))
    parts = []
    for start in range(0, height, rows_per_piece):
        parts.append(comp.compress(row * min(rows_per_piece, height - start)))
    parts.append(comp.flush())
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _save(path: Path, img: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)


NON_UTF8_NAME = os.fsdecode(b"caf\xe9-latin1-\xff.jpg")  # lone surrogates: not valid UTF-8 on disk


def make_corpus(base: Path, *, unreadable: bool = True) -> Corpus:
    """Write the corpus under ``base/corpus`` (and ``base/outside`` for symlink targets)."""
    root, outside = base / "corpus", base / "outside"
    c = Corpus(root, outside)
    root.mkdir(parents=True)
    outside.mkdir(parents=True)

    # good plain images, next to the bad ones and in sub-folders
    for i in range(4):
        _save(root / f"good_{i}.jpg", pattern(i))
    _save(root / "sub" / "good_sub.png", pattern(10))
    _save(root / "sub" / "deeper" / "good_deep.jpg", pattern(11))
    c.good.update({f"good_{i}.jpg": "plain JPEG" for i in range(4)})
    c.good.update({"sub/good_sub.png": "plain PNG", "sub/deeper/good_deep.jpg": "plain JPEG"})

    # odd but valid images: all must be indexed
    arr16 = (np.linspace(0, 65535, 64 * 48, dtype=np.float64).reshape(48, 64)).astype(np.uint16)
    _save(root / "odd" / "gray16.png", Image.fromarray(arr16))
    c.good["odd/gray16.png"] = "16-bit grayscale PNG"
    _save(root / "odd" / "cmyk.jpg", pattern(20).convert("CMYK"), quality=90)
    c.good["odd/cmyk.jpg"] = "CMYK JPEG"
    pal = pattern(21).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    _save(root / "odd" / "palette_transparent.png", pal, transparency=0)
    c.good["odd/palette_transparent.png"] = "palette PNG with transparency"
    _save(root / "odd" / "la.png", pattern(22).convert("LA"))
    c.good["odd/la.png"] = "LA image"
    _write(root / "odd" / "exif_rotated.jpg", exif_rotated_jpeg(asymmetric()))
    c.good["odd/exif_rotated.jpg"] = "EXIF-rotated JPEG"
    frames = [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    (root / "odd").mkdir(exist_ok=True)
    frames[0].save(root / "odd" / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    c.good["odd/animated.gif"] = "animated GIF"
    _save(root / "odd" / "one_pixel.png", Image.new("RGB", (1, 1), (200, 30, 40)))
    c.good["odd/one_pixel.png"] = "1x1 image"
    _save(root / "odd" / "elongated_10000x10.png", pattern(23, (10000, 10)))
    c.good["odd/elongated_10000x10.png"] = "10000x10 image"
    _save(root / "odd" / "needle_100000x2.png", Image.new("RGB", (100000, 2), (10, 200, 10)))
    c.good["odd/needle_100000x2.png"] = "100000x2 image"
    _save(root / "odd" / "photo.webp", pattern(24), quality=80)
    c.good["odd/photo.webp"] = "WebP"
    _save(root / "odd" / "photo.tiff", pattern(25))
    c.good["odd/photo.tiff"] = "TIFF"
    _write(root / "odd" / "no_extension", jpeg_bytes(pattern(26)))
    c.good["odd/no_extension"] = "JPEG without extension"
    _save(root / "names" / "with spaces in it.jpg", pattern(27))
    c.good["names/with spaces in it.jpg"] = "name with spaces"
    _save(root / "names" / "café ☕ 猫 ü.jpg", pattern(28))
    c.good["names/café ☕ 猫 ü.jpg"] = "unicode name"
    _save(root / "names" / NON_UTF8_NAME, pattern(29), format="JPEG")
    c.good[f"names/{NON_UTF8_NAME}"] = "non-UTF-8 name"
    _save(root / "x.jpg" / "inside_dir_named_x.jpg", pattern(30))  # a directory named x.jpg
    c.good["x.jpg/inside_dir_named_x.jpg"] = "directory named x.jpg"

    # bad files: each skipped with a one-line reason
    _write(root / "bad" / "empty.jpg", b"")
    c.bad["bad/empty.jpg"] = ("zero-byte file", "empty")
    full = jpeg_bytes(pattern(40, (200, 150)))
    _write(root / "bad" / "truncated.jpg", full[: len(full) // 2])
    c.bad["bad/truncated.jpg"] = ("truncated JPEG", "truncated")
    _write(root / "bad" / "random.jpg", np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    c.bad["bad/random.jpg"] = ("random bytes .jpg", "not an image")
    _write(root / "bad" / "text.png", b"just some text, not a PNG\n" * 10)
    c.bad["bad/text.png"] = ("text file .png", "not an image")
    _write(root / "bad" / "page.jpg", b"<!DOCTYPE html>\n<html><body><img src='x.jpg'></body></html>\n")
    c.bad["bad/page.jpg"] = ("HTML saved as .jpg", "not an image")
    _write(root / "bad" / "bomb.png", png_bomb())
    c.bad["bad/bomb.png"] = ("decompression bomb 30000x30000", "pixel limit")
    if unreadable and not IS_ROOT:
        _save(root / "bad" / "no_permission.jpg", pattern(41))
        os.chmod(root / "bad" / "no_permission.jpg", 0)
        c.bad["bad/no_permission.jpg"] = ("file without read permission", "permission denied")
    elif unreadable:
        c.notes.append("no-read-permission file: running as root, which reads anything (tested as nobody instead)")
    os.symlink(root / "bad" / "does_not_exist.jpg", root / "bad" / "broken_link.jpg")
    c.bad["bad/broken_link.jpg"] = ("broken symlink", "broken symlink")
    os.symlink("self_loop.jpg", root / "bad" / "self_loop.jpg")
    c.bad["bad/self_loop.jpg"] = ("symlink loop (file)", "loop")
    os.symlink("..", root / "sub" / "loop_up")  # a folder loop: sub/loop_up -> corpus root
    c.bad["sub/loop_up"] = ("symlink loop in the folder tree", "symlink")
    _save(outside / "secret.jpg", pattern(42))
    os.symlink(outside / "secret.jpg", root / "bad" / "to_outside.jpg")
    c.bad["bad/to_outside.jpg"] = ("symlink to a file outside the root", "outside")
    os.symlink(outside, root / "bad" / "outside_dir")
    c.bad["bad/outside_dir"] = ("symlink to a folder outside the root", "outside")
    os.symlink("../good_0.jpg", root / "bad" / "alias.jpg")
    c.bad["bad/alias.jpg"] = ("symlink inside the root (not followed by default)", "not followed")

    # not images at all: ignored, not reported
    _write(root / "notes.txt", b"some notes\n")
    c.ignored["notes.txt"] = "text file"
    _write(root / "README", b"a text file without extension\n")
    c.ignored["README"] = "text file without extension"
    _write(root / ".hidden.jpg", jpeg_bytes(pattern(43)))
    c.ignored[".hidden.jpg"] = "hidden file"
    return c


# ------------------------------------------------------------------------------- a backbone on disk


def make_tiny_checkpoint(path: Path, input_size: int = 64, seed: int = 0) -> Path:
    """A checkpoint directory (``backbone.json`` + ``model.safetensors``) of timm's ``test_efficientnet``
    with random (seeded) weights: loads in any process with ``--backbone PATH``, embeds fast."""
    import timm
    import torch
    from safetensors.torch import save_file

    if (path / "model.safetensors").exists():
        return path
    torch.manual_seed(seed)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    data_config = {
        "input_size": [3, input_size, input_size],
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    (path / "backbone.json").write_text(json.dumps({"arch": "test_efficientnet", "data_config": data_config}))
    return path


def small_jpegs(
    root: Path, n: int, size: tuple[int, int] = (48, 36), start_seed: int = 1000, prefix: str = "img"
) -> list[str]:
    """``n`` distinct small JPEGs in a few sub-folders; returns their relative paths."""
    rels = []
    for i in range(n):
        rel = f"d{i % 7}/{prefix}_{i:04d}.jpg"
        _save(root / rel, pattern(start_seed + i, size), quality=85)
        rels.append(rel)
    return rels
