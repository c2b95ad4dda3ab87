"""ctrpy.ttrpc: calls, errors, deadlines and lost connections over a real unix socket, and the
stock ctr (containerd's Go ttrpc client, through ``ctr shim``) as a third-party client."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctrpy import errors, ttrpc
from ctrpy.api.ctrpy.shim.v1 import shim_pb2 as pb
from ctrpy.api.ttrpc import request_pb2
from ctrpy.ttrpc.wire import MAX_MESSAGE, REQUEST, RESPONSE, FrameReader, frame

SERVICE = "ctrpy.test.v1.Probe"


def listening(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    sock.setblocking(False)
    return sock


class Probe:
    """Handlers that answer, fail, wait or echo metadata, as a test asks."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.seen: list[ttrpc.Context] = []

    def methods(self) -> dict[str, ttrpc.Method]:
        def method(fn: Callable[[Any, ttrpc.Context], Awaitable[Any]]) -> ttrpc.Method:
            return ttrpc.Method(pb.StateRequest, fn)

        return {"State": method(self.state), "Fail": method(self.fail), "Hold": method(self.hold),
                "Broken": method(self.broken)}

    async def state(self, request: pb.StateRequest, context: ttrpc.Context) -> pb.StateResponse:
        self.seen.append(context)
        return pb.StateResponse(id=request.id, exec_id=request.exec_id, pid=4242)

    async def fail(self, request: pb.StateRequest, context: ttrpc.Context) -> pb.StateResponse:
        raise errors.NotFound(f'process "{request.exec_id}"')

    async def broken(self, request: pb.StateRequest, context: ttrpc.Context) -> pb.StateResponse:
        raise OSError(28, "No space left on device")

    async def hold(self, request: pb.StateRequest, context: ttrpc.Context) -> pb.StateResponse:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return pb.StateResponse(id="released")


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "ttrpc.sock")


def serve(path: str, probe: Probe) -> Callable[[], Awaitable[ttrpc.Server]]:
    async def start() -> ttrpc.Server:
        server = ttrpc.Server()
        server.register(SERVICE, probe.methods())
        await server.start(listening(path))
        return server

    return start


def test_a_call_carries_its_request_metadata_and_deadline(sock_path: str) -> None:
    async def main() -> None:
        probe = Probe()
        server = await serve(sock_path, probe)()
        async with ttrpc.Client(sock_path) as client:
            answer = await client.call(SERVICE, "State", pb.StateRequest(id="c1", exec_id="e1"), pb.StateResponse,
                                       timeout=5, metadata=[("traceparent", "00-ab"), ("X-Two", "a"), ("x-two", "b")])
            assert (answer.id, answer.exec_id, answer.pid) == ("c1", "e1", 4242)
            again = await client.call(SERVICE, "State", pb.StateRequest(id="c2"), pb.StateResponse)
            assert again.id == "c2"
        (first, second) = probe.seen
        assert first.metadata == {"traceparent": ["00-ab"], "x-two": ["a", "b"]}
        assert first.deadline is not None and second.deadline is None
        assert (first.service, first.method) == (SERVICE, "State")
        await server.shutdown()

    asyncio.run(main())


def test_errors_come_back_as_their_kinds(sock_path: str) -> None:
    async def main() -> None:
        server = await serve(sock_path, Probe())()
        async with ttrpc.Client(sock_path) as client:
            with pytest.raises(errors.NotFound, match='process "e9": not found'):
                await client.call(SERVICE, "Fail", pb.StateRequest(exec_id="e9"), pb.StateResponse)
            with pytest.raises(errors.CtrpyError, match="No space left on device") as unknown:
                await client.call(SERVICE, "Broken", pb.StateRequest(), pb.StateResponse)
            assert type(unknown.value) is errors.CtrpyError
            with pytest.raises(errors.NotImplemented, match="method Nope"):
                await client.call(SERVICE, "Nope", pb.StateRequest(), pb.StateResponse)
            with pytest.raises(errors.NotImplemented, match="service other.Service"):
                await client.call("other.Service", "State", pb.StateRequest(), pb.StateResponse)
            # The connection is still good after every one of them.
            assert (await client.call(SERVICE, "State", pb.StateRequest(id="ok"), pb.StateResponse)).id == "ok"
        await server.shutdown()

    asyncio.run(main())


