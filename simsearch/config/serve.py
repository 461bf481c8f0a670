"""Settings of the HTTP service (``simsearch serve``, :func:`simsearch.server.create_app`), declared once.

The CLI's options take their defaults from :data:`SERVE`; ``dataclasses.replace(SERVE, port=9000)`` changes one.
The API key itself is not a setting here (it is a secret: it comes from ``--api-key`` or the environment variable
named by ``api_key_env``, and is never printed).
"""

from __future__ import annotations

from dataclasses import dataclass

from .limits import LIMITS

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "localhost.localdomain")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class BatchSpec:
    """How concurrent single searches are coalesced into one index search (:class:`simsearch.searcher.Searcher`)."""

    max_batch: int = 64  # queries in one batched search
    linger_s: float = 0.002  # under load, wait this long for more queries to join a batch
    max_batched_exclude: int = 256  # more excluded ids than this: searched on its own, with a selector
    workers: int = 1  # threads taking batches (more split the batches: measured slower on 2 cores)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.linger_s < 0 or self.max_batched_exclude < 0 or self.workers < 1:
            raise ValueError(f"invalid batching settings: {self}")


@dataclass(frozen=True)
class ServeSpec:
    """Everything ``simsearch serve`` can be told, with its defaults."""

    host: str = "127.0.0.1"  # loopback: only this machine
    port: int = 8000
    api_key_env: str = "SIMSEARCH_API_KEY"  # where --api-key is read from when not given
    max_upload_bytes: int = 20 * 1024 * 1024  # any request body (uploads, JSON)
    max_pixels: int = LIMITS.serve_max_pixels  # uploaded images, checked on the header before decoding
    allowed_hosts: tuple[str, ...] = ()  # Host headers answered; empty: the bound host and the localhost names
    expose_paths: bool = False  # absolute server paths (roots, files) in responses
    allow_reload: bool = False  # POST /admin/reload
    watch_seconds: float | None = None  # poll the saved index and reload when it changes
    access_log: bool = True
    preload: bool = False  # load the embedding model at start-up (``simsearch serve`` does)
    faiss_threads: int | None = 1  # OpenMP threads per FAISS search, process-wide (None: leave the setting alone)
    thumbnail_cache: int = 2048  # thumbnails kept in memory
    read_only: bool = False  # refuse live writes (PUT, PATCH, DELETE /items/{key}, POST /items/batch)
    compact_writes: int = 1000  # live writes that make the service fold its journal into the index at once
    compact_seconds: float = 30.0  # ...and, when fewer, how often it folds whatever is pending
    # OpenVINO threads per image embedding (uploads, live writes' photos). 1: inference runs in the calling
    # thread on one core, leaving the others to searches, and the thread's priority applies to it; None: all cores
    embed_threads: int | None = 1
    # niceness added to the threads that embed live writes' photos and fold the journal (Linux): under CPU
    # contention searches are served first, and writes (a few per second) take the CPU that is left. 0: none
    background_nice: int = 5
    batching: BatchSpec = BatchSpec()

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        if self.max_upload_bytes < 1 or self.max_pixels < 1:
            raise ValueError("max_upload_bytes and max_pixels must be positive")
        if self.watch_seconds is not None and self.watch_seconds <= 0:
            raise ValueError("watch_seconds must be positive")
        if self.compact_writes < 1 or self.compact_seconds <= 0:
            raise ValueError("compact_writes and compact_seconds must be positive")
        if self.embed_threads is not None and self.embed_threads < 1:
            raise ValueError("embed_threads must be positive (or None: all cores)")
        if not 0 <= self.background_nice <= 19:
            raise ValueError(f"background_nice must be 0..19, not {self.background_nice}")
        if isinstance(self.allowed_hosts, str):
            raise ValueError("allowed_hosts is a tuple of host names, not one string")

    @property
    def max_upload_mb(self) -> float:
        """The body limit in MiB, as ``--max-upload-mb`` takes it."""
        return self.max_upload_bytes / (1024 * 1024)

    def hosts(self) -> frozenset[str]:
        """Host names (lower case, no port) that requests may name; ``*`` in the set: any."""
        given = tuple(h.strip().lower() for h in self.allowed_hosts if h.strip())
        if given:
            return frozenset(h.strip("[]") for h in given)
        bound = self.host.strip("[]").lower()
        return frozenset(LOCAL_HOSTS) | ({bound} if bound not in WILDCARD_HOSTS else set())


SERVE = ServeSpec()
