"""What a fine-tuning run returns (torch-free, so that importing simsearch stays cheap)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FinetuneResult:
    """Where the checkpoint is and how validation went (``history``: one dict per evaluated epoch)."""

    path: Path
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    card: dict = field(default_factory=dict)
    stage1_path: Path | None = None

    def __iter__(self) -> Iterator[Any]:  # path, history = simsearch.finetune(...)
        return iter((self.path, self.history))
