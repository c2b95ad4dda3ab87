"""Telling a shim started by an older ctrpyd (one that spoke gRPC) from a dead one.

ctrpyd and its shims spoke gRPC before they spoke ttrpc. A shim outlives ctrpyd, so a newer
ctrpyd may find, at start-up, a shim that answers on its socket but not in ttrpc: to ttrpc it
looks like a shim that closes the connection, and a shim that cannot be reached is cleaned up
as dead (``ctrpy-shim delete``), which would kill a container that runs fine. Before that,
:func:`speaks_grpc` asks the socket in HTTP/2: a gRPC server answers the client preface with
its SETTINGS frame. Such a shim is left running, and its task is reported as not managed.
"""

from __future__ import annotations

import asyncio

#: HTTP/2's client connection preface, then an empty SETTINGS frame (RFC 9113, 3.4 and 6.5).
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 0x4  # the type of a SETTINGS frame, the fourth byte of its 9-byte header
PROBE_TIMEOUT = 1.0


async def speaks_grpc(path: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the server on the unix socket ``path`` answers HTTP/2 (a gRPC server does)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(_PREFACE)
            head = await reader.readexactly(9)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
    return head[3] == _SETTINGS
