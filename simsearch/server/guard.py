"""The service's outer ASGI layer: Host check, API key, body size limit, HEAD, keys kept out of logs.

- ``Host`` must name one of the allowed hosts (default: the bound host and the localhost names), so that a page
  on another site cannot reach a loopback server through DNS rebinding: otherwise 400.
- The API key (when the service has one) is read from the ``X-API-Key`` header, ``Authorization: Bearer``, or
  the ``simsearch_api_key`` cookie, and compared in constant time. ``/?api_key=KEY`` is accepted once, on the
  page only: it answers with a redirect that sets the cookie and drops the key from the address.
- ``api_key`` is removed from every query string before the app (and so the access log) sees it.
- Request bodies over the limit are refused (413) from their ``Content-Length`` or while they are read.
- ``HEAD`` is answered like ``GET``, without the body.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from urllib.parse import parse_qsl, urlencode

from .errors import error_bytes, mib

API_KEY_HEADER = b"x-api-key"
API_KEY_COOKIE = "simsearch_api_key"
API_KEY_PARAM = "api_key"
OPEN_PATHS = frozenset({"/health"})
_KEY_IN_TEXT = re.compile(r"(api_key=)[^&\s\"']*", re.IGNORECASE)


class BodyTooLargeError(Exception):
    """Raised while a request body is read past the limit (answered 413)."""


def redact_keys(text: str) -> str:
    """``text`` with the value of every ``api_key=`` parameter replaced."""
    return _KEY_IN_TEXT.sub(r"\1[redacted]", text)


class RedactKeys(logging.Filter):
    """A logging filter that removes API keys from messages (installed on uvicorn's loggers by ``serve``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(redact_keys(a) if isinstance(a, str) else a for a in args)
        if isinstance(record.msg, str) and API_KEY_PARAM in record.msg.lower():
            record.msg = redact_keys(record.msg)
        return True


def cookie_value(header: bytes, name: str) -> str | None:
    """One cookie's value, read leniently: other cookies of the host may hold anything (JSON, spaces, non-ASCII)."""
    for part in header.decode("latin-1").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def host_name(header: bytes) -> str:
    """The host of a ``Host`` header, lower case, without port or IPv6 brackets."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    if "*" in allowed or host in allowed:
        return True
    return any(a.startswith("*.") and host.endswith(a[1:]) for a in allowed)


async def send_simple(send, status: int, body: bytes, content_type: bytes, extra_headers=()) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send, status: int, detail: str, extra_headers=()) -> None:
    await send_simple(send, status, error_bytes(status, detail), b"application/json", extra_headers)


class Guard:
    """Pure ASGI middleware; see the module's docstring."""

    def __init__(self, app, *, api_key: str | None, max_body: int, allowed_hosts: frozenset[str]):
        self.app, self.max_body, self.allowed_hosts = app, max_body, allowed_hosts
        self._key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None

    def _key_ok(self, given: str | bytes | None) -> bool:
        if given is None or self._key_digest is None:
            return False
        raw = given.encode("utf-8", "surrogateescape") if isinstance(given, str) else given
        # digests of equal length: the comparison takes the same time whatever the key's length and content
        return hmac.compare_digest(hashlib.sha256(raw).digest(), self._key_digest)

    def _given_key(self, headers: dict) -> bytes | str | None:
        given = headers.get(API_KEY_HEADER)
        if given is None:
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
        if given is None and b"cookie" in headers:
            return cookie_value(headers[b"cookie"], API_KEY_COOKIE)
        return given

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host")
        if host is not None and not host_allowed(host_name(host), self.allowed_hosts):
            name = host.decode("latin-1")[:100]
            detail = f"the Host {name!r} is not served here: start the server with --allowed-hosts {host_name(host)}"
            return await send_error(send, 400, detail)
        query_key = self._take_query_key(scope)
        needs_key = self._key_digest is not None and scope["path"] not in OPEN_PATHS
        if needs_key and not self._key_ok(self._given_key(headers)):
            return await self._refuse(scope, send, query_key)
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
            send = _without_body(send)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await send_error(send, 400, "invalid Content-Length")
            if n > self.max_body:
                return await send_error(send, 413, self.too_large())
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLargeError(self.too_large())
            return message

        return await self.app(scope, limited_receive, send)

    def _take_query_key(self, scope) -> str | None:
        """Remove ``api_key`` from the query string, in place (uvicorn's access log reads this same scope)."""
        qs = scope.get("query_string", b"")
        if API_KEY_PARAM.encode() not in qs.lower():
            return None
        pairs = parse_qsl(qs.decode("latin-1"), keep_blank_values=True)
        key = next((v for k, v in pairs if k.lower() == API_KEY_PARAM), None)
        scope["query_string"] = urlencode([(k, v) for k, v in pairs if k.lower() != API_KEY_PARAM]).encode()
        return key

    async def _refuse(self, scope, send, query_key: str | None):
        root = scope.get("root_path", "").rstrip("/")
        if scope["path"] == "/" and self._key_ok(query_key):
            # a person opening /?api_key=KEY: the key moves to a cookie, and out of the address bar and history
            secure = "; Secure" if scope.get("scheme") == "https" else ""
            cookie = f"{API_KEY_COOKIE}={query_key}; Path={root or '/'}; HttpOnly; SameSite=Strict{secure}"
            rest = scope.get("query_string", b"").decode("latin-1")
            location = f"{root}/" + (f"?{rest}" if rest else "")
            extra = [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1"))]
            return await send_simple(send, 303, b"", b"text/plain", [*extra, (b"cache-control", b"no-store")])
        if scope["path"] == "/":
            body = (
                b"<!doctype html><title>simsearch: API key needed</title><p>This simsearch service needs an "
                b"API key: open <code>/?api_key=YOUR_KEY</code> once.</p>"
            )
            return await send_simple(send, 401, body, b"text/html; charset=utf-8")
        detail = "an API key is required: send it in the X-API-Key header (or Authorization: Bearer KEY)"
        return await send_error(send, 401, detail, [(b"www-authenticate", b"Bearer")])

    def too_large(self) -> str:
        return f"the request body is larger than the limit of {mib(self.max_body)} (--max-upload-mb)"


def _without_body(send):
    async def send_head(message):
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head
