"""Typed item attributes: checking values written by callers against an index's schema (layer: base)."""

from __future__ import annotations

from .errors import SimsearchError

TYPES = ("int", "float", "bool", "str", "tags")
RESERVED = frozenset({"key", "id", "score", "rank", "path", "photos", "images"})
MAX_TEXT = 10_000


class AttributeValueError(SimsearchError):
    """An attribute value that does not fit the index's schema."""


def value_type(value) -> str | None:
    """The attribute type of a JSON value; None for values no attribute can hold."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "tags"
    return None


def check_text(text: str, what: str) -> str:
    if not isinstance(text, str) or not text:
        raise AttributeValueError(f"{what} must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise AttributeValueError(f"{what} is longer than {MAX_TEXT} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise AttributeValueError(f"{what} is not valid Unicode text (lone surrogate)") from None
    return text


def check_attributes(attrs: dict, schema: dict[str, str], *, partial: bool = False) -> tuple[dict, dict[str, str]]:
    """Validate ``attrs`` against ``schema``; returns them (ints widened where the schema says float) and the
    schema with any new attributes. ``partial`` (a patch) allows None, meaning "remove this attribute"."""
    if not isinstance(attrs, dict):
        raise AttributeValueError("attributes must be a JSON object")
    out: dict = {}
    schema = dict(schema)
    for name, value in attrs.items():
        check_text(name, "an attribute name")
        if name in RESERVED:
            raise AttributeValueError(f"{name!r} is reserved and cannot be an attribute name")
        if value is None:
            if partial:
                out[name] = None
            continue
        typ = value_type(value)
        if typ is None:
            raise AttributeValueError(
                f"attribute {name!r}: {type(value).__name__} values are not supported ({', '.join(TYPES)})"
            )
        for text in value if typ == "tags" else [value] if typ == "str" else []:
            check_text(text, f"attribute {name!r}")
        want = schema.get(name)
        if want is None:
            schema[name] = typ
        elif want == "float" and typ == "int":
            value = float(value)
        elif want != typ:
            raise AttributeValueError(f"attribute {name!r} holds {want} values in this index, not {typ} ({value!r})")
        out[name] = value
    return out, schema
