"""An attach to a running CRI container for the streaming server, independent of the transport.

The container's shim serves attach clients on a unix socket of its own (:mod:`ctrpy.shim.attachproto`
says why and how): ctrpyd connects to it for each Attach URL that is opened, says which streams
the client asked for, and relays. :meth:`AttachSession.outputs` gives each output channel's
chunks (b"" at the end), :meth:`AttachSession.write_stdin` and :meth:`AttachSession.close_stdin`
pass the client's input on, :meth:`AttachSession.resize` sets the terminal size (ResizePty),
:meth:`AttachSession.wait` returns when the attach is over on the container's side (it exited, or
the end of the client's stdin detached it). A client that goes away only detaches: the container
keeps running, as with containerd.

Because the socket belongs to the shim, an attach made after ctrpyd restarted reaches the same
container stdio as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

import structlog
from websockets.asyncio.server import ServerConnection

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import CtrpyError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from ctrpy.shim import attachproto
from ctrpy.shim.attachproto import END, HELLO, STDERR, STDIN, STDIN_EOF, STDOUT
from ctrpy.ttrpc import socket_path

from ...runtime import ShimClient
from ...tasks.manager import TaskManager
from ..container_service import state_of
from ..container_store import RUNNING, ContainerRecord
from . import channels, pump, spdychannels, wstransport
from .spdyconn import Connection
from .spdyconn import ConnectionClosed as SpdyClosed

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 10.0
#: Chunks held per output channel while the transport sends: the shim's socket backs up beyond
#: that, and the shim drops a client that falls too far behind.
QUEUE_CHUNKS = 16


class OutputReader:
    """One output channel of an attach: :meth:`read` gives the next chunk, b"" at the end."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_CHUNKS)

    async def read(self) -> bytes:
        return await self._queue.get()

    async def put(self, data: bytes) -> None:
        await self._queue.put(data)

    def end(self) -> None:
        """Mark the end, dropping what the transport has not taken yet if there is no room."""
        while True:
            try:
                self._queue.put_nowait(b"")
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()


