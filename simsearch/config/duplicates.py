"""When two items are near-duplicates: the pair rule and the grouping (see :mod:`simsearch.duplicates`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SimsearchError

LINKAGES = ("star", "complete", "single")


@dataclass(frozen=True)
class DuplicateRule:
    """Two items are near-duplicates when their cosine similarity is at least ``threshold``, or when their
    perceptual hashes (:mod:`simsearch.phash`) differ in at most ``hash_distance`` bits and their cosine is at
    least ``hash_threshold`` (grayscale, brightened or re-encoded copies: a close hash with a lower cosine).
    ``hash_distance`` -1 turns the hash off. Defaults chosen with ``scripts/bench_duplicates.py``.

    ``linkage``: how pairs make groups. ``star`` (default): every member is a near-duplicate of the group's
    representative; ``complete``: of every other member; ``single``: connected through any chain of pairs.
    """

    threshold: float = 0.87
    hash_distance: int = 9
    hash_threshold: float = 0.4
    linkage: str = "star"

    def __post_init__(self):
        if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold <= 1.0):
            raise SimsearchError(f"the duplicate threshold must be in (0, 1], not {self.threshold}")
        if not (isinstance(self.hash_threshold, (int, float)) and -1.0 <= self.hash_threshold <= 1.0):
            raise SimsearchError(f"the duplicate hash threshold must be in [-1, 1], not {self.hash_threshold}")
        if math.isnan(self.threshold) or math.isnan(self.hash_threshold):
            raise SimsearchError("duplicate thresholds cannot be NaN")
        if not (isinstance(self.hash_distance, int) and -1 <= self.hash_distance <= 64):
            raise SimsearchError(
                f"the hash distance must be an integer in 0..64 (or -1: off), not {self.hash_distance}"
            )
        if self.linkage not in LINKAGES:
            raise SimsearchError(f"linkage must be one of {', '.join(LINKAGES)}, not {self.linkage!r}")

    @property
    def uses_hash(self) -> bool:
        return self.hash_distance >= 0


DUPLICATES = DuplicateRule()
