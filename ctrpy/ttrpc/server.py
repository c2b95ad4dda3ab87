"""The serving side of ttrpc: methods registered by service name, one task per call.

A call's handler runs as its own task, so a slow call (a Wait that lasts as long as the
process) holds up nothing else on the connection. As with gRPC, a handler is cancelled when its
caller's connection closes and when the caller's timeout passes; what must finish regardless
shields itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from ctrpy import errors
from ctrpy.api.ttrpc import request_pb2
from ctrpy.errors import CtrpyError, DeadlineExceeded, InvalidArgument, ResourceExhausted, status_number

from .wire import REQUEST, RESPONSE, Frame, FrameReader, frame

log = logging.getLogger("ctrpy.ttrpc")

UNKNOWN = 2  # the status code of an error that fits no kind


@dataclass(frozen=True)
class Context:
    """What a handler may want to know of its call besides the request."""

    service: str
    method: str
    metadata: Mapping[str, list[str]]  # keys in lower case
    deadline: float | None  # the event loop's time by which the caller gives up; None: never


Handler = Callable[[Any, Context], Awaitable[Message]]


@dataclass(frozen=True)
class Method:
    """One method: the class its requests decode into, and the coroutine that answers them."""

    request_type: type[Message]
    handler: Handler


class Server:
    """Serves registered methods on listening unix sockets."""

    def __init__(self) -> None:
        self._methods: dict[tuple[str, str], Method] = {}
        self._listeners: list[asyncio.AbstractServer] = []
        self._connections: set[_Connection] = set()

    def register(self, service: str, methods: Mapping[str, Method]) -> None:
        """Serve ``methods`` (by method name) under the full service name ``service``."""
        for name, method in methods.items():
            self._methods[(service, name)] = method

    def lookup(self, service: str, method: str) -> Method | None:
        return self._methods.get((service, method))

    async def start(self, sock: socket.socket) -> None:
        """Start accepting on ``sock``, a bound and listening unix socket (now owned here)."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
        self._listeners.append(listener)

    @property
    def calls(self) -> int:
        """The calls being answered right now."""
        return sum(len(c.running) for c in self._connections)

    @property
    def connections(self) -> int:
        """The clients' connections open right now."""
        return len(self._connections)

    async def shutdown(self, grace: float = 0.0) -> None:
        """Stop accepting; give running calls up to ``grace`` seconds, cancel the rest; close
        every connection once what was answered is written."""
        for listener in self._listeners:
            listener.close()
        running = {task for c in self._connections for task in c.running}
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for connection in list(self._connections):
            connection.close()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()


def _status(code: int, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message)


class _Connection(asyncio.Protocol):
    """One client's connection: frames in, a task per request, responses out."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.running: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        for item in self.reader.feed(data):
            if item.kind == REQUEST:
                task = asyncio.get_running_loop().create_task(self._answer(item))
                self.running.add(task)
                task.add_done_callback(self.running.discard)
            # Anything else (data frames of a stream, stray responses): not for us.

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        for task in self.running:
            task.cancel()  # the caller is gone, as a gRPC server cancels on disconnect

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _send(self, stream_id: int, response: request_pb2.Response) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(stream_id, RESPONSE, response.SerializeToString()))

    async def _answer(self, item: Frame) -> None:
        response = request_pb2.Response()
        try:
            response.payload = await self._call(item)
        except asyncio.CancelledError:
            raise  # connection lost or server stopping: nobody to answer
        except CtrpyError as error:
            response.status.CopyFrom(_status(status_number(error), error.message))
        except OSError as error:
            response.status.CopyFrom(_status(UNKNOWN, str(error)))
        except Exception as error:
            log.exception("ttrpc handler failed")
            response.status.CopyFrom(_status(UNKNOWN, f"{type(error).__name__}: {error}"))
        self._send(item.stream_id, response)

    async def _call(self, item: Frame) -> bytes:
        if item.payload is None:
            raise ResourceExhausted(f"message length {item.length} exceeds the maximum of {self.reader.limit}")
        try:
            request = request_pb2.Request.FromString(item.payload)
        except DecodeError as error:
            raise InvalidArgument(f"ttrpc request: {error}") from None
        method = self.server.lookup(request.service, request.method)
        if method is None:
            raise errors.NotImplemented(f"service {request.service}: method {request.method}")
        try:
            message = method.request_type.FromString(request.payload)
        except DecodeError as error:
            raise InvalidArgument(f"{request.service}/{request.method} request: {error}") from None
        metadata: dict[str, list[str]] = {}
        for entry in request.metadata:
            metadata.setdefault(entry.key.lower(), []).append(entry.value)
        loop = asyncio.get_running_loop()
        timeout = request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        context = Context(request.service, request.method, metadata, None if timeout is None else loop.time() + timeout)
        if timeout is None:
            return (await method.handler(message, context)).SerializeToString()
        try:
            async with asyncio.timeout(timeout) as scope:
                return (await method.handler(message, context)).SerializeToString()
        except TimeoutError:
            if scope.expired():
                raise DeadlineExceeded(f"{request.service}/{request.method}") from None
            raise