class AttachSession:
    """One client's attach: made by :meth:`start`, over when :meth:`wait` returns, cleaned up by
    :meth:`close` (always call it)."""

    def __init__(self, client: ShimClient, *, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
        self.client = client
        self.tty = tty
        self._want = {"stdin": stdin, "stdout": stdout, "stderr": stderr and not tty}
        self.outputs: dict[int, OutputReader] = {}  # channel -> reader
        self.stdin = False  # whether the container takes this client's stdin
        self.container_tty = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._relay: asyncio.Task[None] | None = None
        self._over = asyncio.Event()

    async def start(self) -> None:
        """Connect to the shim's attach socket and say what the client wants; FailedPrecondition
        when the container's shim serves no attach (it predates attach, or the task is gone)."""
        path = self.client.attach_socket or attachproto.socket_for(socket_path(self.client.address))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=attachproto.MAX_FRAME * 2), CONNECT_TIMEOUT)
            self._reader, self._writer = reader, writer
            writer.write(attachproto.hello(**self._want))
            reply = await asyncio.wait_for(attachproto.read_frame(reader), CONNECT_TIMEOUT)
        except FileNotFoundError:
            raise FailedPrecondition(f'container "{self.client.id}" serves no attach') from None
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"attach to {self.client.describe()}: {exc}") from None
        if reply is None or reply[0] != HELLO:
            raise FailedPrecondition(f'container "{self.client.id}" is not running')
        granted = attachproto.parse_hello(reply[1])
        self.stdin = granted.get("stdin", False)
        self.container_tty = granted.get("tty", False)
        for channel, name in ((STDOUT, "stdout"), (STDERR, "stderr")):
            if self._want[name] and not (self.container_tty and channel == STDERR):
                self.outputs[channel] = OutputReader()
        self._relay = asyncio.ensure_future(self._relay_output())

    async def _relay_output(self) -> None:
        assert self._reader is not None
        ended = False
        try:
            while (got := await attachproto.read_frame(self._reader)) is not None:
                kind, data = got
                if kind == END:
                    break
                output = self.outputs.get(kind)
                if output is not None and data:
                    await output.put(data)
            for output in self.outputs.values():  # after everything queued before it
                await output.put(b"")
            ended = True
        except CtrpyError as exc:
            log.info("attach stream from the shim broke", container_id=self.client.id, error=exc.message)
        finally:
            if not ended:  # broken or cancelled: make the readers stop anyway
                for output in self.outputs.values():
                    output.end()
            self._over.set()

    async def write_stdin(self, data: bytes) -> None:
        """Pass the client's input on (waiting while the container does not read it); dropped
        when the container takes no stdin from this client, as containerd does."""
        if not self.stdin or self._writer is None or self._writer.is_closing() or not data:
            return
        with contextlib.suppress(ConnectionError):
            for i in range(0, len(data), attachproto.MAX_FRAME):
                self._writer.write(attachproto.frame(STDIN, data[i:i + attachproto.MAX_FRAME]))
                await self._writer.drain()

    async def close_stdin(self) -> None:
        """The client's stdin ended (the shim applies stdin_once, or detaches the client)."""
        if not self.stdin or self._writer is None or self._writer.is_closing():
            return
        self.stdin = False
        with contextlib.suppress(ConnectionError):
            self._writer.write(attachproto.frame(STDIN_EOF))
            await self._writer.drain()

    async def resize(self, width: int, height: int) -> None:
        if not self.container_tty:
            return
        try:
            await self.client.resize_pty(width, height)
        except (CtrpyError, NotFound) as exc:  # the container is going: the attach ends anyway
            log.debug("attach resize failed", container_id=self.client.id, error=str(exc))

    async def wait(self) -> int:
        """Return once the attach is over on the container's side; 0 (an attach reports no exit
        code: the kubelet answers Success)."""
        await self._over.wait()
        return 0

    async def kill(self) -> None:
        """The client left first: only detach, the container keeps running."""
        await self.close()

    async def close(self) -> None:
        """Detach (the container keeps running)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
        if self._relay is not None:
            self._relay.cancel()
            await asyncio.gather(self._relay, return_exceptions=True)


def prepare(tasks: TaskManager, container_id: str, *, stdin: bool, stdout: bool, stderr: bool,
            tty: bool) -> AttachSession:
    """An attach session to the running ``container_id`` (in the call's namespace)."""
    try:
        _, client = tasks.live(container_id)
    except NotFound:
        raise FailedPrecondition(f'container "{container_id}" is not running') from None
    return AttachSession(client, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)


def validate(record: ContainerRecord, request: api.AttachRequest) -> None:
    """Attach's checks, as containerd and the kubelet's streaming server make them: the
    container must run; tty excludes stderr; at least one stream. (Neither checks the request's
    stdin or tty against the container's: stdin on a container without one is ignored.)"""
    if record.phase != RUNNING:
        raise FailedPrecondition(f"container is in {api.ContainerState.Name(state_of(record))} state")
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout, and stderr must be set")


async def serve(tasks: TaskManager, transport: pump.Transport, request: api.AttachRequest) -> None:
    """Run one opened Attach URL over ``transport`` until the attach is over (then Success, as
    the kubelet's ServeAttach reports it) or the client leaves (a detach)."""
    session = prepare(tasks, request.container_id, stdin=request.stdin, stdout=request.stdout,
                      stderr=request.stderr, tty=request.tty)
    try:
        await session.start()
    except CtrpyError as exc:
        with contextlib.suppress(pump.TransportClosed):
            await transport.send(channels.ERROR, attach_error(transport.protocol, exc.message))
        await transport.close()
        await session.close()
        return
    try:
        await pump.run(transport, session, lambda protocol, _: channels.exit_status(protocol, 0, []))
    finally:
        await session.close()


def attach_error(protocol: channels.Protocol, error: str) -> bytes:
    """The error channel when the attach could not be made (the kubelet's InternalError)."""
    message = f"error attaching to container: {error}"
    if not protocol.status_json:
        return f"Internal error occurred: {message}".encode()
    return json.dumps({"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
                       "reason": "InternalError", "details": {"causes": [{"message": message}]}, "code": 500},
                      separators=(",", ":")).encode()


SpdyHandler = Callable[[Connection, str, object], Awaitable[None]]
WebSocketHandler = Callable[[ServerConnection, object], Awaitable[None]]


def handlers(tasks: Callable[[], TaskManager]) -> tuple[SpdyHandler, WebSocketHandler]:
    """The streaming server's two handlers of an opened Attach URL (SPDY, WebSocket), for its
    ``attach`` kind; ``tasks`` gives ctrpyd's task manager."""

    async def over_spdy(conn: Connection, version: str, request: object) -> None:
        assert isinstance(request, api.AttachRequest)
        try:
            streams = await spdychannels.accept_streams(conn, version, stdin=request.stdin, stdout=request.stdout,
                                                        stderr=request.stderr, tty=request.tty)
        except TimeoutError:
            log.info("timed out waiting for client to create streams", container_id=request.container_id)
            return
        except SpdyClosed:
            return
        await serve(tasks(), spdychannels.SpdyTransport(conn, version, streams), request)

    async def over_websocket(ws: ServerConnection, request: object) -> None:
        assert isinstance(request, api.AttachRequest)
        await serve(tasks(), wstransport.WebSocketTransport(ws), request)

    return over_spdy, over_websocket
