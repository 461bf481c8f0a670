"""Hard limits, one constant each, shared by the library, the CLI and the HTTP service."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Bounds that protect the process from oversized work. The service shows them in ``/info``."""

    max_k: int = 10_000  # results per query (library and CLI)
    max_pixels: int = 100_000_000  # decompression-bomb bound when indexing and querying from files
    serve_max_k: int = 1_000  # results per query over HTTP
    serve_max_pixels: int = 40_000_000  # uploaded images
    serve_max_batch: int = 1_000  # vectors in one /search/batch
    serve_max_work: int = 100_000  # vectors x k in one request
    serve_max_ids: int = 10_000  # ids or keys in one request (positive, negative, exclude together)
    serve_max_values: int = 10_000  # values in one filter list, and in all the lists of one filter together
    serve_max_text: int = 4_096  # characters of one text input (a label, a path prefix, a key)
    serve_max_thumbnail: int = 1_024  # longest side of a thumbnail, in pixels
    serve_max_labels_listed: int = 10_000  # labels in one /labels answer
    max_filter_nodes: int = 1_000  # conditions and and/or/not operators in one filter
    max_filter_depth: int = 32  # nesting of parentheses, not, $and/$or/$not in one filter
    max_dim: int = 65_536


LIMITS = Limits()
