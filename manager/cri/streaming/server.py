"""The CRI streaming server: the HTTP endpoint that Exec's URLs point at.

ctrpyd listens on ``[cri] stream_server_address:stream_server_port`` (port 0: any free one) once
the CRI's containers are loaded. The Exec RPC validates its request as containerd does, stores it
under a single-use token (:mod:`.tokens`) and answers ``http://<address>:<port>/exec/<token>``; the
client (kubectl through the kubelet, crictl, critest) opens that URL and speaks one of
Kubernetes' remotecommand protocols. An unknown, replayed or expired token gets 404 before
anything is started.

Served here: WebSocket with the ``v5``/``v4``/pre-v4 channel protocols, binary and base64
(:mod:`.channels`), for exec (:mod:`.execstream`). SPDY/3.1 and attach and port-forward come with
their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import weakref
from collections.abc import Sequence
from http import HTTPStatus

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ctrpy import namespaces
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import CtrpyError, FailedPrecondition, InvalidArgument

from ...config import CriConfig
from ..container_service import ContainerCalls, state_of
from ..container_store import RUNNING
from ..sandboxes import NAMESPACE
from . import channels, execstream
from .channels import Protocol
from .tokens import TokenCache

log = structlog.get_logger(__name__)

#: How long the output may keep coming after the exec's process has exited (an orphan that
#: holds the pipe open is not waited for longer).
DRAIN = 2.0


class StreamServer:
    def __init__(self, containers: ContainerCalls, address: str) -> None:
        self.containers = containers
        self.address = address
        self.tokens = TokenCache()
        self.port = 0
        self._server: Server | None = None
        self._taken: weakref.WeakKeyDictionary[ServerConnection, tuple[str, object]] = \
            weakref.WeakKeyDictionary()

    async def start(self, port: int) -> None:
        self._server = await serve(
            self._handle, self.address, port, process_request=self._admit,
            select_subprotocol=self._select, compression=None, max_size=1024 * 1024,
        )  # fmt: skip
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("CRI streaming server listening", address=self.address, port=self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 15)
            self._server = None

    def url(self, kind: str, token: str) -> str:
        host = self.address
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        return f"http://{host}:{self.port}/{kind}/{token}"

    # -- the RPCs -----------------------------------------------------------------------------

    async def exec(self, request: api.ExecRequest) -> api.ExecResponse:
        """Validate as containerd (and the kubelet's streaming server) do, then hand out a URL."""
        record = self.containers.containers.get(request.container_id)
        if record.phase != RUNNING:
            raise FailedPrecondition(f"container is in {api.ContainerState.Name(state_of(record))} state")
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        if not request.cmd:
            raise InvalidArgument("Exec needs a command")
        pinned = api.ExecRequest()
        pinned.CopyFrom(request)
        pinned.container_id = record.id
        return api.ExecResponse(url=self.url("exec", self.tokens.issue("exec", pinned)))

    # -- the HTTP side ------------------------------------------------------------------------

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Take the token before the handshake: anything but a live one is a 404."""
        parts = request.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) == 2 and parts[0] == "exec":
            taken = self.tokens.take(parts[0], parts[1])
            if taken is not None:
                self._taken[connection] = (parts[0], taken)
                return None
        return connection.respond(HTTPStatus.NOT_FOUND, "404 page not found\n")

    def _select(self, connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        if not offered:
            return None  # no subprotocol: the pre-v4 binary channels, as the kubelet
        protocol = channels.select(list(offered))
        if protocol is None:
            raise NegotiationError(f"requested protocol(s) are not supported: {list(offered)}")
        return Subprotocol(protocol.name)

    async def _handle(self, connection: ServerConnection) -> None:
        kind, request = self._taken.pop(connection, ("", None))
        protocol = channels.BY_NAME.get(connection.subprotocol or "", channels.DEFAULT)
        if kind == "exec" and isinstance(request, api.ExecRequest):
            with namespaces.using(NAMESPACE):
                await self._exec(connection, protocol, request)

    async def _exec(self, ws: ServerConnection, protocol: Protocol, request: api.ExecRequest) -> None:
        calls = self.containers
        manager = calls.containers
        cmd = list(request.cmd)
        session: execstream.ExecSession | None = None
        try:
            os.makedirs(calls.exec_dir, mode=0o700, exist_ok=True)
            session = await execstream.prepare(
                manager.tasks, manager.db, manager.meta, request.container_id, cmd, calls.exec_dir,
                stdin=request.stdin, stdout=request.stdout, stderr=request.stderr, tty=request.tty)
            await session.start()
        except (CtrpyError, OSError) as exc:
            message = exc.message if isinstance(exc, CtrpyError) else str(exc)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(channels.encode(protocol, channels.ERROR, channels.internal_error(protocol, message)))
                await ws.close()
            if session is not None:
                await session.close()
            return
        try:
            await _run(ws, protocol, session, cmd)
        finally:
            await session.close()


async def _run(ws: ServerConnection, protocol: Protocol, session: execstream.ExecSession, cmd: list[str]) -> None:
    """Pump the streams until the process exits (then send its status) or the client leaves
    (then kill the process)."""
    # The kubelet's signal that the streams are set up: an empty message on the first output.
    first = min(session.outputs, default=channels.ERROR)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(channels.encode(protocol, first, b""))
    pumps = [asyncio.ensure_future(_pump_out(ws, protocol, channel, reader))
             for channel, reader in session.outputs.items()]
    receiver = asyncio.ensure_future(_receive(ws, protocol, session))
    exited = asyncio.ensure_future(session.wait())
    try:
        await asyncio.wait((exited, receiver), return_when=asyncio.FIRST_COMPLETED)
        failure = _failure(exited)
        if failure is not None:  # the client left, or the shim could not tell how it ended
            log.info("exec stream ended before its process: killing it", exec_id=session.exec_id, error=failure)
            if failure:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(channels.encode(protocol, channels.ERROR, channels.internal_error(protocol, failure)))
                    await ws.close()
            await session.kill()
            return
        if pumps:
            await asyncio.wait(pumps, timeout=DRAIN)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        status = channels.exit_status(protocol, exited.result(), cmd)
        with contextlib.suppress(ConnectionClosed):
            if status:
                await ws.send(channels.encode(protocol, channels.ERROR, status))
            await ws.close()
    finally:
        for job in (*pumps, receiver, exited):
            job.cancel()
        await asyncio.gather(*pumps, receiver, exited, return_exceptions=True)


def _failure(exited: asyncio.Future[int]) -> str | None:
    """None when the process's exit is known; "" when the client left first; else why the
    wait failed (the shim gone, ctrpyd stopping)."""
    if not exited.done():
        return ""
    if exited.cancelled():
        return "the wait for the process was cancelled"
    error = exited.exception()
    if error is None:
        return None
    return error.message if isinstance(error, CtrpyError) else repr(error)


async def _pump_out(ws: ServerConnection, protocol: Protocol, channel: int, reader: execstream.FifoReader) -> None:
    with contextlib.suppress(ConnectionClosed, OSError):
        while data := await reader.read():
            await ws.send(channels.encode(protocol, channel, data))


async def _receive(ws: ServerConnection, protocol: Protocol, session: execstream.ExecSession) -> None:
    """Stdin, half-closes and terminal sizes from the client, until it closes the connection."""
    sizes = channels.ResizeDecoder()
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            decoded = channels.decode(protocol, message)
            if decoded is None:
                continue
            channel, data = decoded
            if channel == channels.STDIN:
                await session.write_stdin(data)
            elif channel == channels.RESIZE:
                for width, height in sizes.feed(data):
                    await session.resize(width, height)
            elif channel == channels.CLOSE and data == bytes((channels.STDIN,)):
                await session.close_stdin()


async def start_streaming(config: CriConfig, containers: ContainerCalls) -> StreamServer:
    """Start the streaming server on the configured address and port."""
    server = StreamServer(containers, config.stream_server_address or "127.0.0.1")
    await server.start(int(config.stream_server_port or "0"))
    return server
