"""Request and response bodies of the HTTP service (pydantic models; they also make the OpenAPI docs).

Every input is bounded here, from :data:`simsearch.config.LIMITS` (shown in ``/info``): text is proper UTF-8 of
at most ``serve_max_text`` characters, every list has a cap, and a request's total work is capped too (vectors x
k, ids). A request over a limit is answered 422 with the limit in the message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ..config.limits import LIMITS
from ..rules import Rules

MAX_ID = 2**63 - 1


def utf8_text(value: str) -> str:
    """Refuse strings that are not proper Unicode (lone surrogates cannot be stored, compared or printed)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text (it holds a lone surrogate code point)") from None
    return value


Text = Annotated[str, Field(max_length=LIMITS.serve_max_text), AfterValidator(utf8_text)]
ItemIdT = Annotated[int, Field(ge=0, le=MAX_ID)]
ItemRefT = Annotated[
    ItemIdT | Text, Field(description="An item: its id (a number) or its key (a string, in catalogue indexes).")
]
K = Annotated[int, Field(ge=1, le=LIMITS.serve_max_k, description="Number of results.")]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filter(BaseModel):
    """Only results whose metadata match (all given conditions). Besides ``label`` and ``path_prefix``, any
    attribute of a catalogue index: ``{"category": "shoes", "price": {"lt": 100}}`` (see docs/filters.md; the
    library checks them against the index's attributes, with caps on values and conditions)."""

    model_config = ConfigDict(extra="allow")

    label: Text | Annotated[list[Text], Field(max_length=LIMITS.serve_max_values)] | None = Field(
        None, description=f"A label, or a list of labels (any of them; at most {LIMITS.serve_max_values:,})."
    )
    path_prefix: Text | None = Field(None, description="Path (relative to its root) starts with this.")

    def as_dict(self) -> dict | None:
        """The library's filter (``None``: no condition). A list of one label is that label."""
        label = self.label
        if isinstance(label, list):
            label = list(dict.fromkeys(label)) or None
            if label is not None and len(label) == 1:
                label = label[0]
        d = {k: v for k, v in (("label", label), ("path_prefix", self.path_prefix)) if v not in (None, "")}
        d.update(self.model_extra or {})
        return d or None


FilterT = Annotated[
    Filter | Text | None,
    Field(description='Conditions as an object, or as a string: `category = "shoes" and price < 100`.'),
]


def filter_value(f: Filter | str | None) -> dict | str | None:
    """A request's filter in the library's form."""
    if isinstance(f, Filter):
        return f.as_dict()
    return f or None


def filter_of(labels: list[str] | None, path_prefix: str | None) -> dict | None:
    """The filter of query-string or form parameters (a repeated ``label`` means any of them)."""
    return Filter(label=[x for x in labels or [] if x] or None, path_prefix=path_prefix or None).as_dict()


AugmentT = Annotated[
    Literal["auto", "on", "none"],
    Field(description="auto: the index's augmented vectors when it has them; none: the raw ones; on: require them."),
]


class RulesMixin(_Base):
    """Business rules on the results (see :class:`simsearch.Rules`); each keeps returning k results."""

    fields: list[Text] | None = Field(
        None, max_length=LIMITS.serve_max_values, description="Attributes each result carries (default: all)."
    )
    max_per: dict[Text, Annotated[int, Field(ge=1, le=LIMITS.serve_max_k)]] = Field(
        default_factory=dict, max_length=16, description='At most N results per attribute value: {"brand": 2}.'
    )
    collapse_duplicates: float | None = Field(
        None, gt=0, le=1, description="One result per group of near-duplicates at this cosine similarity."
    )

    def rules(self) -> Rules:
        return Rules(
            max_per=dict(self.max_per),
            collapse_duplicates=self.collapse_duplicates,
            fields=tuple(self.fields) if self.fields is not None else None,
        )

    @property
    def has_rules(self) -> bool:
        return bool(self.max_per) or self.collapse_duplicates is not None or self.fields is not None


