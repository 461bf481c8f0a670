"""How ``simsearch index`` builds an index: the settings of a run, with their defaults (``build_index``'s and the
CLI's)."""

from __future__ import annotations

from dataclasses import dataclass

from .limits import LIMITS

ITEM_POOLINGS = ("max", "mean")


@dataclass(frozen=True)
class IndexSpec:
    """Defaults of an ``index`` run. Engine and precision live in :mod:`simsearch.config.embedding`, the
    automatic FAISS choice in :mod:`simsearch.config.autoindex`."""

    index_factory: str = "auto"  # or any FAISS factory string, for a new index
    item_pooling: str = "max"  # how an item with several photos scores: its best photo, or their normalised mean
    max_pixels: int = LIMITS.max_pixels  # decompression-bomb bound
    follow_symlinks: bool = False
    prune: bool = False  # remove items that vanished from the source
    strict: bool = False  # fail when any file had to be skipped
    commit_every: int = 2048  # photos between saved generations (what a kill -9 can cost)

    def __post_init__(self) -> None:
        if self.item_pooling not in ITEM_POOLINGS:
            raise ValueError(f"item_pooling must be one of {ITEM_POOLINGS}, not {self.item_pooling!r}")
        if self.commit_every < 1 or self.max_pixels < 1:
            raise ValueError("commit_every and max_pixels must be positive")


INDEX = IndexSpec()


@dataclass(frozen=True)
class ReaderSpec:
    """How an opened index sees changes made after it was opened."""

    refresh_seconds: float = 0.2  # how often a ``follow=True`` reader looks for a newer generation
    live_poll_seconds: float = 0.05  # how often searches read the journal for other processes' live writes


READER = ReaderSpec()
