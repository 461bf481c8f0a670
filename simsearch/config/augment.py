"""Collection-side augmentation and query expansion: one frozen spec, recorded in an index's manifest.

``AugmentSpec()`` is the default chosen from measurements (``docs/augmentation.md``); ``AugmentSpec.none()``
turns augmentation off, which gives exactly the raw-vector results.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import SimsearchError

AUGMENT_METHODS = ("none", "dba")
MAX_AUGMENT_K = 100
MAX_ROUNDS = 4


class AugmentSpecError(SimsearchError, ValueError):
    """An augmentation setting is out of range."""


@dataclass(frozen=True)
class AugmentSpec:
    """How the collection's vectors are augmented, and how queries are expanded and merged.

    - ``method``: ``dba`` (database-side augmentation: every item becomes the weighted mean of itself and its
      nearest neighbours) or ``none``.
    - ``k``: neighbours averaged per item (and per expanded query); ``"auto"`` picks it per collection from the
      distribution of neighbour similarities (:func:`simsearch.augment.auto_k`).
    - ``power``: a neighbour at cosine ``s`` weighs ``s ** power`` (the item itself weighs 1).
    - ``gap``: per-item cut-off: neighbours after the first drop of more than ``gap`` in cosine between consecutive
      neighbours are left out (a group of near-copies is not averaged with the rest); None keeps all ``k``.
    - ``rounds``: averaging rounds over the same neighbour graph (2 = neighbours of neighbours contribute too).
    - ``expand_queries``: expand a new query vector over the augmented vectors of its nearest items (alpha-QE
      with weights ``s ** power``) before searching the augmented vectors.
    - ``guard``: the first ``guard`` results of the raw-vector search stay at the head of the list (after the
      augmented top-1 for an item of the collection, see ``item_first``), so augmentation never pushes the
      closest raw matches (near-duplicates, the user's obvious hits) down; 0 turns the guard off.
    - ``item_first``: for a query that is an item of the collection, the first result is the augmented top-1
      unless a raw match is closer by more than ``item_first`` in raw cosine; None puts the raw top-``guard``
      first for items too.
    """

    method: str = "dba"
    k: int | str = 10
    power: float = 3.0
    gap: float | None = None
    rounds: int = 2
    expand_queries: bool = True
    guard: int = 5
    item_first: float | None = 0.05

    def __post_init__(self) -> None:
        if self.method not in AUGMENT_METHODS:
            raise AugmentSpecError(f"augment method must be one of {', '.join(AUGMENT_METHODS)}, not {self.method!r}")
        if isinstance(self.k, str):
            if self.k != "auto":
                raise AugmentSpecError(f"augment k must be a whole number 1-{MAX_AUGMENT_K} or 'auto', not {self.k!r}")
        elif isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_AUGMENT_K:
            raise AugmentSpecError(f"augment k must be a whole number 1-{MAX_AUGMENT_K} or 'auto', not {self.k!r}")
        _check_number("power", self.power, 0.0, 20.0)
        if self.gap is not None:
            _check_number("gap", self.gap, 0.0, 2.0, open_low=True)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or not 1 <= self.rounds <= MAX_ROUNDS:
            raise AugmentSpecError(f"augment rounds must be a whole number 1-{MAX_ROUNDS}, not {self.rounds!r}")
        if not isinstance(self.expand_queries, bool):
            raise AugmentSpecError(f"expand_queries must be true or false, not {self.expand_queries!r}")
        if isinstance(self.guard, bool) or not isinstance(self.guard, int) or not 0 <= self.guard <= 100:
            raise AugmentSpecError(f"augment guard must be a whole number 0-100, not {self.guard!r}")
        if self.item_first is not None:
            _check_number("item_first", self.item_first, 0.0, 2.0)

    @classmethod
    def none(cls) -> AugmentSpec:
        """No augmentation: searches use the raw vectors only."""
        return cls(method="none")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def max_k(self) -> int:
        """The neighbour-graph width this spec needs (``auto`` may choose up to this many)."""
        return AUTO_K_MAX if self.k == "auto" else int(self.k)

    def resolved(self, k: int) -> AugmentSpec:
        """This spec with ``k = "auto"`` replaced by the chosen ``k`` (what the manifest records)."""
        return replace(self, k=int(k))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AugmentSpec:
        """Read a manifest record; a missing record means no augmentation (indexes written before it existed)."""
        if not data:
            return cls.none()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AugmentSpecError(
                f"unknown augmentation settings {', '.join(unknown)}: this index was written by a newer simsearch; "
                "upgrade simsearch or rebuild the index"
            )
        return cls(**data)

    @classmethod
    def parse(cls, text: str, base: AugmentSpec | None = None) -> AugmentSpec:
        """``none``, ``dba`` or ``dba:k=10,power=3,rounds=2`` (command line and HTTP form) over ``base``."""
        base = base or cls()
        method, _, rest = text.strip().partition(":")
        method = method.strip().lower()
        if method == "none":
            return cls.none()
        values: dict[str, Any] = {"method": method}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or key not in {f.name for f in fields(cls)} or key == "method":
                raise AugmentSpecError(f"cannot read augmentation setting {part!r} (expected NAME=VALUE)")
            values[key] = _parse_value(key, value.strip())
        return replace(base, **values)


AUTO_K_MAX = 20


def _check_number(name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low < value if open_low else low <= value) and value <= high
    if not ok:
        raise AugmentSpecError(
            f"augment {name} must be a number {'above' if open_low else 'from'} {low} to {high}, not {value!r}"
        )


def _parse_value(key: str, value: str) -> Any:
    if key in ("gap", "item_first") and value.lower() in ("none", "off", ""):
        return None
    if key == "expand_queries":
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise AugmentSpecError(f"expand_queries must be on or off, not {value!r}")
    if key == "k" and value.lower() == "auto":
        return "auto"
    try:
        return int(value) if key in ("k", "rounds", "guard") else float(value)
    except ValueError:
        raise AugmentSpecError(f"augment {key} must be a number, not {value!r}") from None
