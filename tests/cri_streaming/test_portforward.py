"""CRI PortForward through the streaming server, with clients of our own: SPDY
``portforward.k8s.io`` on spdyconn (streams opened as client-go does: error, then data, per
request), WebSocket ``v4.channel.k8s.io`` on websockets, and SPDY tunnelled over WebSocket (what
``crictl port-forward --transport websocket`` speaks). The server is busybox httpd in a pod on
the pod network (reached inside the pod's netns) and in a hostNetwork pod on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager.cri.streaming import wstunnel
from ctrpy.manager.cri.streaming.spdyconn import Connection, Stream
from tests.cri_container.support import Pod, make_pod
from tests.cri_net.conftest import plugin_dir
from tests.cri_sandbox.support import PodDaemon

if plugin_dir() is None:
    pytest.skip("containernetworking-plugins not installed (scripts/bootstrap installs them)",
                allow_module_level=True)

DEADLINE = 60.0  # liveness bound for one forward, generous for a loaded 2-core machine
PAGE, OTHER = b"hello from the pod\n", b"the other port\n"
TUNNEL = "SPDY/3.1+portforward.k8s.io"
GET = b"GET /index.html HTTP/1.0\r\n\r\n"
BIG = b"".join(b"%d\n" % i for i in range(1, 300_001))  # what ``seq 1 300000`` writes, ~2 MB
# busybox httpd (the test image links no applet for it) in the foreground on 8080 (pages under
# /www), a second one on 8081 (under /www2), and an echo server (nc running cat) on 9000.
HTTPD = ("mkdir -p /www /www2 && echo 'hello from the pod' > /www/index.html && seq 1 300000 > /www/big.txt && "
         "echo 'the other port' > /www2/index.html && busybox httpd -p 8081 -h /www2 && "
         "(busybox nc -ll -p 9000 -e /bin/cat &) && exec busybox httpd -f -p 8080 -h /www")


def _serving(pod: Pod, port: int, answer: bytes = b"HTTP/1.") -> None:
    """Wait until the pod answers on ``port`` (through port-forwards: each refused attempt gets
    its error text, a new URL is asked for the next)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        data, error = run(_get(forward_url(pod, pod.id), port))  # type: ignore[misc]
        if data.startswith(answer):
            return
        assert time.monotonic() < deadline, error
        time.sleep(0.2)


async def _get(url: str, port: int) -> tuple[bytes, bytes]:
    async with spdy_session(url) as conn:
        return await request(conn, port, 0)


@pytest.fixture(scope="module")
def web(pods: PodDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """A pod on the pod network whose container serves HTTP on 8080 and 8081."""
    pod = make_pod(pods, tmp_path_factory.mktemp("pod"))
    try:
        pod.run("web", "sh", "-c", HTTPD)
        _serving(pod, 8080)
        _serving(pod, 8081)
        _serving(pod, 9000, b"GET")
        yield pod
    finally:
        pod.cleanup()


def forward_url(pod: Pod | PodDaemon, sandbox_id: str, ports: tuple[int, ...] = ()) -> str:
    with pod.cri() as c:
        response = c.call(c.runtime.PortForward, api.PortForwardRequest(pod_sandbox_id=sandbox_id, port=ports))
    return response.url


# -- a SPDY client ------------------------------------------------------------------------------


async def _upgrade(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\n"
                 "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n"
                 "Content-Length: 0\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        writer.close()
        raise HttpStatus(status, head)
    assert b"x-stream-protocol-version: portforward.k8s.io" in head.lower()
    return reader, writer


class HttpStatus(Exception):
    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"HTTP {status}: {head!r}")
        self.status = status


@asynccontextmanager
async def spdy_session(url: str) -> AsyncIterator[Connection]:
    reader, writer = await _upgrade(url)
    conn = Connection(reader, writer, server=False)
    conn.start()
    try:
        yield conn
    finally:
        await conn.aclose(grace=1.0)


async def read_all(stream: Stream) -> bytes:
    data = b""
    while chunk := await stream.read():
        data += chunk
    return data


async def request(conn: Connection, port: int, request_id: int, send: bytes = GET) -> tuple[bytes, bytes]:
    """One forwarded connection, as client-go makes it: the error stream (closed at once, the
    client never writes to it), the data stream; send, half-close, read to the end. Returns
    (data, error text)."""
    headers = {"port": str(port), "requestid": str(request_id)}
    error = await conn.open_stream({**headers, "streamtype": "error"})
    await error.close()
    data = await conn.open_stream({**headers, "streamtype": "data"})
    await data.write(send)
    await data.close()
    return await read_all(data), await read_all(error)


def run(job: object) -> object:
    return asyncio.run(asyncio.wait_for(job, DEADLINE))  # type: ignore[arg-type]


def body(response: bytes) -> bytes:
    head, _, rest = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], response[:200]
    return rest


