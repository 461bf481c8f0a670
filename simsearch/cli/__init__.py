"""Command line: parses arguments, calls the library, prints. No logic of its own (layer: interfaces).

One module per group of commands, each registering on :data:`main` (see ``_common``).
"""

from . import classifying, finetune, indexing, live, querying, scale, serving
from ._common import main

__all__ = ["classifying", "finetune", "indexing", "live", "main", "querying", "scale", "serving"]
