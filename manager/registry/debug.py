"""HTTP debugging of registry requests: what a transfer's ``RegistryResolver.http_debug`` asks for.

containerd wraps the resolver's HTTP client (``pkg/httpdbg``): with ``DEBUG`` every request and
response is dumped as HTTP/1.1 text to the transfer's ``logs_stream`` (or the daemon's log when
there is none); with ``TRACE`` connection events go to the daemon's log at debug level;
``BOTH`` does both. :class:`HttpTap` is that wrapper for :class:`~.session.Session`: the session
calls :meth:`HttpTap.request` before sending and :meth:`HttpTap.response` when the status and
headers are in, and passes :meth:`HttpTap.trace` as httpcore's ``trace`` extension.

Two differences from Go's dumps, on purpose: bodies are not dumped (blob bodies are streamed
and may be gigabytes; Go's ``DumpResponse`` reads them whole into memory), and the values of
``Authorization`` headers are replaced by their scheme and ``***``, so that a log shared for
debugging holds no secret. Requests to a token realm are not dumped (containerd's are not
either: its authorizer uses a client of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx
import structlog

log = structlog.get_logger(__name__)

#: ``Authorization``-like headers whose values are redacted in dumps.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization"})

Sink = Callable[[bytes], None]


def _redact(name: str, value: str) -> str:
    if name.lower() not in SECRET_HEADERS:
        return value
    scheme, _, _ = value.partition(" ")
    return f"{scheme} ***" if scheme else "***"


def _canonical(name: str) -> str:
    """A header name as Go writes it (``Content-Type``): HTTP/1.1 libraries lower-case them."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _headers(headers: httpx.Headers) -> str:
    return "".join(f"{_canonical(name)}: {_redact(name, value)}\r\n" for name, value in headers.multi_items())


def dump_request(request: httpx.Request) -> bytes:
    """``request`` as HTTP/1.1 text (request line, Host, headers, blank line), as Go's
    ``httputil.DumpRequestOut`` writes it, without the body."""
    target = request.url.raw_path.decode("ascii", "replace")
    lines = f"{request.method} {target} HTTP/1.1\r\n"
    if "host" not in request.headers:
        lines += f"Host: {request.url.netloc.decode('ascii', 'replace')}\r\n"
    return (lines + _headers(request.headers) + "\r\n").encode()


def dump_response(response: httpx.Response) -> bytes:
    """``response``'s status line and headers as HTTP/1.1 text, without the body."""
    version = response.http_version or "HTTP/1.1"
    line = f"{version} {response.status_code} {response.reason_phrase}".rstrip() + "\r\n"
    return (line + _headers(response.headers) + "\r\n").encode()


class HttpTap:
    """Dumps requests and responses to ``sink`` (``dump``) and logs connection events
    (``trace``). ``sink`` None with ``dump`` set writes the dumps to the daemon's log."""

    def __init__(self, *, dump: bool, trace: bool, sink: Sink | None = None,
                 context: Mapping[str, str] | None = None) -> None:
        self.dump = dump
        self.tracing = trace
        self.sink = sink
        self.context = dict(context or {})

    def _write(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)
        else:
            log.info("registry http", dump=data.decode("utf-8", "replace"), **self.context)

    def request(self, request: httpx.Request) -> None:
        if self.dump:
            self._write(dump_request(request))

    def response(self, response: httpx.Response) -> None:
        if self.dump:
            self._write(dump_response(response))

    def extensions(self) -> dict[str, Any]:
        """The request extensions that turn on httpcore's connection tracing, when asked for."""
        return {"trace": self.trace} if self.tracing else {}

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's trace callback: connection set-up and reuse, as Go's ``httptrace`` logs
        DNS lookups and connections."""
        if event.startswith(("connection.", "http11.send_request_headers.started",
                             "http2.send_request_headers.started")) and event.endswith(("started", "complete")):
            fields = {key: repr(value) for key, value in info.items() if key in ("host", "port", "return_value")}
            log.debug("registry http trace", trace_event=event, **fields, **self.context)
