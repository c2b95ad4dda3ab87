"""The calling side of ttrpc: one connection per client, calls multiplexed on it.

The connection is dialled at the first call and again at the first call after it was lost; a
call in flight when it is lost fails with Unavailable. A call's ``timeout`` covers the dial
too, and ends the wait with DeadlineExceeded (ttrpc has no frame that cancels a call; the server
stops on its own when the timeout sent along with the request passes).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from ctrpy.api.ttrpc import request_pb2
from ctrpy.errors import DeadlineExceeded, Unavailable, from_status

from .wire import REQUEST, RESPONSE, FrameReader, frame

M = TypeVar("M", bound=Message)

_FIRST_STREAM = 1  # clients use odd stream ids
_LAST_STREAM = (1 << 31) - 1


def socket_path(address: str) -> str:
    """The filesystem path in ``unix:///path`` / ``unix:path`` / ``/path``."""
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            return address[len(prefix) :]
    return address


class Client:
    """A client of the ttrpc server listening on the unix socket ``address``: a path, or
    ``unix:///path`` / ``unix:path`` as containerd writes a shim's address."""

    def __init__(self, address: str) -> None:
        self.path = socket_path(address)
        self._connection: _Connection | None = None
        self._dialling: asyncio.Lock | None = None
        self._users = 1  # see share()

    def share(self) -> Client:
        """This client for one more user, who closes it as its own: the connection is closed
        when the last user closes (the tasks of a pod's shim share one)."""
        self._users += 1
        return self

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> M:
        """Call ``service/method`` and decode its answer as ``response_type``; raise the
        ctrpy.errors kind of a failed status, Unavailable when the server cannot be reached or
        the connection is lost, DeadlineExceeded when ``timeout`` seconds pass first."""
        envelope = request_pb2.Request(service=service, method=method, payload=request.SerializeToString())
        if timeout is not None:
            envelope.timeout_nano = max(1, int(timeout * 1e9))
        for key, value in metadata:
            envelope.metadata.add(key=key, value=value)
        try:
            if timeout is None:
                payload = await self._exchange(envelope)
            else:
                async with asyncio.timeout(timeout) as scope:
                    payload = await self._exchange(envelope)
        except TimeoutError:
            if timeout is not None and scope.expired():
                raise DeadlineExceeded(f"{service}/{method} on {self.path}") from None
            raise
        try:
            response = request_pb2.Response.FromString(payload)
            if response.status.code != 0:
                raise from_status(response.status.code, response.status.message)
            return response_type.FromString(response.payload)
        except DecodeError as error:
            raise Unavailable(f"ttrpc {self.path}: malformed answer to {service}/{method}: {error}") from None

    async def _exchange(self, envelope: request_pb2.Request) -> bytes:
        connection = await self._connect()
        return await connection.exchange(envelope.SerializeToString())

    async def _connect(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.lost:
            return connection
        if self._dialling is None:
            self._dialling = asyncio.Lock()
        async with self._dialling:  # concurrent first calls share one dial
            connection = self._connection
            if connection is not None and not connection.lost:
                return connection
            loop = asyncio.get_running_loop()
            try:
                _, connection = await loop.create_unix_connection(_Connection, self.path)
            except OSError as error:
                reason = error.strerror or str(error) or type(error).__name__
                raise Unavailable(f"ttrpc {self.path}: {reason}") from None
            self._connection = connection
            return connection

    async def close(self) -> None:
        """Close the connection once every user closed (see :meth:`share`); calls in flight then
        fail with Unavailable. A later call dials again."""
        if self._users > 1:
            self._users -= 1
            return
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Connection(asyncio.Protocol):
    """The client's end of one connection: requests out, responses matched by stream id."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.lost = False
        self._next_stream = _FIRST_STREAM

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for item in self.reader.feed(data):
            if item.kind != RESPONSE:
                continue
            waiter = self.pending.pop(item.stream_id, None)
            if waiter is None or waiter.done():
                continue  # the caller stopped waiting (its timeout passed)
            if item.payload is None:
                waiter.set_exception(Unavailable(f"ttrpc answer of {item.length} bytes is too long"))
            else:
                waiter.set_result(item.payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = f": {os.strerror(exc.errno)}" if isinstance(exc, OSError) and exc.errno else ""
        for waiter in self.pending.values():
            if not waiter.done():
                waiter.set_exception(Unavailable(f"ttrpc connection closed{reason}"))
        self.pending.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes) -> bytes:
        """Send one request and wait for its response's payload."""
        if self.lost or self.transport is None:
            raise Unavailable("ttrpc connection closed")
        stream_id = self._next_stream
        self._next_stream = stream_id + 2 if stream_id + 2 <= _LAST_STREAM else _FIRST_STREAM
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = waiter
        try:
            self.transport.write(frame(stream_id, REQUEST, request))
            return await waiter
        finally:
            self.pending.pop(stream_id, None)
