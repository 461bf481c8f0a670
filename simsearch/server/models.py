"""Request and response bodies of the HTTP service (pydantic models; they also make the OpenAPI docs)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 1000
MAX_BATCH = 1000
MAX_DIM = 65_536
MAX_IDS = 10_000
MAX_ID = 2**63 - 1

ItemIdT = Annotated[int, Field(ge=0, le=MAX_ID)]


class Filter(BaseModel):
    """Only results whose metadata match (all given conditions)."""

    model_config = ConfigDict(extra="forbid")
    label: str | list[str] | None = Field(None, description="A label, or a list of labels (any of them).")
    path_prefix: str | None = Field(None, max_length=4096, description="Path (relative to its root) starts with this.")

    def as_dict(self) -> dict | None:
        d = {k: v for k, v in (("label", self.label), ("path_prefix", self.path_prefix)) if v not in (None, "")}
        return d or None


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Base):
    """Search with a vector (the index's dimension, e.g. from another call or a model of the same backbone)."""

    vector: list[float] = Field(..., min_length=1, max_length=MAX_DIM, description="Query embedding (any norm).")
    k: int = Field(10, ge=1, le=MAX_K)
    filter: Filter | None = None
    exclude: list[ItemIdT] = Field(default_factory=list, max_length=MAX_IDS, description="Ids never to return.")


class BatchSearchRequest(_Base):
    vectors: list[list[float]] = Field(..., min_length=1, max_length=MAX_BATCH)
    k: int = Field(10, ge=1, le=MAX_K)
    filter: Filter | None = None
    exclude: list[ItemIdT] = Field(default_factory=list, max_length=MAX_IDS)


class RecommendRequest(_Base):
    """Items like the positives, unlike the negatives, never the excluded (e.g. a user's already-seen list)."""

    positive: list[ItemIdT] = Field(..., min_length=1, max_length=MAX_IDS)
    negative: list[ItemIdT] = Field(default_factory=list, max_length=MAX_IDS)
    exclude: list[ItemIdT] = Field(default_factory=list, max_length=MAX_IDS)
    k: int = Field(20, ge=1, le=MAX_K)
    filter: Filter | None = None
    negative_weight: float = Field(0.5, ge=0.0, le=10.0)


class Hit(BaseModel):
    rank: int
    id: int
    score: float = Field(..., description="Cosine similarity to the query.")
    path: str = Field(..., description="Path relative to its indexed folder.")
    label: str | None
    thumbnail: str = Field(..., description="URL of a JPEG thumbnail.")


class SearchResponse(BaseModel):
    results: list[Hit]
    k: int
    took_ms: float


class BatchSearchResponse(BaseModel):
    results: list[list[Hit]]
    k: int
    took_ms: float


class ItemResponse(BaseModel):
    id: int
    path: str
    label: str | None
    root: str
    bytes: int
    mtime_ns: int
    thumbnail: str


class DuplicateHit(Hit):
    hash_distance: int | None = Field(
        ..., description="Perceptual-hash distance to the item (bits of 64; null: no hash)."
    )
    reason: str = Field(..., description="Why it is a near-duplicate: cosine, hash or cosine+hash.")


class DuplicatesResponse(BaseModel):
    id: int
    threshold: float = Field(..., description="Cosine similarity at or above which items are near-duplicates.")
    hash_distance: int = Field(..., description="Hash distance at or below which hash_threshold suffices (-1: off).")
    hash_threshold: float = Field(..., description="The lower cosine bar for items with a close hash.")
    representative: int = Field(..., description="The most original-looking member (most pixels, colour, oldest).")
    group_size: int = Field(..., description="Items in the group, this one included (1: no near-duplicates).")
    duplicates: list[DuplicateHit] = Field(..., description="The other members, by similarity to this item.")


class HealthResponse(BaseModel):
    status: str
    count: int
    generation: int


class ReloadResponse(BaseModel):
    reloaded: bool
    generation: int
    count: int


class ErrorResponse(BaseModel):
    error: str = Field(..., description="A short code: not_found, bad_request, bad_image, invalid_request...")
    detail: str = Field(..., description="What went wrong, in words.")
