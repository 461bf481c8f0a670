"""Defaults of label suggestion (``simsearch classify``), label audit and classification evaluation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassifySettings:
    """Similarity-weighted k-nearest-neighbour votes (see :mod:`simsearch.classify`)."""

    k: int = 10  # labelled neighbours that vote
    field: str = "label"  # the attribute voted on
    temperature: float = 0.07  # vote weight exp(similarity / temperature): nearer neighbours count more
    min_confidence: float = 0.5  # below this vote share the answer is "unknown"
    top: int = 3  # labels listed per answer
    audit_min_confidence: float = 0.7  # an item is a suspect when a vote this sure disagrees with its own label
    unknown: str = "unknown"  # the answer below min_confidence


CLASSIFY = ClassifySettings()
