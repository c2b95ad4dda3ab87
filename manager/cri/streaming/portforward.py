"""CRI PortForward: TCP connections into a pod's network namespace, over SPDY or WebSocket.

The PortForward RPC checks the sandbox (it must exist and be READY, containerd's errors) and
hands out a ``/portforward/<token>`` URL on the streaming server. What the client then opens is
one of:

- SPDY/3.1 with ``portforward.k8s.io`` (kubelet, kubectl, crictl by default): for each TCP
  connection the client opens two streams with the same ``requestID`` header, ``streamType:
  error`` and ``streamType: data``, both naming the ``port``. Many ports and many requests share
  one SPDY connection. A pair whose second stream does not come within :data:`CREATION_TIMEOUT`
  gets "timed out waiting for streams" on its error stream.
- WebSocket ``v4.channel.k8s.io`` (binary), ``v4.base64.channel.k8s.io`` or no subprotocol (the
  kubelet's websocket.go): one TCP connection per port named up front -- the CRI request's
  ``port`` list, else the URL's ``ports=`` query; channel ``2i`` is port i's data, ``2i+1`` its
  errors, and the first message on each channel is the port as 2 bytes little-endian.
- WebSocket ``SPDY/3.1+portforward.k8s.io``: the SPDY session tunnelled in binary WebSocket
  messages (client-go's tunnelling dialer, which ``crictl port-forward --transport websocket``
  uses); see :mod:`.wstunnel`.

Either way a failure goes to the error stream as text in the kubelet's words (``error forwarding
port <p> to pod <id>, uid : <why>``) and the stream is closed.

Dialling and copying (one connection into the pod per request) are in :mod:`.forwarding`.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import NegotiationError

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import CtrpyError, InvalidArgument, NotFound

from ..sandboxes import Sandboxes
from . import channels, wstunnel
from .forwarding import ClientGone, ForwardError, forward
from .spdyconn import Connection, ConnectionClosed, Stream, StreamReset

log = structlog.get_logger(__name__)

PROTOCOL = "portforward.k8s.io"
#: WebSocket subprotocols, the server's preference first; "" is the kubelet's no-subprotocol case.
TUNNEL = "SPDY/3.1+" + PROTOCOL
WS_PROTOCOLS = (TUNNEL, "v4.channel.k8s.io", "v4.base64.channel.k8s.io")
#: How long the second stream of a pair may take to come (the kubelet's default).
CREATION_TIMEOUT = 30.0


# -- the RPC ------------------------------------------------------------------------------------


async def check_request(sandboxes: Sandboxes, request: api.PortForwardRequest) -> api.PortForwardRequest:
    """Validate as containerd does (the sandbox exists and is READY; the ports are not checked)
    and pin the full sandbox id into the request kept behind the token."""
    for port in request.port:
        if not 0 < port < 65536:
            raise InvalidArgument(f"invalid port {port}")
    try:
        record = sandboxes.get(request.pod_sandbox_id)
    except NotFound as exc:
        raise NotFound(f'failed to find sandbox "{request.pod_sandbox_id}": {exc.message}') from exc
    if not await sandboxes.ready(record):
        raise CtrpyError("sandbox container is not running")
    pinned = api.PortForwardRequest()
    pinned.CopyFrom(request)
    pinned.pod_sandbox_id = record.id
    return pinned


def ports_from_query(query: str) -> list[int]:
    """The ``ports`` query parameters (``ports=80&ports=81`` or ``ports=80,81``), as the kubelet
    parses them; raises InvalidArgument with its messages."""
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("ports", [])
    if not values:
        raise InvalidArgument('query parameter "ports" is required')
    ports: list[int] = []
    for value in values:
        if not value:
            raise InvalidArgument('query parameter "ports" cannot be empty')
        for part in value.split(","):
            if not part.isdigit() or int(part) > 65535:
                raise InvalidArgument(f'unable to parse "{value}" as a port')
            if int(part) < 1:
                raise InvalidArgument(f'port "{value}" must be > 0')
            ports.append(int(part))
    return ports


def error_text(port: int, sandbox_id: str, error: str) -> bytes:
    """The kubelet's message on the error stream (the runtime's streaming server has no pod uid)."""
    return f"error forwarding port {port} to pod {sandbox_id}, uid : {error}".encode()


# -- SPDY ---------------------------------------------------------------------------------------


class SpdyPeer:
    """A ``data`` stream as the client's end."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    async def read(self) -> bytes:
        try:
            return await self.stream.read()
        except (StreamReset, ConnectionClosed) as exc:
            raise ClientGone(str(exc)) from exc

    async def write(self, data: bytes) -> None:
        try:
            await self.stream.write(data)
        except (StreamReset, ConnectionClosed) as exc:
            raise ClientGone(str(exc)) from exc

    async def close_write(self) -> None:
        with contextlib.suppress(StreamReset, ConnectionClosed):
            await self.stream.close()


