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


def describe_validation(errors) -> str:
    """Pydantic's errors in one line: ``field: reason; ...`` (JSON syntax errors with their position)."""
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form"))
        if e.get("type") == "json_invalid":
            reason = str((e.get("ctx") or {}).get("error") or e.get("msg", "")).removeprefix("Invalid JSON: ")
            parts.append(f"the body is not valid JSON: {reason}")
        else:
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def mib(n: int) -> str:
    """A byte count as people read limits: ``20 MiB`` for 20 * 1024 * 1024, ``1.5 KiB``..."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{round(n / size, 2):g} {unit}"
    return f"{n} bytes"
