"""`--index auto` settings: what a run asks for (:class:`AutoIndexSpec`) and what an index records
(:class:`AutoIndexRecord`, the manifest's ``extra["index_auto"]``), plus memory sizes as text (``"2GB"``)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import IndexFormatError, SimsearchError

AUTO_INDEX = "auto"  # the `--index` value that asks for the automatic choice
INDEX_AUTO_KEY = "index_auto"  # manifest.extra key
DEFAULT_TARGET_RECALL = 0.95
TUNING_QUERIES = 500
SEARCH_PARAMS = ("nprobe", "k_factor", "efSearch")  # tuned search parameters an index can record
CHOOSERS = ("measured", "fixed")  # `auto`: measure every candidate family that fits / the single rule of fe4a9e6
DEFAULT_CHOOSER = "measured"  # 1.6-4.4x the fixed rule's batched QPS at recall@10 0.95 (docs/scale.md)
TRIAL_SIZE = 50_000  # vectors a candidate family is tried on (all of them when the collection is smaller)
FINALISTS = 2  # best trials built and tuned on all vectors when the trials ran on a sample (a sample is less dense)
RECALL_TIE = 0.002  # recalls this close count as equal: the cheaper setting wins

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_size(value: str | int | float | None) -> int | None:
    """``"128MB"``, ``"4GiB"``, ``"1.5G"`` or a number of bytes → bytes (None stays None)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise SimsearchError(f"invalid memory size {value!r}: use e.g. 512MB, 4GB or 2GiB")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not n > 0 or math.isinf(n):
        raise SimsearchError(f"memory size must be positive, not {value!r}")
    return int(n)


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _check_recall(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
        raise SimsearchError(f"--target-recall must be in (0, 1], not {value}")
    return float(value)


@dataclass(frozen=True)
class AutoIndexSpec:
    """What ``--index auto`` aims for. ``memory_budget`` None: half the RAM (decided when the index is chosen);
    ``flat_below`` None: :data:`simsearch.autocandidates.FLAT_BELOW` (exact search below that many vectors)."""

    memory_budget: int | None = None  # bytes the finished index may use
    target_recall: float = DEFAULT_TARGET_RECALL  # recall@10 against exact search to tune for
    flat_below: int | None = None
    tuning_queries: int = TUNING_QUERIES  # held-out queries measuring recall while tuning
    seed: int = 0
    chooser: str = DEFAULT_CHOOSER  # measured: try every family that fits; fixed: the single rule of commit fe4a9e6
    trial_size: int = TRIAL_SIZE  # vectors each candidate family is built and tuned on when the chooser measures
    finalists: int = FINALISTS  # best trials then built on all vectors (when they ran on a sample): the faster kept
    families: tuple[str, ...] = ()  # candidate families the measured chooser may use (empty: all that fit but HNSW)
    vectors_on_disk: bool = False  # re-ranking floats stay in the file (memory-mapped): the budget counts codes only

    def __post_init__(self) -> None:
        if self.memory_budget is not None and (isinstance(self.memory_budget, bool) or self.memory_budget <= 0):
            raise SimsearchError(f"memory budget must be a positive number of bytes, not {self.memory_budget!r}")
        _check_recall(self.target_recall)
        if self.flat_below is not None and self.flat_below < 1:
            raise SimsearchError(f"flat_below must be at least 1, not {self.flat_below}")
        if self.tuning_queries < 1:
            raise SimsearchError(f"tuning_queries must be at least 1, not {self.tuning_queries}")
        if self.chooser not in CHOOSERS:
            raise SimsearchError(f"unknown index chooser {self.chooser!r}: use one of {', '.join(CHOOSERS)}")
        if self.trial_size < 1000:
            raise SimsearchError(f"trial_size must be at least 1000, not {self.trial_size}")
        if self.finalists < 1:
            raise SimsearchError(f"finalists must be at least 1, not {self.finalists}")

    @classmethod
    def from_options(
        cls, memory_budget: str | int | None = None, target_recall: float | None = None, **others: Any
    ) -> AutoIndexSpec:
        """From CLI-style options: a size as text (``"2GB"``) or bytes, None for the defaults."""
        recall = DEFAULT_TARGET_RECALL if target_recall is None else _check_recall(target_recall)
        return cls(memory_budget=parse_size(memory_budget), target_recall=recall, **others)


_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "requested": (str,),
    "memory_budget": (int, type(None)),
    "target_recall": (int, float),
    "flat_below": (int, type(None)),
    "choice": (str, type(None)),
    "reason": (str, type(None)),
    "built_for": (int, type(None)),
    "trained_on": (int, type(None)),
    "estimated_bytes_per_vector": (int, float, type(None)),
    "params": (dict,),
    "recall_at_10": (int, float, type(None)),
    "recall_queries": (int, type(None)),
    "ms_per_query_batched": (int, float, type(None)),
    "train_seconds": (int, float, type(None)),
    "add_seconds": (int, float, type(None)),
    "tune_seconds": (int, float, type(None)),
    "vectors_on_disk": (bool,),
}
_FLAGS = ("vectors_on_disk",)  # boolean keys (written only when true)
_ALWAYS_WRITTEN = ("requested", "memory_budget", "target_recall")


