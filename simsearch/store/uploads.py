"""Photos given to live writes as bytes or images, kept in the index's ``uploads/`` folder (layer: store).

A photo given as a path stays where it is. Bytes and PIL images are stored once under their SHA-256 (written
atomically, so a crash leaves either the whole file or none), so that results can show them.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..errors import SimsearchError

UPLOADS = "uploads"


def keep_photo(index_path: Path, image) -> str:
    """The absolute path of ``image`` (a path, bytes or a PIL image), storing bytes and images first."""
    if isinstance(image, (str, Path)):
        p = Path(image).expanduser().resolve()
        if not p.is_file():
            raise SimsearchError(f"photo not found: {image}")
        return str(p)
    if not isinstance(image, (bytes, bytearray)):  # a PIL image
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "PNG")
        image = buf.getvalue()
    digest = hashlib.sha256(image).hexdigest()
    target = Path(index_path) / UPLOADS / digest[:2] / digest
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, bytes(image))
    return str(target.resolve())
