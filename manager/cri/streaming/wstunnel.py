"""A byte stream carried in binary WebSocket messages, for SPDY tunnelled over WebSocket.

client-go's tunnelling dialer (``crictl port-forward --transport websocket``, kubectl against an
API server that tunnels) asks for the subprotocol ``SPDY/3.1+portforward.k8s.io`` and then writes
the SPDY session's bytes as binary messages, cut anywhere: a message is not a frame. Here those
bytes become an ordinary :class:`asyncio.StreamReader`/:class:`asyncio.StreamWriter` pair, so the
same :class:`.spdyconn.Connection` serves the tunnel as serves a raw socket.

How: an :class:`asyncio.Transport` of our own stands where a socket's would. What the SPDY side
writes is queued and sent one message per write, in order, by one task; past ``HIGH`` queued bytes
the writer's ``drain()`` waits (the protocol is paused), as on a socket. Received messages are fed
to the stream's protocol; when the reader holds too much, it pauses this transport and we stop
taking messages, so a fast client is pushed back by TCP under the WebSocket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.connection import Connection as WebSocket
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.server import ServerProtocol as _ServerProtocol
from websockets.typing import Subprotocol

HIGH = 256 * 1024
LOW = 64 * 1024


class ServerProtocol(_ServerProtocol):
    """websockets' server handshake, taking subprotocol names that are not HTTP tokens.

    client-go's tunnelling names (``SPDY/3.1+portforward.k8s.io``) contain a ``/``, which RFC
    6455 does not allow in a subprotocol and websockets' parser refuses with a 400;
    gorilla/websocket (the kubelet's, the API server's) takes any comma-separated names."""

    def process_subprotocol(self, headers: Headers) -> Subprotocol | None:
        offered = [Subprotocol(name.strip()) for value in headers.get_all("Sec-WebSocket-Protocol")
                   for name in value.split(",") if name.strip()]
        return self.select_subprotocol(offered)


class _Transport(asyncio.Transport):
    """The WebSocket as the transport under a StreamReaderProtocol."""

    def __init__(self, ws: WebSocket, protocol: asyncio.StreamReaderProtocol) -> None:
        super().__init__()
        self._ws = ws
        self._protocol = protocol
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._paused_writer = False
        self._closing = False
        self._lost = False
        self._wake = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()
        self._sender = asyncio.ensure_future(self._send_loop())

    # -- write side (asyncio.WriteTransport) -------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        self._wake.set()
        if self._queued > HIGH and not self._paused_writer:
            self._paused_writer = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._queued

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        """Send what is queued, then close the WebSocket."""
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self._closing = True
        self._queue.clear()
        self._ws.transport.abort()
        self._sender.cancel()
        self.lost(None)

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._ws.transport.get_extra_info(name, default)

    async def _send_loop(self) -> None:
        error: Exception | None = None
        try:
            while True:
                while not self._queue:
                    if self._closing:
                        await self._ws.close()
                        return
                    self._wake.clear()
                    await self._wake.wait()
                data = self._queue.popleft()
                await self._ws.send(data)
                self._queued -= len(data)
                if self._paused_writer and self._queued <= LOW:
                    self._paused_writer = False
                    self._protocol.resume_writing()
        except WsClosed as exc:
            error = ConnectionResetError(f"websocket closed: {exc}")
        finally:
            self._closing = True
            self._queue.clear()
            self.lost(error)

    # -- read side (asyncio.ReadTransport) ---------------------------------------------------

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    def is_reading(self) -> bool:
        return self.reading.is_set()

    def lost(self, error: Exception | None) -> None:
        """Tell the protocol, once, that the stream is over."""
        if not self._lost:
            self._lost = True
            self.reading.set()
            self._protocol.connection_lost(error)


async def serve(ws: WebSocket, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                limit: int = 1 << 20) -> None:
    """Run ``handler`` on the byte stream that ``ws``'s binary messages carry; returns when the
    handler does (then the WebSocket is closed) or raises what it raised."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = _Transport(ws, protocol)
    protocol.connection_made(transport)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)

    async def receive() -> None:
        try:
            async for message in ws:
                if isinstance(message, str):  # the tunnel is binary only (client-go refuses text too)
                    break
                await transport.reading.wait()
                protocol.data_received(message)
        except WsClosed:
            pass
        finally:
            protocol.eof_received()

    receiver = asyncio.ensure_future(receive())
    try:
        await handler(reader, writer)
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
