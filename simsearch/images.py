"""Finding and decoding images: recursive scan, content sniffing, EXIF orientation, RGB conversion."""

from __future__ import annotations

import errno
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
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


def scan(
    roots: Iterable[str | Path],
    *,
    follow_symlinks: bool = False,
    on_skip: Callable[[ImageFileInfo, str], None] | None = None,
) -> Iterator[ImageFileInfo]:
    """Yield every candidate image under ``roots`` (recursively), in sorted, deterministic order.

    Hidden files and folders (starting with ``.``) are skipped. Symlinks are not followed unless asked,
    never to a place outside the root being scanned, and never round a loop. Entries that look like images
    but cannot be used (broken symlink, symlink loop, symlink not followed or leading outside the root,
    unreadable folder) are passed to ``on_skip(info, reason)`` (default: logged).
    """
    report = on_skip or (lambda info, reason: log.warning("skipped %s: %s", info.path, reason))
    for root in roots:
        root = Path(root).expanduser().resolve()
        if root.is_file():
            st = root.stat()
            yield ImageFileInfo(root.parent, root.name, st.st_size, st.st_mtime_ns)
            continue
        if not root.is_dir():
            raise ImageError(f"folder not found: {root}")
        yield from _walk(root, root, follow_symlinks, set(), report)


def _walk(root: Path, folder: Path, follow: bool, seen: set, report: Callable) -> Iterator[ImageFileInfo]:
    def info(path: str, st: os.stat_result | None = None) -> ImageFileInfo:
        rel = Path(path).relative_to(root).as_posix()
        return ImageFileInfo(root, rel, st.st_size if st else 0, st.st_mtime_ns if st else 0)

    try:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        if folder != root:
            report(info(str(folder), _lstat(folder)), f"cannot read folder ({e.strerror or e})")
        else:
            log.warning("cannot read folder %s: %s", folder, e.strerror or e)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_symlink():
                reason, target = _symlink_target(entry, root, follow)
                if reason:
                    if reason != "-":
                        report(info(entry.path, entry.stat(follow_symlinks=False)), reason)
                    continue
                assert target is not None  # no reason: the link leads to a usable place
                if target.is_dir():
                    tst = target.stat()
                    if (tst.st_dev, tst.st_ino) in seen:
                        report(
                            info(entry.path, entry.stat(follow_symlinks=False)), "symlink loop (folder already scanned)"
                        )
                        continue
                    yield from _walk(root, Path(entry.path), follow, seen, report)
                    continue
                if not target.is_file() or not is_candidate(Path(entry.path)):
                    continue
                st = target.stat()
            elif entry.is_dir(follow_symlinks=False):
                yield from _walk(root, Path(entry.path), follow, seen, report)
                continue
            elif not entry.is_file(follow_symlinks=False) or not is_candidate(Path(entry.path)):
                continue  # not a regular file (fifo, socket, device...) or not an image
            else:
                st = entry.stat(follow_symlinks=False)
        except OSError as e:
            log.warning("skipping %s: %s", entry.path, e.strerror or e)
            continue
        yield info(entry.path, st)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except OSError:
        return None


def _symlink_target(entry: os.DirEntry, root: Path, follow: bool) -> tuple[str | None, Path | None]:
    """(reason not to use it, None) or (None, resolved target) for a symlink; reason "-" means ignore quietly."""
    looks_like_image = Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS
    try:
        target = Path(entry.path).resolve(strict=True)
    except FileNotFoundError:
        return ("broken symlink" if looks_like_image else "-"), None
    except (RuntimeError, OSError) as e:  # RuntimeError: loop detected by pathlib; OSError ELOOP: by the kernel
        if isinstance(e, RuntimeError) or e.errno == errno.ELOOP:
            return "symlink loop", None
        return f"cannot follow symlink ({e.strerror or e})", None
    relevant = looks_like_image or target.is_dir()
    if not _inside(target, root):
        return ("symlink leads outside the indexed folder" if relevant else "-"), None
    if not follow:
        return ("symlink not followed (use --follow-symlinks)" if relevant else "-"), None
    return None, target


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
            fp: io.BytesIO | Path
            if isinstance(source, (bytes, bytearray)):
                fp = io.BytesIO(source)
            else:
                name = str(source)
                fp = Path(source)
                if fp.is_dir():
                    raise ImageError(f"{name}: is a folder, not an image")
                if fp.stat().st_size == 0:
                    raise ImageError(f"{name}: empty file (0 bytes)")
            if max_pixels and Image.MAX_IMAGE_PIXELS and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
                Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2  # Pillow refuses above twice its own limit
            with warnings.catch_warnings():
                # our own max_pixels check below replaces Pillow's warning threshold
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fp)
            if max_pixels and img.width * img.height > max_pixels:  # checked on the header, before decoding
                img.close()
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
    except Image.DecompressionBombError as e:  # Pillow's own limit, checked on the header too
        detail = str(e).split(", could be")[0]
        raise ImageError(f"{name}: exceeds the pixel limit, refused before decoding ({detail})") from None
    except Exception as e:  # malformed files make decoders raise many types (struct.error, IndexError...)
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ImageError(f"{name}: cannot decode ({msg})") from None


MAX_ASPECT = 16  # clip_aspect: the longest side kept, in multiples of the short side


def clip_aspect(img: Image.Image, max_ratio: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side of an extremely elongated image to ``max_ratio`` times its short side.

    A resize-short-side-then-centre-crop transform only uses the central square, so its output hardly
    changes (sub-pixel resampling differences), but without this a 100000x2 image (a few hundred bytes as
    PNG) would be resized to 12800000x256 pixels: gigabytes of memory and minutes of CPU.
    """
    w, h = img.size
    long, short = max(w, h), min(w, h)
    if long <= max_ratio * short:
        return img
    keep = max(1, int(max_ratio * short))
    keep += (long - keep) % 2  # same centre as the full image
    start = (long - keep) // 2
    return img.crop((start, 0, start + keep, h) if w > h else (0, start, w, start + keep))


def _draft_target(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """Requested size for ``Image.draft`` so the decoded short side stays >= ``short_side``."""
    w, h = size
    scale = short_side / max(1, min(w, h))
    return max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))


# JPEG DCT-domain downscaling filters more softly than an antialiased bicubic resize: decoding to just the
# resize target moved embeddings measurably (median cosine 0.9988, min 0.984 on large textured photos); leaving
# at least a 2x reduction to the transform's own resize keeps them at median 0.9997, min 0.998.
DRAFT_MARGIN = 2


def draft_size_for(data_config: dict) -> int | None:
    """The ``draft_size`` for :func:`load_image` under a timm eval transform: :data:`DRAFT_MARGIN` times the size
    the transform resizes the short side to (``input_size / crop_pct``). A large JPEG is then decoded at the
    smallest DCT scale (1/2, 1/4, 1/8) still at least that large and the transform resizes it with its own
    interpolation; images smaller than that decode in full, unchanged. None (always full decoding) when the
    transform first trims a border measured in the original pixels.
    """
    import math

    if data_config.get("crop_border_pixels"):
        return None
    crop_pct = data_config.get("crop_pct") or 0.875
    return DRAFT_MARGIN * max(math.floor(int(s) / crop_pct) for s in data_config["input_size"][-2:])
