"""Errors of the HTTP service: every one is answered as JSON ``{"error": code, "detail": reason}``."""

from __future__ import annotations

import json

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": ...}`` with an HTTP status."""

    def __init__(self, status: int, detail: str, code: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code or ERROR_CODES.get(status, "error")


def error_body(status: int, detail: str, code: str | None = None) -> dict:
    return {"error": code or ERROR_CODES.get(status, "error"), "detail": detail}


def error_bytes(status: int, detail: str, code: str | None = None) -> bytes:
    return json.dumps(error_body(status, detail, code)).encode()


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "constrained-str", "constrained-int"}


def _loc(e: dict) -> str:
    """A field's path, without pydantic's union branch tags (``function-after[...]``, ``list[...]``, ``str``)."""
    parts = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form")]
    # union branches are tagged with their type ("str", "list[...]") or model class ("Filter"); fields are lower case
    return ".".join(x for x in parts if "[" not in x and x not in _TYPE_TAGS and not x[:1].isupper())


def describe_validation(errors) -> str:
    """Pydantic's errors in one line: ``field: reason; ...`` (JSON syntax errors with their position).

    Where a value matched none of a union's branches, the branch whose check failed on the value itself (a list
    too long, say) is reported rather than the branches of another type.
    """
    errors = list(errors)
    by_field: dict[str, list[dict]] = {}
    for e in errors:
        by_field.setdefault(_loc(e), []).append(e)
    chosen = []
    for loc, group in by_field.items():
        specific = [e for e in group if not str(e.get("type", "")).endswith("_type")]
        deeper = any(other != loc and other.startswith(f"{loc}.") for other in by_field)
        if not specific and deeper:  # another branch of a union got further into this value: its reason wins
            continue
        chosen.extend(specific or group[:1])
    parts = []
    for e in chosen[:5]:
        if e.get("type") == "json_invalid":
            reason = str((e.get("ctx") or {}).get("error") or e.get("msg", "")).removeprefix("Invalid JSON: ")
            if "hex escape" in reason or "surrogate" in reason:
                reason += " (a lone surrogate such as \\ud800 is not text)"
            parts.append(f"the body is not valid JSON: {reason}")
            continue
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        loc = _loc(e)
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (and {len(chosen) - 5} more)" if len(chosen) > 5 else ""
    return "; ".join(parts) + more


def mib(n: int) -> str:
    """A byte count as people read limits: ``20 MiB`` for 20 * 1024 * 1024, ``1.5 KiB``..."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{round(n / size, 2):g} {unit}"
    return f"{n} bytes"
