"""The CRI streaming server: the HTTP endpoint that Exec's (Attach's, PortForward's) URLs point at.

ctrpyd listens on ``[cri] stream_server_address:stream_server_port`` (port 0: any free one) once
the CRI's containers are loaded. The Exec RPC validates its request as containerd does, stores it
under a single-use token (:mod:`.tokens`) and answers ``http://<address>:<port>/exec/<token>``; the
client (kubectl through the kubelet, crictl, critest) opens that URL and speaks one of
Kubernetes' streaming protocols. One port serves both transports, so the server reads the
request head itself (:mod:`.httphead`, bounded in size and time) before choosing:

- the token first: an unknown, replayed or expired one gets ``404 page not found`` before
  anything is started (the kubelet's order too);
- ``Upgrade: SPDY/3.1``: ``X-Stream-Protocol-Version`` negotiated among the kind's versions
  (the client's preference wins, as in the kubelet's ``httpstream.Handshake``), ``101 Switching
  Protocols``, then a :class:`.spdyconn.Connection` on the socket;
- ``Upgrade: websocket``: the bytes read so far are handed, unchanged, to a ``websockets``
  connection made on the same socket, which does the handshake and the subprotocol choice;
- anything else: 400.

Each URL kind (exec here; attach and port-forward in their own modules) is a :class:`Kind`
registered with :meth:`StreamServer.register`: its SPDY versions, its WebSocket subprotocol
choice and its two handlers. Exec and attach share the transport-neutral loop of :mod:`.pump`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import structlog
from websockets.asyncio.server import Server, ServerConnection
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from ctrpy import namespaces
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import CtrpyError, FailedPrecondition, InvalidArgument

from ...config import CriConfig
from ..container_service import ContainerCalls, state_of
from ..container_store import RUNNING
from ..sandboxes import NAMESPACE
from . import (
    attachstream,
    channels,
    execstream,
    httphead,
    portforward,
    pump,
    spdychannels,
    wstransport,
    wstunnel,
)
from .spdyconn import Connection
from .spdyconn import ConnectionClosed as SpdyClosed
from .tokens import TokenCache

log = structlog.get_logger(__name__)

#: How long a client may take to send its request head, and a WebSocket its handshake.
HEAD_TIMEOUT = 15.0
#: The largest WebSocket message taken from a client.
MAX_MESSAGE = 1024 * 1024
#: How long a refused client's further bytes are read and dropped before the socket closes.
LINGER = 2.0
#: How long ctrpyd's shutdown waits for the open connections to end.
CLOSE_WAIT = 15.0

SPDY = "SPDY/3.1"
VERSION_HEADER = "X-Stream-Protocol-Version"
ACCEPTED_HEADER = "X-Accepted-Stream-Protocol-Versions"


@dataclass(frozen=True)
class Kind:
    """One kind of streaming URL, ``/<name>/<token>``: what the RPC stored under the token is
    handed to ``serve_spdy`` (with the SPDY connection, already answered with 101 and reading,
    and the negotiated ``X-Stream-Protocol-Version``) or to ``serve_websocket`` (with the open
    WebSocket connection, whose ``subprotocol`` ``ws_select`` chose). The server closes the
    connection when the handler returns. ``ws_select`` gets the offered subprotocols and
    returns the one to answer with, None for none, or raises websockets' NegotiationError to
    refuse the handshake."""

    name: str
    spdy_protocols: tuple[str, ...]
    serve_spdy: Callable[[Connection, str, object], Awaitable[None]]
    ws_select: Callable[[Sequence[str]], str | None]
    serve_websocket: Callable[[ServerConnection, object], Awaitable[None]]


class StreamServer:
    def __init__(self, containers: ContainerCalls, address: str) -> None:
        self.containers = containers
        self.address = address
        self.tokens = TokenCache()
        self.port = 0
        self.kinds: dict[str, Kind] = {}
        self._ws: Server | None = None
        self._heads: set[_HeadReader] = set()
        self._spdy: dict[asyncio.Task[None], Connection] = {}
        self._ws_pending: dict[ServerConnection, tuple[Kind, object]] = {}
        self.register(Kind("exec", tuple(spdychannels.PROTOCOLS), self._exec_spdy, wstransport.select,
                           self._exec_websocket))
        attach_spdy, attach_ws = attachstream.handlers(lambda: self.containers.containers.tasks)
        self.register(Kind("attach", tuple(spdychannels.PROTOCOLS), attach_spdy, wstransport.select, attach_ws))
        forwards = portforward.Handlers(containers.containers.sandboxes)
        self.register(Kind("portforward", (portforward.PROTOCOL,), forwards.serve_spdy, portforward.select_ws,
                           forwards.serve_websocket))

    def register(self, kind: Kind) -> None:
        """Serve ``/<kind.name>/<token>`` URLs (tokens issued with ``self.tokens.issue(kind.name, ...)``)."""
        self.kinds[kind.name] = kind

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()

        async def listen() -> asyncio.Server:
            return await loop.create_server(lambda: _HeadReader(self), self.address, port)

        # The websockets Server owns the listener (ours) and the WebSocket connections we hand it.
        self._ws = Server(listen, self._websocket)
        await self._ws
        self.port = self._ws.sockets[0].getsockname()[1]
        log.info("CRI streaming server listening", address=self.address, port=self.port)

    async def close(self) -> None:
        """Stop listening and end every connection (their execs are killed as for a client
        that left)."""
        if self._ws is None:
            return
        ws, self._ws = self._ws, None
        ws.close()  # stops the listener, closes WebSocket connections with 1001
        for reader in list(self._heads):
            reader.abort()
        for conn in list(self._spdy.values()):
            await conn.aclose(grace=1.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await ws.wait_closed()
                if self._spdy:
                    await asyncio.wait(list(self._spdy))

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

    async def attach(self, request: api.AttachRequest) -> api.AttachResponse:
        """Validate as containerd does (:func:`.attachstream.validate`), then hand out a URL."""
        if not request.container_id:
            raise InvalidArgument("missing required container_id")
        record = self.containers.containers.get(request.container_id)
        attachstream.validate(record, request)
        pinned = api.AttachRequest()
        pinned.CopyFrom(request)
        pinned.container_id = record.id
        return api.AttachResponse(url=self.url("attach", self.tokens.issue("attach", pinned)))

    async def port_forward(self, request: api.PortForwardRequest) -> api.PortForwardResponse:
        """Validate as containerd does (:func:`.portforward.check_request`), then hand out a URL."""
        pinned = await portforward.check_request(self.containers.containers.sandboxes, request)
        return api.PortForwardResponse(url=self.url("portforward", self.tokens.issue("portforward", pinned)))

    # -- the HTTP side ------------------------------------------------------------------------

    def _dispatch(self, transport: asyncio.Transport, head: httphead.RequestHead, raw: bytes) -> None:
        """The head is in: take the token, then pass the socket to the protocol asked for."""
        if self._ws is None:  # closing: the listener stops at the next turn of the loop
            _reply(transport, HTTPStatus.SERVICE_UNAVAILABLE, "the streaming server is shutting down\n")
            return
        parts = head.path.strip("/").split("/")
        kind = self.kinds.get(parts[0]) if len(parts) == 2 else None
        request = self.tokens.take(kind.name, parts[1]) if kind is not None else None
        if kind is None or request is None:
            _reply(transport, HTTPStatus.NOT_FOUND, "404 page not found\n")
            return
        upgrade = ",".join(head.get_all("Upgrade")).lower()
        connection = ",".join(head.get_all("Connection")).lower()
        if "websocket" in upgrade:
            self._to_websocket(transport, raw, kind, request)
        elif "upgrade" in connection and SPDY.lower() in upgrade:
            self._to_spdy(transport, head, raw, kind, request)
        else:
            _reply(transport, HTTPStatus.BAD_REQUEST,
                   "unable to upgrade: missing upgrade headers in request (want Upgrade: SPDY/3.1 or websocket)\n")

    def _to_websocket(self, transport: asyncio.Transport, raw: bytes, kind: Kind, request: object) -> None:
        assert self._ws is not None  # _dispatch checked

        def select(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
            chosen = kind.ws_select(list(offered))
            return None if chosen is None else Subprotocol(chosen)

        # wstunnel's ServerProtocol: also takes client-go's "SPDY/3.1+portforward.k8s.io".
        protocol = wstunnel.ServerProtocol(select_subprotocol=select, max_size=MAX_MESSAGE)
        connection = ServerConnection(protocol, self._ws)
        self._ws_pending[connection] = (kind, request)
        transport.set_protocol(connection)
        connection.connection_made(transport)  # starts self._websocket(connection)
        connection.data_received(raw)  # the request again, for websockets' own handshake

    async def _websocket(self, connection: ServerConnection) -> None:
        """A WebSocket connection's life, as websockets' ``serve`` runs it: the handshake
        (bounded), keepalive pings, the kind's handler, the close."""
        server = connection.server
        try:
            kind, request = self._ws_pending.pop(connection)
            async with asyncio.timeout(HEAD_TIMEOUT):
                await connection.handshake()
            if connection.protocol.state is not State.OPEN:
                connection.transport.abort()
                return
            server.all_connections.add(connection)
            connection.start_keepalive()
            try:
                async with connection:
                    with namespaces.using(NAMESPACE):
                        await kind.serve_websocket(connection, request)
            except Exception:
                log.exception("websocket stream handler failed", kind=kind.name)
            finally:
                server.all_connections.discard(connection)
        except Exception:
            connection.transport.abort()
        finally:
            self._ws_pending.pop(connection, None)
            task = asyncio.current_task()
            if task is not None:
                server.handler_tasks.discard(task)

    def _to_spdy(self, transport: asyncio.Transport, head: httphead.RequestHead, raw: bytes, kind: Kind,
                 request: object) -> None:
        """Negotiate the version as the kubelet's ``httpstream.Handshake`` does, then upgrade."""
        if not head.has(VERSION_HEADER):
            _reply(transport, HTTPStatus.BAD_REQUEST,
                   f"unable to upgrade: header {VERSION_HEADER} does not exist in request\n")
            return
        offered = [v.strip(" ") for value in head.get_all(VERSION_HEADER) for v in value.split(",") if v.strip(" ")]
        chosen = next((v for v in offered if v in kind.spdy_protocols), None)
        if chosen is None:
            _reply(transport, HTTPStatus.FORBIDDEN,
                   f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                   f"server accepts {list(kind.spdy_protocols)}\n",
                   [(ACCEPTED_HEADER, p) for p in kind.spdy_protocols])
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        stream_protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(stream_protocol)
        stream_protocol.connection_made(transport)
        leftover = raw[httphead.head_end(raw):]
        if leftover:
            reader.feed_data(leftover)
        writer = asyncio.StreamWriter(transport, stream_protocol, reader, loop)
        writer.write(httphead.response(HTTPStatus.SWITCHING_PROTOCOLS, headers=[
            ("Connection", "Upgrade"), ("Upgrade", SPDY), (VERSION_HEADER, chosen)]))
        conn = Connection(reader, writer, server=True)
        conn.start()
        task = asyncio.create_task(self._serve_spdy(conn, kind, chosen, request))
        self._spdy[task] = conn

    async def _serve_spdy(self, conn: Connection, kind: Kind, protocol: str, request: object) -> None:
        try:
            with namespaces.using(NAMESPACE):
                await kind.serve_spdy(conn, protocol, request)
        except Exception:
            log.exception("spdy stream handler failed", kind=kind.name)
        finally:
            await conn.aclose()
            task = asyncio.current_task()
            if task is not None:
                self._spdy.pop(task, None)

    # -- exec -----------------------------------------------------------------------------------

    async def _exec_spdy(self, conn: Connection, protocol: str, request: object) -> None:
        assert isinstance(request, api.ExecRequest)
        try:
            streams = await spdychannels.accept_streams(
                conn, protocol, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr, tty=request.tty)
        except TimeoutError:
            log.info("timed out waiting for client to create streams", container_id=request.container_id)
            return
        except SpdyClosed:
            return
        await self._exec(spdychannels.SpdyTransport(conn, protocol, streams), request)

    async def _exec_websocket(self, ws: ServerConnection, request: object) -> None:
        assert isinstance(request, api.ExecRequest)
        await self._exec(wstransport.WebSocketTransport(ws), request)

    async def _exec(self, transport: pump.Transport, request: api.ExecRequest) -> None:
        calls = self.containers
        manager = calls.containers
        cmd = list(request.cmd)
        session: execstream.ExecSession | None = None
        size: tuple[int, int] | None = None
        if request.tty:  # started with the client's terminal size, not 0x0 until the first resize
            transport = pump.Buffered(transport)
            size = await transport.first_size()
        try:
            os.makedirs(calls.exec_dir, mode=0o700, exist_ok=True)
            session = await execstream.prepare(
                manager.tasks, manager.db, manager.meta, request.container_id, cmd, calls.exec_dir,
                stdin=request.stdin, stdout=request.stdout, stderr=request.stderr, tty=request.tty, size=size)
            await session.start()
        except (CtrpyError, OSError) as exc:
            message = exc.message if isinstance(exc, CtrpyError) else str(exc)
            with contextlib.suppress(pump.TransportClosed):
                await transport.send(channels.ERROR, channels.internal_error(transport.protocol, message))
            await transport.close()
            if session is not None:
                await session.close()
            return
        try:
            await pump.run(transport, session, lambda protocol, code: channels.exit_status(protocol, code, cmd))
        finally:
            await session.close()


