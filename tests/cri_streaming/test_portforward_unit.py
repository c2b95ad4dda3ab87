"""The port-forward protocol handling without a daemon: SPDY stream pairing (timeouts, rejected
and duplicate streams, a pod that is gone), the ``ports`` query and the WebSocket subprotocol
choice. The end-to-end forwards are in test_portforward.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.exceptions import NegotiationError

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import InvalidArgument, NotFound
from ctrpy.manager.cri.streaming import portforward
from ctrpy.manager.cri.streaming.spdyconn import Connection, Stream, StreamReset


class NoSandboxes:
    """Sandboxes in which every pod is gone."""

    def get(self, sandbox_id: str) -> Any:
        raise NotFound(f'an error occurred when try to find sandbox "{sandbox_id}"')


@asynccontextmanager
async def served(timeout: float = 30.0) -> AsyncIterator[Connection]:
    """A client connection to serve_spdy over a socket pair."""
    left, right = socket.socketpair()
    server = Connection(*await asyncio.open_connection(sock=left), server=True)
    client = Connection(*await asyncio.open_connection(sock=right), server=False)
    server.start()
    client.start()
    request = api.PortForwardRequest(pod_sandbox_id="gone")
    job = asyncio.ensure_future(portforward.serve_spdy(server, NoSandboxes(), request,  # type: ignore[arg-type]
                                                       creation_timeout=timeout))
    try:
        yield client
    finally:
        await client.aclose(grace=1.0)
        await asyncio.wait_for(job, 10)
        await server.aclose(grace=1.0)


async def read_all(stream: Stream) -> bytes:
    data = b""
    while chunk := await stream.read():
        data += chunk
    return data


def run(job: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(job(), 30))


def test_a_pair_missing_its_data_stream_times_out() -> None:
    async def go() -> None:
        async with served(timeout=0.3) as client:
            error = await client.open_stream({"streamtype": "error", "port": "80", "requestid": "7"})
            text = b""
            with pytest.raises(StreamReset):
                while chunk := await error.read():
                    text += chunk
            assert text.endswith(b"request=7) timed out waiting for streams")

    run(go)


def test_streams_with_bad_headers_are_reset() -> None:
    async def go() -> None:
        async with served() as client:
            for headers in ({"streamtype": "data"}, {"streamtype": "data", "port": "0"},
                            {"streamtype": "data", "port": "http"}, {"port": "80"},
                            {"streamtype": "stdin", "port": "80"}):
                stream = await client.open_stream(headers)
                with pytest.raises(StreamReset):
                    await stream.read()

    run(go)


def test_a_duplicate_stream_is_reported_on_the_error_stream() -> None:
    async def go() -> None:
        async with served(timeout=0.5) as client:
            headers = {"port": "80", "requestid": "1"}
            error = await client.open_stream({**headers, "streamtype": "error"})
            again = await client.open_stream({**headers, "streamtype": "error"})
            with pytest.raises(StreamReset):
                await again.read()
            text = b""
            with pytest.raises(StreamReset):  # then the pair times out
                while chunk := await error.read():
                    text += chunk
            assert text.startswith(b"error processing stream for request 1: error stream already assigned")

    run(go)


def test_a_pod_that_is_gone_gets_the_kubelet_error_text() -> None:
    async def go() -> None:
        async with served() as client:
            headers = {"port": "8080", "requestid": "0"}
            error = await client.open_stream({**headers, "streamtype": "error"})
            await error.close()
            data = await client.open_stream({**headers, "streamtype": "data"})
            assert await read_all(error) == (
                b'error forwarding port 8080 to pod gone, uid : failed to find sandbox "gone" in store: '
                b'an error occurred when try to find sandbox "gone": not found')
            assert await read_all(data) == b""

    run(go)


def test_old_clients_pair_streams_by_id() -> None:
    """No requestID header: error stream n goes with data stream n+2 (client-go before 1.6)."""
    async def go() -> None:
        async with served() as client:
            error = await client.open_stream({"streamtype": "error", "port": "8080"})
            await error.close()
            await client.open_stream({"streamtype": "data", "port": "8080"})
            assert (await read_all(error)).startswith(b"error forwarding port 8080 to pod gone")

    run(go)


def test_ports_query() -> None:
    assert portforward.ports_from_query("ports=80&ports=81,82") == [80, 81, 82]
    for query, message in (("", '"ports" is required'), ("ports=", "cannot be empty"),
                           ("ports=x", 'unable to parse "x"'), ("ports=70000", "unable to parse"),
                           ("ports=0", "must be > 0")):
        with pytest.raises(InvalidArgument, match=message):
            portforward.ports_from_query(query)


def test_websocket_subprotocols() -> None:
    assert portforward.select_ws([]) is None
    assert portforward.select_ws(["v4.channel.k8s.io", "SPDY/3.1+portforward.k8s.io"]) == \
        "SPDY/3.1+portforward.k8s.io"
    assert portforward.select_ws(["v4.base64.channel.k8s.io"]) == "v4.base64.channel.k8s.io"
    with pytest.raises(NegotiationError):
        portforward.select_ws(["v5.channel.k8s.io"])
