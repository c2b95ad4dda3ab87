"""The head of an HTTP/1.1 request, parsed by hand for the streaming server's one port.

The streaming server has to read a request before it knows which protocol answers it: a
WebSocket upgrade goes to the ``websockets`` library, a ``SPDY/3.1`` upgrade to our own SPDY
connection, anything else gets an error. Only the head is ever read (these requests have no
body), so a small parser with hard limits does: :data:`MAX_HEAD` bytes and :data:`MAX_HEADERS`
lines, a strict request line, header names that are HTTP tokens, no obsolete line folding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus

MAX_HEAD = 16 * 1024
MAX_HEADERS = 100
END = b"\r\n\r\n"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[\x21-\x7e]+")


class BadRequest(ValueError):
    """The head cannot be served; ``status`` is what to answer."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def get(self, name: str) -> str:
        """The first value of header ``name`` ("" when absent); names are case-insensitive."""
        values = self.get_all(name)
        return values[0] if values else ""

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def has(self, name: str) -> bool:
        lowered = name.lower()
        return any(key.lower() == lowered for key, _ in self.headers)


def head_end(buffer: bytes | bytearray) -> int:
    """The length of the head in ``buffer`` (through its blank line), or 0 while it is incomplete.
    Raises :class:`BadRequest` (431) once an incomplete head is longer than :data:`MAX_HEAD`."""
    end = buffer.find(END, 0, MAX_HEAD + len(END))
    if end >= 0:
        return end + len(END)
    if len(buffer) > MAX_HEAD:
        raise BadRequest("request header too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    return 0


def parse(head: bytes) -> RequestHead:
    """The request in ``head`` (as :func:`head_end` delimits it)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable request head") from exc
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise BadRequest("empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]) \
            or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest("malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest("too many header fields", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or "\n" in value or "\r" in value:
            raise BadRequest("malformed header field")
        headers.append((name, value.strip(" \t")))
    return RequestHead(parts[0], parts[1], parts[2], headers)


def response(status: HTTPStatus, body: str = "", headers: list[tuple[str, str]] | None = None) -> bytes:
    """A whole response that ends the exchange (``Connection: close``), text/plain as Go's
    ``http.Error`` writes it."""
    payload = body.encode()
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if status != HTTPStatus.SWITCHING_PROTOCOLS:
        lines += ["Content-Type: text/plain; charset=utf-8", "X-Content-Type-Options: nosniff",
                  f"Content-Length: {len(payload)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