class _HeadReader(asyncio.Protocol):
    """A new connection until its request head is in (at most :data:`httphead.MAX_HEAD` bytes
    within :data:`HEAD_TIMEOUT` seconds); then the server takes the socket over."""

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lingering: asyncio.Transport | None = None  # refused: reading to drop, until closed
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._heads.add(self)
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._expired)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.buffer += data
        try:
            end = httphead.head_end(self.buffer)
            if not end:
                return
            head = httphead.parse(bytes(self.buffer[:end]))
        except httphead.BadRequest as exc:
            self._refuse(exc.status, f"{exc}\n")
            return
        transport, raw = self.transport, bytes(self.buffer)
        self._done()
        self.server._dispatch(transport, head, raw)

    def _refuse(self, status: HTTPStatus, body: str) -> None:
        """Answer, then read and drop what the client still sends for a moment before closing:
        closing with unread bytes would reset the connection and lose the answer."""
        transport = self.transport
        self._done()
        if transport is None or transport.is_closing():
            return
        transport.write(httphead.response(status, body))
        if transport.can_write_eof():
            transport.write_eof()
        self.lingering = transport
        self.server._heads.add(self)
        self.timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def eof_received(self) -> bool | None:
        return None  # close (our side too)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lingering = None
        self._done()

    def abort(self) -> None:
        transport = self.transport or self.lingering
        self._done()
        if transport is not None:
            transport.abort()

    def _expired(self) -> None:
        self._refuse(HTTPStatus.REQUEST_TIMEOUT, "timed out reading the request head\n")

    def _done(self) -> None:
        self.transport = None
        self.buffer = bytearray()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server._heads.discard(self)


def _reply(transport: asyncio.Transport, status: HTTPStatus, body: str,
           headers: list[tuple[str, str]] | None = None) -> None:
    """Answer with an error and end the connection (after the bytes are out)."""
    if not transport.is_closing():
        transport.write(httphead.response(status, body, headers))
        transport.close()


async def start_streaming(config: CriConfig, containers: ContainerCalls) -> StreamServer:
    """Start the streaming server on the configured address and port."""
    server = StreamServer(containers, config.stream_server_address or "127.0.0.1")
    await server.start(int(config.stream_server_port or "0"))
    return server