@dataclass
class _Pair:
    request_id: str
    data: Stream | None = None
    error: Stream | None = None
    timer: asyncio.Task[None] | None = None

    def add(self, kind: str, stream: Stream) -> str:
        """An empty string when taken, else why not (the kubelet's words)."""
        if getattr(self, kind) is not None:
            return f"{kind} stream already assigned"
        setattr(self, kind, stream)
        return ""


def _stream_problem(headers: dict[str, str]) -> str:
    """Why the kubelet would reject a stream with these headers ("" when fine)."""
    port = headers.get("port", "")
    if not port:
        return '"port" header is required'
    if not port.isdigit() or int(port) > 65535:
        return f'unable to parse "{port}" as a port'
    if int(port) < 1:
        return f'port "{port}" must be > 0'
    kind = headers.get("streamtype", "")
    if not kind:
        return '"streamType" header is required'
    if kind not in ("data", "error"):
        return f'invalid stream type "{kind}"'
    return ""


def _request_id(stream: Stream) -> str:
    """The ``requestID`` header; old clients without it pair error stream n with data n+2."""
    request_id = stream.headers.get("requestid")
    if request_id is not None:
        return request_id
    if stream.headers.get("streamtype") == "error":
        return str(stream.stream_id)
    return str(stream.stream_id - 2)


async def _write_error(stream: Stream | None, text: bytes) -> None:
    if stream is None:
        return
    with contextlib.suppress(StreamReset, ConnectionClosed):
        await stream.write(text)


async def serve_spdy(conn: Connection, sandboxes: Sandboxes, request: api.PortForwardRequest,
                     creation_timeout: float = CREATION_TIMEOUT) -> None:
    """Serve one ``portforward.k8s.io`` SPDY connection until the client ends it."""
    sandbox_id = request.pod_sandbox_id
    pairs: dict[str, _Pair] = {}
    jobs: set[asyncio.Task[None]] = set()

    def spawn(job: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(job)
        jobs.add(task)
        task.add_done_callback(jobs.discard)
        return task

    async def expire(pair: _Pair) -> None:
        await asyncio.sleep(creation_timeout)
        if pairs.get(pair.request_id) is pair:
            del pairs[pair.request_id]
            await _write_error(pair.error, f"(conn={id(conn):#x}, request={pair.request_id}) "
                                           "timed out waiting for streams".encode())
            for stream in (pair.data, pair.error):
                if stream is not None:
                    stream.reset()

    async def run(pair: _Pair) -> None:
        assert pair.data is not None and pair.error is not None
        port = int(pair.data.headers.get("port", "0"))
        try:
            await forward(sandboxes, sandbox_id, port, SpdyPeer(pair.data))
        except ForwardError as exc:
            log.info("port forward failed", sandbox_id=sandbox_id, port=port, error=exc.message)
            await _write_error(pair.error, error_text(port, sandbox_id, exc.message))
        except ClientGone:
            pass
        except Exception:
            log.exception("port forward failed unexpectedly", sandbox_id=sandbox_id, port=port)
        finally:
            for stream in (pair.data, pair.error):
                with contextlib.suppress(StreamReset, ConnectionClosed):
                    await stream.close()

    try:
        while True:
            try:
                stream = await conn.accept_stream()
            except ConnectionClosed:
                return
            problem = _stream_problem(stream.headers)
            if problem:
                log.info("port forward stream rejected", sandbox_id=sandbox_id, error=problem)
                stream.reset()
                continue
            request_id = _request_id(stream)
            pair = pairs.get(request_id)
            if pair is None:
                pair = pairs[request_id] = _Pair(request_id)
                pair.timer = spawn(expire(pair))
            problem = pair.add(stream.headers["streamtype"], stream)
            if problem:
                spawn(_write_error(pair.error, f"error processing stream for request {request_id}: "
                                               f"{problem}".encode()))
                stream.reset()
            elif pair.data is not None and pair.error is not None:
                del pairs[request_id]
                if pair.timer is not None:
                    pair.timer.cancel()
                spawn(run(pair))
    finally:
        for job in list(jobs):
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)


# -- WebSocket ----------------------------------------------------------------------------------


def select_ws(offered: Sequence[str]) -> str | None:
    """The subprotocol to answer among those offered: none for a client that offers none (the
    kubelet's binary channels), a refusal when it offers only ones we do not speak."""
    if not offered:
        return None
    for name in WS_PROTOCOLS:
        if name in offered:
            return name
    raise NegotiationError(f"requested protocol(s) are not supported: {list(offered)}")