def test_a_slow_call_holds_up_no_other_and_its_deadline_ends_it_on_both_sides(sock_path: str) -> None:
    async def main() -> None:
        probe = Probe()
        server = await serve(sock_path, probe)()
        async with ttrpc.Client(sock_path) as client:
            held = asyncio.ensure_future(client.call(SERVICE, "Hold", pb.StateRequest(), pb.StateResponse))
            for n in range(20):  # many calls pass while one is held, on the same connection
                answer = await client.call(SERVICE, "State", pb.StateRequest(id=str(n)), pb.StateResponse, timeout=5)
                assert answer.id == str(n)
            probe.release.set()
            assert (await held).id == "released"
            probe.release.clear()
            with pytest.raises(errors.DeadlineExceeded, match=f"{SERVICE}/Hold"):
                await client.call(SERVICE, "Hold", pb.StateRequest(), pb.StateResponse, timeout=0.2)
            await asyncio.wait_for(probe.cancelled.wait(), 10)  # the server gave up on it too
            assert (await client.call(SERVICE, "State", pb.StateRequest(id="after"), pb.StateResponse)).id == "after"
        await server.shutdown()

    asyncio.run(main())


async def holding(path: str) -> tuple[Probe, ttrpc.Server, ttrpc.Client, asyncio.Future[pb.StateResponse]]:
    """A server, a client, and a call of the client's that the server holds (running)."""
    probe = Probe()
    server = await serve(path, probe)()
    client = ttrpc.Client(path)
    held = asyncio.ensure_future(client.call(SERVICE, "Hold", pb.StateRequest(), pb.StateResponse))
    while not server.calls:
        await asyncio.sleep(0.01)
    return probe, server, client, held


def test_a_lost_connection_fails_the_calls_in_flight_and_the_next_call_dials_again(sock_path: str) -> None:
    async def main() -> None:
        probe, server, client, held = await holding(sock_path)
        await server.shutdown()  # cancels the held call and closes the connection
        with pytest.raises(errors.Unavailable, match="connection closed"):
            await held
        assert probe.cancelled.is_set()
        os.unlink(sock_path)
        with pytest.raises(errors.Unavailable, match="No such file or directory"):
            await client.call(SERVICE, "State", pb.StateRequest(), pb.StateResponse)
        server = await serve(sock_path, Probe())()  # a new server at the same path
        assert (await client.call(SERVICE, "State", pb.StateRequest(id="back"), pb.StateResponse)).id == "back"
        await client.close()
        await server.shutdown()

    asyncio.run(main())


def test_a_shared_client_keeps_its_connection_until_its_last_user_closes(sock_path: str) -> None:
    """The tasks of a pod's shim share one connection: one closing leaves the others' calls,
    in flight or later, on it."""
    async def main() -> None:
        probe, server, first, held = await holding(sock_path)
        second = first.share()
        await first.close()  # one user gone: the held call and the connection stay
        assert (await second.call(SERVICE, "State", pb.StateRequest(id="s"), pb.StateResponse)).id == "s"
        probe.release.set()
        assert (await held).id == "released"
        assert server.connections == 1
        await second.close()  # the last user: the connection goes
        while server.connections:
            await asyncio.sleep(0.01)
        await server.shutdown()

    asyncio.run(main())


def test_the_client_stops_the_server_on_its_own_side_when_it_goes_away(sock_path: str) -> None:
    async def main() -> None:
        probe, server, client, held = await holding(sock_path)
        await client.close()
        with pytest.raises(errors.Unavailable):
            await held
        await asyncio.wait_for(probe.cancelled.wait(), 10)  # as gRPC cancels on disconnect
        await server.shutdown()

    asyncio.run(main())