class SearchRequest(RulesMixin):
    """Search with a vector (the index's dimension, e.g. from another call or a model of the same backbone)."""

    vector: list[float] = Field(
        ..., min_length=1, max_length=LIMITS.max_dim, description="Query embedding (any norm, finite, non-zero)."
    )
    k: K = 10
    filter: FilterT = None
    exclude: list[ItemRefT] = Field(
        default_factory=list, max_length=LIMITS.serve_max_ids, description="Items never to return (ids or keys)."
    )
    augment: AugmentT = "auto"


class ImageSearchParams(_Base):
    """Parameters of a search by uploaded image (form fields, or the query string with a raw image body)."""

    k: K = 10
    label: list[Text] = Field(default_factory=list, max_length=LIMITS.serve_max_values)
    path_prefix: Text | None = None
    augment: AugmentT = "auto"


class BatchSearchRequest(_Base):
    """Many vectors at once; ``len(vectors) * k`` is capped (``serve_max_work`` in ``/info``)."""

    vectors: list[Annotated[list[float], Field(min_length=1, max_length=LIMITS.max_dim)]] = Field(
        ..., min_length=1, max_length=LIMITS.serve_max_batch
    )
    k: K = 10
    filter: FilterT = None
    exclude: list[ItemRefT] = Field(default_factory=list, max_length=LIMITS.serve_max_ids)
    augment: AugmentT = "auto"

    @model_validator(mode="after")
    def _bounded_work(self):
        work = len(self.vectors) * self.k
        if work > LIMITS.serve_max_work:
            raise ValueError(
                f"{len(self.vectors)} vectors x k {self.k} = {work:,} results is over the limit of "
                f"{LIMITS.serve_max_work:,} per request: send fewer vectors or ask for fewer results"
            )
        return self


class RecommendRequest(RulesMixin):
    """Items like the positives, unlike the negatives, never the excluded (e.g. a user's already-seen list)."""

    positive: list[ItemRefT] = Field(..., min_length=1, max_length=LIMITS.serve_max_ids)
    negative: list[ItemRefT] = Field(default_factory=list, max_length=LIMITS.serve_max_ids)
    exclude: list[ItemRefT] = Field(default_factory=list, max_length=LIMITS.serve_max_ids)
    k: K = 20
    filter: FilterT = None
    negative_weight: float = Field(0.5, ge=0.0, le=10.0)
    augment: AugmentT = "auto"

    @model_validator(mode="after")
    def _bounded_ids(self):
        n = len(self.positive) + len(self.negative) + len(self.exclude)
        if n > LIMITS.serve_max_ids:
            raise ValueError(
                f"{n:,} ids in positive, negative and exclude together is over the limit of {LIMITS.serve_max_ids:,}"
            )
        return self


class Hit(BaseModel):
    """One result. Fields the library adds to its hits appear here too."""

    model_config = ConfigDict(extra="allow")
    rank: int
    id: int
    score: float = Field(..., description="Cosine similarity to the query.")
    path: str = Field(..., description="Path relative to its indexed folder.")
    label: str | None
    thumbnail: str = Field(..., description="URL of a JPEG thumbnail.")
    image: str = Field(..., description="URL of the indexed image file.")


class SearchResponse(BaseModel):
    results: list[Hit]
    k: int
    took_ms: float


class BatchSearchResponse(BaseModel):
    results: list[list[Hit]]
    k: int
    took_ms: float


class ItemResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    key: str
    attributes: dict
    photos: int = Field(..., description="Number of photos (the first one's path, size and mtime are shown).")
    path: str
    label: str | None
    bytes: int
    mtime_ns: int
    thumbnail: str
    image: str


class VectorResponse(BaseModel):
    id: int
    dim: int
    vector: list[float] = Field(..., description="The item's embedding (unit length; several photos: their mean).")


class LabelCount(BaseModel):
    label: str | None
    count: int


class LabelsResponse(BaseModel):
    labels: list[LabelCount] = Field(..., description="Most frequent first (ties by name).")
    total: int = Field(..., description="Distinct labels in the index (the list may be cut at `limit`).")


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
