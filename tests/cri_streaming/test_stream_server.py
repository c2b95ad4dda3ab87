"""The streaming server's one port, in process and without containers: the request head parsed
with its bounds, the token taken before anything else, SPDY and WebSocket upgrades dispatched to
the URL kind's handlers, the kubelet's version negotiation, and the SPDY streams of a
remotecommand collected by ``streamType``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidStatus

from ctrpy.manager.cri.streaming import channels, httphead, server, spdychannels
from ctrpy.manager.cri.streaming.server import Kind, StreamServer
from ctrpy.manager.cri.streaming.spdyconn import Connection
from tests.cri_streaming import spdyclient

DEADLINE = 30.0


def test_heads_parse_and_are_bounded() -> None:
    raw = b"POST /exec/abc?x=1 HTTP/1.1\r\nHost: h\r\nX-Stream-Protocol-Version: a, b\r\n" \
          b"X-Stream-Protocol-Version: c\r\nconnection:  Upgrade \r\n\r\nrest"
    end = httphead.head_end(raw)
    assert raw[end:] == b"rest"
    head = httphead.parse(raw[:end])
    assert (head.method, head.path, head.get("CONNECTION")) == ("POST", "/exec/abc", "Upgrade")
    assert head.get_all("x-stream-protocol-version") == ["a, b", "c"]
    assert httphead.head_end(b"GET / HTTP/1.1\r\nHost: h\r\n") == 0
    with pytest.raises(httphead.BadRequest) as large:
        httphead.head_end(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 4000)
    assert large.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    for bad in (b"GET /\r\n\r\n", b"GET / HTTP/2\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
                b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", b"G(T / HTTP/1.1\r\n\r\n"):
        with pytest.raises(httphead.BadRequest):
            httphead.parse(bad)


class Recorder:
    """A URL kind whose handlers record what they were given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    async def serve_spdy(self, conn: Connection, version: str, request: object) -> None:
        self.calls.append(("spdy", version, request))
        stream = await conn.accept_stream()
        await stream.write(b"hello " + stream.headers.get("name", "").encode())
        await stream.close()
        await conn.wait_closed()

    def select(self, offered: Sequence[str]) -> str | None:
        return "mine" if "mine" in offered else None

    async def serve_websocket(self, ws: ServerConnection, request: object) -> None:
        self.calls.append(("websocket", ws.subprotocol or "", request))
        await ws.send(b"hello")


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[StreamServer, Recorder]]:
    calls: Any = SimpleNamespace(containers=SimpleNamespace(sandboxes=None, tasks=None))
    stream_server = StreamServer(calls, "127.0.0.1")
    recorder = Recorder()
    stream_server.register(Kind("test", ("v2.test", "v1.test"), recorder.serve_spdy, recorder.select,
                                recorder.serve_websocket))
    await stream_server.start(0)
    try:
        yield stream_server, recorder
    finally:
        await stream_server.close()


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.5)
    monkeypatch.setattr(server, "LINGER", 0.2)


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answer = await reader.read()
    writer.close()
    return answer


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in a loop of its own (bounded)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), DEADLINE))

    return run


@in_loop
async def test_refusals() -> None:
    async with serving() as (srv, recorder):
        port = srv.port

        async def ask(path: str, *headers: str) -> bytes:
            head = f"GET {path} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
            return await asyncio.wait_for(_exchange(port, head.encode()), DEADLINE)

        assert (await ask("/test/nosuchtoken")).startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert (await ask("/test/nosuchtoken")).endswith(b"\r\n\r\n404 page not found\n")
        assert (await ask("/other/" + srv.tokens.issue("test", 1))).startswith(b"HTTP/1.1 404 ")
        token = srv.tokens.issue("test", 1)
        assert (await ask("/test/" + srv.tokens.issue("exec", 1))).startswith(b"HTTP/1.1 404 ")  # wrong kind
        # A live token without an upgrade: refused, and used up.
        assert b"unable to upgrade" in await ask(f"/test/{token}")
        assert (await ask(f"/test/{token}", "Connection: Upgrade", "Upgrade: SPDY/3.1")).startswith(b"HTTP/1.1 404 ")
        answer = await ask("/test/" + srv.tokens.issue("test", 1), "Connection: Upgrade", "Upgrade: SPDY/3.1",
                           "X-Stream-Protocol-Version: v9.test")
        assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert b"X-Accepted-Stream-Protocol-Versions: v2.test\r\nX-Accepted-Stream-Protocol-Versions: v1.test\r\n" in answer
        answer = await ask("/test/" + srv.tokens.issue("test", 1), "Connection: Upgrade", "Upgrade: SPDY/3.1")
        assert answer.startswith(b"HTTP/1.1 400 ") and b"X-Stream-Protocol-Version does not exist" in answer
        huge = b"GET / HTTP/1.1\r\nX: " + b"y" * 40000 + b"\r\n\r\n"
        assert (await asyncio.wait_for(_exchange(port, huge), DEADLINE)).startswith(b"HTTP/1.1 431 ")
        # A head that never ends: 408 once HEAD_TIMEOUT has passed.
        assert (await asyncio.wait_for(_exchange(port, b"GET / HTTP/1.1\r\n"), DEADLINE)).startswith(b"HTTP/1.1 408 ")
        assert recorder.calls == []


