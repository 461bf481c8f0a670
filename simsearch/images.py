"""Finding and decoding images: recursive scan, content sniffing, EXIF orientation, RGB conversion."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

log = logging.getLogger("simsearch")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 100_000_000

# Leading bytes of the formats we index, for files whose name does not say what they are.
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)


@dataclass(frozen=True)
class ImageFileInfo:
    """One image found by :func:`scan`: where it is and its size/mtime (used to detect changes)."""

    root: Path
    relpath: str
    size: int
    mtime_ns: int

    @property
    def path(self) -> Path:
        return self.root / self.relpath


def sniff_image(path: Path) -> bool:
    """True when the file's first bytes look like a supported image format."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if head.startswith(_SIGNATURES):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def is_candidate(path: Path) -> bool:
    """A file worth trying to decode: a known image extension, or no known extension but image content."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return True
    return sniff_image(path)


def scan(roots: Iterable[str | Path], *, follow_symlinks: bool = False) -> Iterator[ImageFileInfo]:
    """Yield every candidate image under ``roots`` (recursively), in sorted, deterministic order.

    Hidden files and folders (starting with ``.``) are skipped. Symlinks are not followed unless asked,
    and never out of a loop.
    """
    for root in roots:
        root = Path(root).expanduser().resolve()
        if root.is_file():
            st = root.stat()
            yield ImageFileInfo(root.parent, root.name, st.st_size, st.st_mtime_ns)
            continue
        if not root.is_dir():
            raise ImageError(f"folder not found: {root}")
        yield from _walk(root, root, follow_symlinks, set())


def _walk(root: Path, folder: Path, follow: bool, seen: set) -> Iterator[ImageFileInfo]:
    try:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        log.warning("skipping folder %s: %s", folder, e.strerror or e)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_symlink() and not follow:
                continue
            if entry.is_dir(follow_symlinks=follow):
                yield from _walk(root, Path(entry.path), follow, seen)
                continue
            if not entry.is_file(follow_symlinks=follow):
                continue
            path = Path(entry.path)
            if follow and entry.is_symlink() and not _inside(path.resolve(), root):
                continue
            if not is_candidate(path):
                continue
            st = entry.stat(follow_symlinks=follow)
        except OSError as e:
            log.warning("skipping %s: %s", entry.path, e.strerror or e)
            continue
        yield ImageFileInfo(root, Path(entry.path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB: alpha is composited on white, 16-bit and float are rescaled, CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(
    source: str | Path | bytes | Image.Image,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``source`` (path, bytes or PIL image) to an upright RGB image.

    EXIF orientation is applied; the first frame of an animation is used. ``draft_size`` lets JPEG decode at
    a reduced scale no smaller than that many pixels on the short side. Raises :class:`ImageError` with the
    reason when the file cannot be used.
    """
    name = "image"
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            if isinstance(source, (bytes, bytearray)):
                fp = io.BytesIO(source)
            else:
                name = str(source)
                fp = Path(source)
                if Path(source).is_dir():
                    raise ImageError(f"{name}: is a folder, not an image")
            with warnings.catch_warnings():
                # our own max_pixels check below replaces Pillow's warning threshold
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fp)
            if max_pixels and img.width * img.height > max_pixels:
                raise ImageError(
                    f"{name}: {img.width}x{img.height} exceeds the pixel limit ({max_pixels:,}); "
                    "raise --max-pixels to allow it"
                )
            if draft_size and img.format == "JPEG":
                img.draft("RGB", _draft_target(img.size, draft_size))
            img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{name}: cannot decode ({msg})") from None


def _draft_target(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """Requested size for ``Image.draft`` so the decoded short side stays >= ``short_side``."""
    w, h = size
    scale = short_side / max(1, min(w, h))
    return max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))