# -- the tests ----------------------------------------------------------------------------------


def test_spdy_get_from_the_pod(web: Pod) -> None:
    url = forward_url(web, web.id)
    assert url.startswith("http://127.0.0.1:") and "/portforward/" in url

    async def go() -> tuple[bytes, bytes]:
        async with spdy_session(url) as conn:
            return await request(conn, 8080, 0)

    data, error = run(go())  # type: ignore[misc]
    assert body(data) == PAGE and error == b""


def test_two_ports_and_many_requests_share_one_connection(web: Pod) -> None:
    url = forward_url(web, web.id[:12])  # a unique prefix names the pod too

    async def go() -> list[tuple[bytes, bytes]]:
        async with spdy_session(url) as conn:
            first = await asyncio.gather(request(conn, 8080, 0), request(conn, 8081, 1), request(conn, 8080, 2))
            later = await request(conn, 8081, 3)  # the connection outlives its requests
            return [*first, later]

    results = run(go())
    assert [body(data) for data, _ in results] == [PAGE, OTHER, PAGE, OTHER]  # type: ignore[union-attr]
    assert all(error == b"" for _, error in results)  # type: ignore[union-attr]


def test_a_closed_port_gives_the_error_text(web: Pod) -> None:
    async def go() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        async with spdy_session(forward_url(web, web.id)) as conn:
            return await request(conn, 9, 0), await request(conn, 8080, 1)

    (data, error), (data2, error2) = run(go())  # type: ignore[misc]
    assert data == b""
    text = error.decode()
    assert text.startswith(f"error forwarding port 9 to pod {web.id}, uid : failed to execute portforward "
                           'in network namespace "'), text
    assert f'failed to connect to localhost:9 inside namespace "{web.id}", IPv4: dial tcp4 127.0.0.1:9: ' \
           "connect: connection refused IPv6 dial tcp6 [::1]:9: connect: " in text
    assert body(data2) == PAGE and error2 == b""  # one failed request leaves the others alone


def test_websocket_channels(web: Pod) -> None:
    async def go(url: str, protocol: str) -> dict[int, bytes]:
        got: dict[int, bytes] = {}
        async with connect(url.replace("http://", "ws://"), subprotocols=[protocol],  # type: ignore[list-item]
                           open_timeout=DEADLINE) as ws:
            assert ws.subprotocol == protocol
            first = [await ws.recv(), await ws.recv(), await ws.recv(), await ws.recv()]
            # Port i's data is channel 2i, its errors 2i+1; each channel starts with the port.
            assert sorted(first) == [b"\x00\x90\x1f", b"\x01\x90\x1f", b"\x02\x09\x00", b"\x03\x09\x00"]
            await ws.send(b"\x00" + GET)
            async for message in ws:
                assert isinstance(message, bytes)
                got[message[0]] = got.get(message[0], b"") + message[1:]
        return got

    # The ports from the URL's query (the kubelet's own server), or from the CRI request.
    url = forward_url(web, web.id) + "?ports=8080&ports=9"
    got = run(go(url, "v4.channel.k8s.io"))
    assert body(got[0]) == PAGE and 1 not in got  # type: ignore[index,operator]
    assert got[3].startswith(f"error forwarding port 9 to pod {web.id}".encode())  # type: ignore[index]
    got = run(go(forward_url(web, web.id, (8080, 9)), "v4.channel.k8s.io"))
    assert body(got[0]) == PAGE  # type: ignore[index]


class _TunnelClient(ClientProtocol):
    """websockets' client, taking the answered subprotocol as it is: its parser refuses the
    ``/`` in client-go's tunnelling names (gorilla/websocket, client-go's library, does not)."""

    def process_subprotocol(self, headers: Headers) -> Subprotocol | None:
        values = headers.get_all("Sec-WebSocket-Protocol")
        return Subprotocol(values[0]) if values else None


async def tunnel_connect(url: str) -> ClientConnection:
    ws_url = url.replace("http://", "ws://")
    parts = urllib.parse.urlsplit(ws_url)
    protocol = _TunnelClient(parse_uri(ws_url))
    _, conn = await asyncio.get_running_loop().create_connection(
        lambda: ClientConnection(protocol), parts.hostname, parts.port)
    await conn.handshake(additional_headers={"Sec-WebSocket-Protocol": TUNNEL})
    return conn