@in_loop
async def test_spdy_upgrade_reaches_the_kind() -> None:
    async with serving() as (srv, recorder):
        url = srv.url("test", srv.tokens.issue("test", "the request"))
        reply, reader, writer = await spdyclient.upgrade(url, ["v9.test", "v1.test", "v2.test"], method="GET")
        assert reply.status == 101
        assert [(k, v) for k, v in reply.headers] == [
            ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v1.test")]
        conn = Connection(reader, writer, server=False)
        conn.start()
        stream = await conn.open_stream({"name": "there"})
        assert await stream.read() == b"hello there"
        await conn.aclose()
        assert recorder.calls == [("spdy", "v1.test", "the request")]


@in_loop
async def test_websocket_upgrade_reaches_the_kind() -> None:
    async with serving() as (srv, recorder):
        url = srv.url("test", srv.tokens.issue("test", 7)).replace("http://", "ws://")
        async with connect(url, subprotocols=["other", "mine"], open_timeout=DEADLINE) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "mine"
            assert await ws.recv() == b"hello"
        with pytest.raises(InvalidStatus) as replayed:
            await connect(url, open_timeout=DEADLINE)
        assert replayed.value.response.status_code == 404
        assert recorder.calls == [("websocket", "mine", 7)]


async def _pair() -> tuple[Connection, Connection]:
    a, b = socket.socketpair()
    sides = []
    for sock, is_server in ((a, True), (b, False)):
        reader, writer = await asyncio.open_connection(sock=sock)
        conn = Connection(reader, writer, server=is_server)
        conn.start()
        sides.append(conn)
    return sides[0], sides[1]


@in_loop
async def test_remotecommand_streams_are_collected_by_type() -> None:
    srv, client = await _pair()
    try:
        for name in ("error", "stdin", "resize", "stdout"):  # v2 has no resize: not counted
            await client.open_stream({"streamtype": name})
        streams = await spdychannels.accept_streams(srv, "v2.channel.k8s.io", stdin=True, stdout=True, stderr=False,
                                                    tty=True, timeout=DEADLINE)
        assert sorted(streams) == [channels.STDIN, channels.STDOUT, channels.ERROR]
        with pytest.raises(TimeoutError):  # the resize stream a v4 terminal needs never comes
            for name in ("error", "stdout"):
                await client.open_stream({"streamtype": name})
            await spdychannels.accept_streams(srv, "v4.channel.k8s.io", stdin=False, stdout=True, stderr=False,
                                              tty=True, timeout=0.3)
    finally:
        await client.aclose()
        await srv.aclose()


@in_loop
async def test_closing_the_server_ends_its_connections() -> None:
    async with serving() as (srv, recorder):
        url = srv.url("test", srv.tokens.issue("test", 1))
        reply, reader, writer = await spdyclient.upgrade(url, ["v2.test"])
        assert reply.status == 101
        conn = Connection(reader, writer, server=False)
        conn.start()
        websocket = await connect(srv.url("test", srv.tokens.issue("test", 2)).replace("http://", "ws://"),
                                  subprotocols=["mine"], open_timeout=DEADLINE)  # type: ignore[list-item]
        idle, _ = await asyncio.open_connection("127.0.0.1", srv.port)  # no head yet
        await srv.close()  # the handler waits on its connection: ending it lets it return
        await asyncio.wait_for(conn.wait_closed(), DEADLINE)
        await asyncio.wait_for(websocket.wait_closed(), DEADLINE)
        assert await asyncio.wait_for(idle.read(), DEADLINE) == b""
        assert [call[0] for call in recorder.calls] == ["spdy", "websocket"]
