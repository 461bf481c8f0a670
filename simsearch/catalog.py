"""Catalogue files (placeholder until the full reader lands)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SimsearchError


@dataclass(frozen=True)
class CatalogRow:
    key: str
    images: tuple
    attributes: dict
    line: int


@dataclass(frozen=True)
class Catalog:
    schema: dict
    rows: list


def read_catalog(path, *, root=None, key_column="key", image_column=None) -> Catalog:
    raise SimsearchError("catalogue reading is not available yet")
