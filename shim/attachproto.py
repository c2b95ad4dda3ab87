"""Attaching to a container's init process: the stdin URI that asks for it, and the wire format.

Kubernetes' Attach streams a running container's output to a client and (when the container was
created with ``stdin``) the client's input to the container. containerd's CRI plugin does this in
the daemon, which holds the container's FIFOs. ctrpy's shim holds the container's stdio and
writes the CRI log itself (:mod:`ctrpy.shim.crilog`), so it also serves attach clients: each
connects to a unix socket next to the shim's ttrpc socket, and the shim copies the output to
every client besides the log, and what clients send into the container's stdin. Since the socket
belongs to the shim, attaching works the same before and after ctrpyd restarts.

Why a socket of our own rather than a streaming call on the shim's ttrpc server: the task
service is containerd's API (no room for a call of ours without a second service and its
generated code), an RPC stream's flow control would hide a slow client where the shim must see it at
once (here: the size of the socket's send buffer), and a plain stream needs nothing but the
standard library on both ends.

A client asks for it through the stdin field of Tasks.Create::

    stdin = "ctrpy-attach://?stdin=1&stdin_once=1"

``stdin=1``: the container gets a stdin (a pipe, or the terminal) that the shim holds open and
attach clients write to; ``stdin=0``: no stdin (``/dev/null``), output only. ``stdin_once=1``: the
first client with stdin that ends it (or goes away) closes the container's stdin for good, and
later clients get none; without a terminal only, as containerd does (with one, the client's end
only detaches it). The socket is :func:`socket_for` of the shim's socket path.

Frames, both ways: one byte kind, four bytes big-endian length, then the payload (at most
:data:`MAX_FRAME` bytes). The client first sends HELLO with JSON ``{"stdin", "stdout",
"stderr"}`` (what it wants); the shim answers HELLO with ``{"stdin", "tty"}`` (stdin as granted:
false when the container has none or it was closed). Then the client sends STDIN data and
STDIN_EOF; the shim sends STDOUT and STDERR data (only those asked for; a terminal's output is
STDOUT) and END when the client is done: the container's output ended (it exited), or the
client's stdin ended and that detaches it. A client that does not keep up is disconnected, never
waited for.

This module needs only the standard library and :mod:`ctrpy.errors`, so that ctrpyd can use it
without importing the shim's server code.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from ctrpy.errors import InvalidArgument

SCHEME = "ctrpy-attach"
SOCKET_SUFFIX = "-a"

STDIN, STDOUT, STDERR, END, STDIN_EOF, HELLO = 0, 1, 2, 3, 4, 5
HEADER = struct.Struct(">BI")
MAX_FRAME = 1024 * 1024


@dataclass(frozen=True)
class Options:
    """What a ``ctrpy-attach://`` URI asks for."""

    stdin: bool = False
    stdin_once: bool = False


def is_uri(value: str) -> bool:
    """Whether a stdin field asks for attach clients."""
    return value.startswith(f"{SCHEME}:")


def uri(*, stdin: bool, stdin_once: bool) -> str:
    """The stdin field that makes the shim serve attach clients."""
    return f"{SCHEME}://?stdin={int(stdin)}&stdin_once={int(stdin_once)}"


def parse_uri(value: str) -> Options:
    """The options of a ``ctrpy-attach://`` URI; InvalidArgument when it is malformed."""
    parts = urlsplit(value)
    if parts.scheme != SCHEME or parts.netloc or parts.path not in ("", "/"):
        raise InvalidArgument(f'"{value}" is not a {SCHEME}:// URI')
    flags = {"stdin": False, "stdin_once": False}
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key not in flags or text not in ("0", "1", "true", "false"):
            raise InvalidArgument(f'attach URI "{value}": bad parameter "{key}={text}"')
        flags[key] = text in ("1", "true")
    return Options(**flags)


def socket_for(shim_socket: str) -> str:
    """The attach socket of the shim whose ttrpc socket is at ``shim_socket`` (a path)."""
    return shim_socket + SOCKET_SUFFIX


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    return HEADER.pack(kind, len(payload)) + payload


def hello(**fields: bool) -> bytes:
    """A HELLO frame carrying ``fields`` as JSON."""
    return frame(HELLO, json.dumps(fields).encode())


def parse_hello(payload: bytes) -> dict[str, bool]:
    """The flags of a HELLO payload (anything but a JSON object of booleans counts as false)."""
    try:
        value = json.loads(payload)
    except ValueError:
        raise InvalidArgument("attach: malformed HELLO") from None
    if not isinstance(value, dict):
        raise InvalidArgument("attach: malformed HELLO")
    return {str(k): v is True for k, v in value.items()}


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The next frame (kind, payload); None at the end of the stream (or a truncated frame).
    InvalidArgument for a frame over :data:`MAX_FRAME`."""
    try:
        kind, length = HEADER.unpack(await reader.readexactly(HEADER.size))
        if length > MAX_FRAME:
            raise InvalidArgument(f"attach: frame of {length} bytes")
        return kind, await reader.readexactly(length) if length else b""
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