@dataclass(frozen=True)
class AutoIndexRecord:
    """The manifest's ``extra["index_auto"]``: what was asked (``requested`` ``auto`` or the factory given to
    ``rebuild``, budget, target, threshold) and, once decided, what was chosen, why, and how it measured.

    Reads the dicts written by every earlier version (same keys); :meth:`to_dict` writes the same keys.
    ``params`` (nprobe, k_factor, efSearch) are read-only by convention.
    """

    requested: str = AUTO_INDEX
    memory_budget: int | None = None
    target_recall: float = DEFAULT_TARGET_RECALL
    flat_below: int | None = None
    choice: str | None = None  # full factory string, e.g. "IDMap2,IVF1024,PQ64,RFlat"
    reason: str | None = None
    built_for: int | None = None  # vectors the index was trained and tuned for
    trained_on: int | None = None
    estimated_bytes_per_vector: float | None = None
    params: dict[str, float] = field(default_factory=dict)
    recall_at_10: float | None = None
    recall_queries: int | None = None
    ms_per_query_batched: float | None = None
    train_seconds: float | None = None
    add_seconds: float | None = None
    tune_seconds: float | None = None
    vectors_on_disk: bool | None = None  # True: the exact vectors of the re-ranking stage are read memory-mapped

    @classmethod
    def new(cls, spec: AutoIndexSpec) -> AutoIndexRecord:
        """The record of a new ``auto`` index, before anything was chosen."""
        return cls(
            memory_budget=spec.memory_budget, target_recall=spec.target_recall, flat_below=spec.flat_below,
            vectors_on_disk=spec.vectors_on_disk or None,
        )  # fmt: skip

    @property
    def automatic(self) -> bool:
        return self.requested == AUTO_INDEX

    @property
    def spec(self) -> AutoIndexSpec:
        return AutoIndexSpec(
            self.memory_budget, self.target_recall, self.flat_below, vectors_on_disk=bool(self.vectors_on_disk)
        )

    def with_settings(
        self,
        memory_budget: str | int | None = None,
        target_recall: float | None = None,
        vectors_on_disk: bool | None = None,
    ) -> AutoIndexRecord:
        """A new budget, target and/or place for the exact vectors of an existing index (None keeps the recorded
        one); the budget and target are used from its next final commit on (``update_config``), the place of the
        vectors from its next opening (an index without a re-ranking stage has no such vectors)."""
        changes: dict[str, Any] = {}
        if vectors_on_disk is not None:
            changes["vectors_on_disk"] = vectors_on_disk or None
        if memory_budget is not None:
            changes["memory_budget"] = parse_size(memory_budget)
        if target_recall is not None:
            changes["target_recall"] = _check_recall(target_recall)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: object, where: str = "manifest") -> AutoIndexRecord:
        """Validate a recorded dict; a tampered or foreign one raises a one-line :class:`IndexFormatError`."""
        what = f"{where}: extra.{INDEX_AUTO_KEY}"
        if not isinstance(d, Mapping):
            raise IndexFormatError(f"{what} must be a JSON object, not {str(d)[:60]!r}")
        unknown = sorted(set(d) - set(_RECORD_TYPES))
        if unknown:
            raise IndexFormatError(f"{what}: unknown keys {unknown}; was it written by a newer simsearch?")
        for key, value in d.items():
            types = _RECORD_TYPES[key]
            bad_type = not isinstance(value, types) or (isinstance(value, bool) and key not in _FLAGS)
            if bad_type or (isinstance(value, (int, float)) and (value < 0 or math.isnan(value) or math.isinf(value))):
                raise IndexFormatError(f"{what}: {key} {str(value)[:60]!r} is not valid (tampered?)")
        params = d.get("params", {})
        for key, value in params.items():
            if key not in SEARCH_PARAMS or isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise IndexFormatError(f"{what}: search parameter {key}={str(value)[:40]!r} is not valid (tampered?)")
        if not d.get("requested") or not 0 < d.get("target_recall", DEFAULT_TARGET_RECALL) <= 1:
            raise IndexFormatError(f"{what}: requested or target_recall is not valid (tampered?)")
        if d.get("memory_budget") == 0 or d.get("flat_below") == 0:
            raise IndexFormatError(f"{what}: memory_budget and flat_below must be positive")
        return cls(**{**d, "params": dict(params)})

    @classmethod
    def from_extra(cls, extra: Mapping | None, where: str = "manifest") -> AutoIndexRecord | None:
        """The record in a manifest's ``extra`` (None for an index whose FAISS index was given explicitly)."""
        if not extra or INDEX_AUTO_KEY not in extra:
            return None
        return cls.from_dict(extra[INDEX_AUTO_KEY], where)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for the manifest: the keys earlier versions wrote (optional ones only when known)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k in _ALWAYS_WRITTEN}
        for key in _FLAGS:  # absent unless true: earlier versions, which refuse unknown keys, read the others
            if not out.get(key):
                out.pop(key, None)
        if not self.params and self.choice is None:
            del out["params"]  # nothing chosen yet
        return out