def test_spdy_tunnelled_over_websocket(web: Pod) -> None:
    """client-go's tunnelling dialer, as ``crictl port-forward --transport websocket``: the SPDY
    session's bytes in binary WebSocket messages."""
    url = forward_url(web, web.id)

    async def go() -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        ws = await tunnel_connect(url)
        assert ws.subprotocol == TUNNEL

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = Connection(reader, writer, server=False)
            conn.start()
            try:
                out.extend(await asyncio.gather(request(conn, 8080, 0), request(conn, 8081, 1)))
            finally:
                await conn.aclose(grace=1.0)

        await wstunnel.serve(ws, session)
        return out

    results = run(go())
    assert [body(data) for data, _ in results] == [PAGE, OTHER]  # type: ignore[union-attr]


def test_large_data_both_ways_and_half_close(web: Pod) -> None:
    """More than the socket buffers and a SPDY window hold, each way: an echo server in the pod
    (nc running cat) gets 3 MB, and sends them all back once our half-close reached it; then a
    2 MB download from httpd."""
    upload = bytes(range(256)) * 12_000

    async def go() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        async with spdy_session(forward_url(web, web.id)) as conn:
            return await request(conn, 9000, 0, upload), \
                await request(conn, 8080, 1, b"GET /big.txt HTTP/1.0\r\n\r\n")

    (echoed, error), (download, error2) = run(go())  # type: ignore[misc]
    assert echoed == upload and error == b""
    assert body(download) == BIG and error2 == b""


def test_host_network_pod(pods: PodDaemon, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a free port on the host's loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = pods.pod("hostnet", host_network=True)
    config.log_directory = str(tmp_path / "logs")
    pod = Pod(pods, pods.run(config), config, tmp_path / "logs")
    try:
        pod.run("web", "sh", "-c", f"mkdir -p /www && echo 'hello from the pod' > /www/index.html "
                                                  f"&& exec busybox httpd -f -p 127.0.0.1:{port} -h /www")
        _serving(pod, port)

        async def go() -> tuple[bytes, bytes]:
            async with spdy_session(forward_url(pod, pod.id)) as conn:
                return await request(conn, port, 0)

        data, error = run(go())  # type: ignore[misc]
        assert body(data) == PAGE and error == b""
    finally:
        pod.cleanup()


def test_a_url_serves_once_and_the_rpc_checks_the_pod(web: Pod, pods: PodDaemon, tmp_path: Path) -> None:
    url = forward_url(web, web.id)

    async def use() -> tuple[bytes, bytes]:
        async with spdy_session(url) as conn:
            return await request(conn, 8080, 0)

    run(use())
    with pytest.raises(HttpStatus) as replayed:
        run(use())
    assert replayed.value.status == 404
    with pytest.raises(errors.NotFound, match='failed to find sandbox "nosuchpod"'):
        forward_url(web, "nosuchpod")
    # A stopped pod is not READY: no URL for it.
    other = make_pod(pods, tmp_path, "stopped")
    try:
        pods.stop_pod(other.id)
        with pytest.raises(errors.CtrpyError, match="sandbox container is not running"):
            forward_url(other, other.id)
    finally:
        other.cleanup()


def test_dropped_clients_leave_nothing_open(web: Pod, pods: PodDaemon) -> None:
    """Clients that vanish mid-connection (SPDY and WebSocket, no close of any kind): ctrpyd
    closes its sockets into the pod, and the pod's server keeps serving."""
    assert pods.process is not None
    fds = Path(f"/proc/{pods.process.pid}/fd")
    _serving(web, 9000, b"GET")
    before = len(list(fds.iterdir()))

    async def drop_spdy() -> None:
        reader, writer = await _upgrade(forward_url(web, web.id))
        conn = Connection(reader, writer, server=False)
        conn.start()
        headers = {"port": "9000", "requestid": "0"}
        await conn.open_stream({**headers, "streamtype": "error"})
        data = await conn.open_stream({**headers, "streamtype": "data"})
        await data.write(b"ping")
        assert await data.read() == b"ping"  # connected through to the echo server
        writer.transport.abort()
        await conn.wait_closed()

    async def drop_websocket() -> None:
        ws = await connect(forward_url(web, web.id, (9000,)).replace("http://", "ws://"),
                           subprotocols=["v4.channel.k8s.io"], open_timeout=DEADLINE)  # type: ignore[list-item]
        await ws.recv()
        await ws.recv()
        await ws.send(b"\x00ping")
        assert await ws.recv() == b"\x00ping"
        ws.transport.abort()

    for _ in range(3):
        run(drop_spdy())
        run(drop_websocket())
    deadline = time.monotonic() + DEADLINE
    while (now := len(list(fds.iterdir()))) > before:
        assert time.monotonic() < deadline, f"{now} fds open, {before} before"
        time.sleep(0.2)
    data, _ = run(_get(forward_url(web, web.id), 8080))  # type: ignore[misc]
    assert body(data) == PAGE
