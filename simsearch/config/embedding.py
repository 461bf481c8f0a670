"""How images become vectors: the default backbone, engine and precision choices, and the record an index keeps.

:class:`EmbeddingSettings` is what a manifest records under ``extra["embedding"]`` (engine, precision, draft
decoding; for int8 the calibration, and why ``auto`` chose the precision) so that query time embeds exactly as index
time did. Indexes written before it was recorded used the fp32 torch reference with full JPEG decoding
(:data:`LEGACY_SETTINGS`). :class:`Int8Spec` holds the settings of OpenVINO int8 (post-training quantisation with
NNCF) and of ``--precision auto``'s choice of it (:data:`INT8`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import IndexFormatError

DEFAULT_BACKBONE = "efficientnet_lite0"
AUTO = "auto"
PRECISIONS = ("auto", "fp32", "bf16", "int8")
RECORDED_PRECISIONS = tuple(p for p in PRECISIONS if p != AUTO)  # what an index's vectors can be made with
EMBEDDING_KEY = "embedding"  # manifest.extra key
KEEP_FP32 = ("none", "first_last")


@dataclass(frozen=True)
class Int8Spec:
    """int8 (``--precision int8``, OpenVINO only): the backbone quantised with NNCF post-training quantisation on a
    sample of the collection being indexed, and when ``--precision auto`` picks it (``docs/precision.md``)."""

    calibration_size: int = 300  # photos of the collection the quantiser sees (spread evenly over it)
    min_collection: int = 100  # fewer photos to embed: calibrate on the bundled sample photos instead
    preset: str = "mixed"  # NNCF preset: symmetric weights, asymmetric activations
    fast_bias_correction: bool = True
    keep_fp32: str = "first_last"  # layers left in fp32: none, or the first and last convolutions
    # --precision auto: int8 only for a new index of at least this many photos (quantising takes ~15-30 s), ...
    auto_min_photos: int = 2000
    auto_min_speedup: float = 1.15  # ... measured at least this much faster than fp32/bf16 on this CPU, ...
    guard_tolerance: float = 0.005  # ... and R@1 and MAP@R on the bundled check set within this of fp32
    # (negative: int8 must beat fp32 by that much)

    def __post_init__(self) -> None:
        if self.calibration_size < 1 or self.min_collection < 0 or self.auto_min_photos < 0:
            raise ValueError("calibration_size must be positive, min_collection and auto_min_photos not negative")
        if self.preset not in ("mixed", "performance"):
            raise ValueError(f"preset must be mixed or performance, not {self.preset!r}")
        if self.keep_fp32 not in KEEP_FP32:
            raise ValueError(f"keep_fp32 must be one of {KEEP_FP32}, not {self.keep_fp32!r}")
        if self.auto_min_speedup <= 0 or not -1 < self.guard_tolerance < 1:
            raise ValueError("auto_min_speedup must be positive and guard_tolerance in (-1, 1)")

    def quantiser_settings(self) -> dict[str, Any]:
        """What changes the quantised model (part of its cache key)."""
        return {"preset": self.preset, "fast_bias_correction": self.fast_bias_correction, "keep_fp32": self.keep_fp32}


INT8 = Int8Spec()


@dataclass(frozen=True)
class EmbeddingSettings:
    """The engine, precision and JPEG decoding an index's vectors were made with (``extra["embedding"]``).

    ``calibration`` (int8 only): ``{"digest", "count", "source"}`` of the photos the model was quantised on: it
    names the quantised model, so an index's new images and queries use exactly that one. ``reason``: why
    ``--precision auto`` chose ``precision`` (empty when it was asked for)."""

    engine: str
    precision: str
    draft: bool
    calibration: dict | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.engine, str) or not self.engine:
            raise ValueError(f"engine must be a name, not {self.engine!r}")
        if not isinstance(self.precision, str) or not self.precision:
            raise ValueError(f"precision must be a name, not {self.precision!r}")
        if not isinstance(self.draft, bool):
            raise ValueError(f"draft must be true or false, not {self.draft!r}")
        if self.precision == "int8":
            cal = self.calibration
            if not isinstance(cal, Mapping) or not isinstance(cal.get("digest"), str) or not cal["digest"]:
                raise ValueError("an int8 record needs its calibration (a digest of the photos it was quantised on)")
        elif self.calibration is not None:
            raise ValueError(f"only int8 records a calibration, not {self.precision}")
        if not isinstance(self.reason, str):
            raise ValueError(f"reason must be text, not {self.reason!r}")

    @classmethod
    def from_dict(cls, d: object, where: str = "manifest") -> EmbeddingSettings:
        """Read a recorded dict; missing keys take the legacy values, unknown ones are ignored (newer writers)."""
        if not isinstance(d, Mapping):
            raise IndexFormatError(f"{where}: extra.{EMBEDDING_KEY} must be a JSON object, not {str(d)[:60]!r}")
        values: dict[str, Any] = {
            **asdict(LEGACY_SETTINGS),
            **{k: d[k] for k in ("engine", "precision", "draft", "calibration", "reason") if k in d},
        }
        try:
            return cls(**values)
        except ValueError as e:
            raise IndexFormatError(f"{where}: extra.{EMBEDDING_KEY}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The record (without the optional keys that are empty: what indexes wrote before they existed)."""
        d = asdict(self)
        return {k: v for k, v in d.items() if k not in ("calibration", "reason") or v}

    def same_vectors(self, other: EmbeddingSettings) -> bool:
        """Whether both make the same kind of vectors (engine, precision, decoding, int8 calibration)."""
        digest = (self.calibration or {}).get("digest")
        return (self.engine, self.precision, self.draft, digest) == (
            other.engine,
            other.precision,
            other.draft,
            (other.calibration or {}).get("digest"),
        )

    def check_known(self, where: str = "manifest") -> None:
        """Refuse, saying to upgrade, to embed for an index whose precision this version does not know.

        Such an index was written by a newer simsearch: its vectors cannot be reproduced here, and mixing them with
        any other kind would silently spoil its results. (Versions before int8 refuse an int8 index only when
        they embed, with ``ValueError: precision must be one of auto, fp32, bf16, not 'int8'``.)"""
        if self.precision not in RECORDED_PRECISIONS:
            raise IndexFormatError(
                f"{where} was embedded with precision {self.precision!r}, which this version of simsearch does not "
                f"know (it knows {', '.join(RECORDED_PRECISIONS)}): the index was written by a newer simsearch. "
                f"Upgrade simsearch (pip install -U simsearch) to add images to it or to query it with new images"
            )

    def describe(self) -> str:
        draft = "reduced-size JPEG decoding" if self.draft else "full JPEG decoding"
        precision = self.precision
        if self.calibration:
            cal = self.calibration
            precision += f" (quantised on {cal.get('count')} photos of {cal.get('source')}, {cal['digest'][:12]})"
        return f"engine {self.engine}, precision {precision}, {draft}"


LEGACY_SETTINGS = EmbeddingSettings(engine="torch", precision="fp32", draft=False)


def recorded_settings(extra: Mapping | None, count: int, where: str = "manifest") -> EmbeddingSettings | None:
    """The settings a manifest's ``extra`` records; :data:`LEGACY_SETTINGS` for a non-empty index that records
    none; None for an empty index (anything goes)."""
    if count <= 0:
        return None
    rec = (extra or {}).get(EMBEDDING_KEY)
    if rec is None:
        return LEGACY_SETTINGS
    return EmbeddingSettings.from_dict(rec, where)