def test_the_frames_on_the_wire_are_ttrpc_frames(sock_path: str) -> None:
    """By hand, byte by byte: header (length, stream id, type 1, flags), then ttrpc.Request; a
    frame over the 4 MiB limit is refused with RESOURCE_EXHAUSTED on its stream, and the
    connection carries on."""

    async def main() -> None:
        server = await serve(sock_path, Probe())()
        reader, writer = await asyncio.open_unix_connection(sock_path)
        request = request_pb2.Request(service=SERVICE, method="State",
                                      payload=pb.StateRequest(id="raw").SerializeToString())
        body = request.SerializeToString()
        writer.write(struct.pack(">IIBB", len(body), 7, 1, 0) + body)
        header = await reader.readexactly(10)
        length, stream_id, kind, flags = struct.unpack(">IIBB", header)
        assert (stream_id, kind, flags) == (7, RESPONSE, 0)
        response = request_pb2.Response.FromString(await reader.readexactly(length))
        assert response.status.code == 0
        assert pb.StateResponse.FromString(response.payload).id == "raw"
        writer.write(struct.pack(">IIBB", MAX_MESSAGE + 1, 9, REQUEST, 0) + bytes(MAX_MESSAGE + 1))
        writer.write(frame(11, REQUEST, body))
        answers = {}
        for _ in range(2):
            length, stream_id, kind, _ = struct.unpack(">IIBB", await reader.readexactly(10))
            answers[stream_id] = request_pb2.Response.FromString(await reader.readexactly(length))
        assert answers[9].status.code == 8  # RESOURCE_EXHAUSTED
        assert answers[11].status.code == 0
        writer.close()
        await server.shutdown()

    asyncio.run(main())


def test_frames_split_anywhere_are_read_whole() -> None:
    stream = frame(1, REQUEST, b"abc") + frame(3, REQUEST, b"") + frame(5, RESPONSE, b"x" * 300)
    for size in (1, 2, 7, 10, 11, len(stream)):
        reader = FrameReader()
        got = [f for i in range(0, len(stream), size) for f in reader.feed(stream[i : i + size])]
        assert [(f.stream_id, f.kind, f.payload) for f in got] == [(1, 1, b"abc"), (3, 1, b""), (5, 2, b"x" * 300)]


def test_the_stock_ctr_calls_a_ctrpy_ttrpc_server() -> None:
    """``ctr shim --id ID state`` dials containerd's old shim address, an abstract unix socket,
    with containerd's Go ttrpc client and calls containerd.task.v2.Task/State, whose request and
    response share their field numbers with ctrpy.shim.v1's State."""
    namespace, container = "ttrpc-test", f"c-{uuid.uuid4().hex[:12]}"
    seen: list[ttrpc.Context] = []

    async def state(request: pb.StateRequest, context: ttrpc.Context) -> pb.StateResponse:
        seen.append(context)
        if request.id != container:
            raise errors.NotFound(f'task "{request.id}"')
        return pb.StateResponse(id=request.id, bundle="/bundle", pid=31337, status=2)

    async def main() -> None:
        server = ttrpc.Server()
        server.register("containerd.task.v2.Task", {"State": ttrpc.Method(pb.StateRequest, state)})
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Go dials abstract names with their terminating NUL counted in the address.
        sock.bind(f"\0/containerd-shim/{namespace}/{container}/shim.sock\0".encode())
        sock.listen(4)
        sock.setblocking(False)
        await server.start(sock)
        try:
            result = await asyncio.to_thread(
                subprocess.run, ["ctr", "--address", "/nonexistent/containerd.sock", "--namespace", namespace,
                                 "shim", "--id", container, "state"],
                capture_output=True, text=True, timeout=30,
            )
        finally:
            await server.shutdown()
        assert result.returncode == 0, result.stderr
        assert '"pid": 31337' in result.stdout and f'"id": "{container}"' in result.stdout, result.stdout
        assert (seen[0].service, seen[0].method) == ("containerd.task.v2.Task", "State")

    asyncio.run(main())