class _WsPeer:
    """Channel ``2i`` of a WebSocket connection as port i's client end."""

    def __init__(self, send: Callable[[int, bytes], Awaitable[None]], channel: int) -> None:
        self.send, self.channel = send, channel
        # Bounded: a client that sends faster than the pod reads is not read from meanwhile.
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue(16)
        self.gone = False  # the WebSocket ended
        self.done = False  # this port's forward ended: what still comes for it is dropped

    async def read(self) -> bytes:
        if self.gone and self.inbox.empty():
            raise ClientGone("websocket closed")
        data = await self.inbox.get()
        if not data:
            raise ClientGone("websocket closed")
        return data

    async def write(self, data: bytes) -> None:
        await self.send(self.channel, data)

    async def close_write(self) -> None:
        """v4 channels cannot be half-closed: the connection closes once every port is done."""


async def serve_websocket(ws: ServerConnection, sandboxes: Sandboxes, request: api.PortForwardRequest,
                          ports: Sequence[int]) -> None:
    """Serve one channel-protocol WebSocket port-forward: a connection into the pod per port."""
    protocol = channels.BY_NAME.get(ws.subprotocol or "", channels.DEFAULT)
    sandbox_id = request.pod_sandbox_id

    async def send(channel: int, data: bytes) -> None:
        try:
            await ws.send(channels.encode(protocol, channel, data))
        except WsClosed as exc:
            raise ClientGone(str(exc)) from exc

    peers = [_WsPeer(send, 2 * i) for i in range(len(ports))]

    async def receive() -> None:
        try:
            async for message in ws:
                decoded = channels.decode(protocol, message)
                if decoded is None:
                    continue
                channel, data = decoded
                if channel % 2 == 0 and channel // 2 < len(peers) and data:
                    peer = peers[channel // 2]
                    if not peer.done:
                        await peer.inbox.put(data)
        except WsClosed:
            pass
        finally:
            for peer in peers:
                peer.gone = True
                with contextlib.suppress(asyncio.QueueFull):
                    peer.inbox.put_nowait(b"")

    async def run(i: int, port: int) -> None:
        try:
            await forward(sandboxes, sandbox_id, port, peers[i])
        except ForwardError as exc:
            log.info("port forward failed", sandbox_id=sandbox_id, port=port, error=exc.message)
            with contextlib.suppress(ClientGone):
                await send(2 * i + 1, error_text(port, sandbox_id, exc.message))
        except ClientGone:
            pass
        except Exception:
            log.exception("port forward failed unexpectedly", sandbox_id=sandbox_id, port=port)
        finally:
            peers[i].done = True
            while not peers[i].inbox.empty():
                peers[i].inbox.get_nowait()

    receiver = asyncio.ensure_future(receive())
    try:
        for i, port in enumerate(ports):
            head = port.to_bytes(2, "little")
            await send(2 * i, head)
            await send(2 * i + 1, head)
        await asyncio.gather(*(run(i, port) for i, port in enumerate(ports)))
    except ClientGone:
        pass
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        with contextlib.suppress(WsClosed):
            await ws.close()


async def serve_ws(ws: ServerConnection, sandboxes: Sandboxes, request: api.PortForwardRequest) -> None:
    """Serve a port-forward WebSocket by its subprotocol: the SPDY tunnel, or the channels
    (ports from the CRI request, else from the URL's query)."""
    query = ws.request.path.partition("?")[2] if ws.request is not None else ""
    if ws.subprotocol == TUNNEL:
        async def spdy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = Connection(reader, writer, server=True)
            conn.start()
            try:
                await serve_spdy(conn, sandboxes, request)
            finally:
                await conn.aclose()

        await wstunnel.serve(ws, spdy)
        return
    ports = list(request.port)
    if not ports:
        try:
            ports = ports_from_query(query)
        except InvalidArgument as exc:
            with contextlib.suppress(WsClosed):
                await ws.close(1008, exc.message[:120])  # policy violation, with the kubelet's words
            return
    await serve_websocket(ws, sandboxes, request, ports)


class Handlers:
    """The streaming server's two entry points for ``/portforward/<token>`` URLs."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        self.sandboxes = sandboxes

    async def serve_spdy(self, conn: Connection, protocol: str, request: object) -> None:
        assert isinstance(request, api.PortForwardRequest)
        await serve_spdy(conn, self.sandboxes, request)

    async def serve_websocket(self, ws: ServerConnection, request: object) -> None:
        assert isinstance(request, api.PortForwardRequest)
        await serve_ws(ws, self.sandboxes, request)
