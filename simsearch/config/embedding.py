"""How images become vectors: the default backbone, engine and precision choices, and the record an index keeps.

:class:`EmbeddingSettings` is what a manifest records under ``extra["embedding"]`` (engine, precision, draft
decoding) so that query time embeds exactly as index time did. Indexes written before it was recorded used the
fp32 torch reference with full JPEG decoding (:data:`LEGACY_SETTINGS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import IndexFormatError

DEFAULT_BACKBONE = "efficientnet_lite0"
AUTO = "auto"
PRECISIONS = ("auto", "fp32", "bf16")
EMBEDDING_KEY = "embedding"  # manifest.extra key


@dataclass(frozen=True)
class EmbeddingSettings:
    """The engine, precision and JPEG decoding an index's vectors were made with (``extra["embedding"]``)."""

    engine: str
    precision: str
    draft: bool

    def __post_init__(self) -> None:
        if not isinstance(self.engine, str) or not self.engine:
            raise ValueError(f"engine must be a name, not {self.engine!r}")
        if not isinstance(self.precision, str) or not self.precision:
            raise ValueError(f"precision must be a name, not {self.precision!r}")
        if not isinstance(self.draft, bool):
            raise ValueError(f"draft must be true or false, not {self.draft!r}")

    @classmethod
    def from_dict(cls, d: object, where: str = "manifest") -> EmbeddingSettings:
        """Read a recorded dict; missing keys take the legacy values, unknown ones are ignored (newer writers)."""
        if not isinstance(d, Mapping):
            raise IndexFormatError(f"{where}: extra.{EMBEDDING_KEY} must be a JSON object, not {str(d)[:60]!r}")
        values: dict[str, Any] = {
            **asdict(LEGACY_SETTINGS),
            **{k: d[k] for k in ("engine", "precision", "draft") if k in d},
        }
        try:
            return cls(**values)
        except ValueError as e:
            raise IndexFormatError(f"{where}: extra.{EMBEDDING_KEY}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        draft = "reduced-size JPEG decoding" if self.draft else "full JPEG decoding"
        return f"engine {self.engine}, precision {self.precision}, {draft}"


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
