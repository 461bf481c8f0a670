"""Storage of an index: manifest, metadata, generations and their one writer (layer: store).

Nothing else reads or writes an index's files: the build step writes through :class:`GenerationWriter`,
searches read a :class:`Snapshot`.
"""

from .generation import DEFAULT_FACTORY, GenerationWriter, new_faiss_index, now, writer_lock
from .loading import faiss_message, load_augmented, load_generation
from .manifest import (
    ATTRIBUTE_TYPES,
    AUGMENT_KEY,
    FORMAT_VERSION,
    MANIFEST,
    METRIC,
    Manifest,
    existing_index,
    published_generation,
    read_manifest,
)
from .metadata import Item, Metadata, Photo, db_path, folder_key, label_from_path, py_path, safe_relpath
from .reader import Snapshot

__all__ = [
    "ATTRIBUTE_TYPES",
    "AUGMENT_KEY",
    "DEFAULT_FACTORY",
    "FORMAT_VERSION",
    "MANIFEST",
    "METRIC",
    "GenerationWriter",
    "Item",
    "Manifest",
    "Metadata",
    "Photo",
    "Snapshot",
    "db_path",
    "existing_index",
    "faiss_message",
    "folder_key",
    "label_from_path",
    "load_augmented",
    "load_generation",
    "new_faiss_index",
    "now",
    "published_generation",
    "py_path",
    "read_manifest",
    "safe_relpath",
    "writer_lock",
]
