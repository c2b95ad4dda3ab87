"""CRI Attach through the streaming server, against a real ctrpyd, pod and containers: a WebSocket
client of our own (v5/v4 channels) and the SPDY client of :mod:`.spdyclient`. The container's
stdin is held by its shim, which also sends its output to every attached client besides the CRI
log; these tests check what a user of ``kubectl attach`` relies on: stdin reaching ``sh``, stdout
and stderr kept apart, a terminal and its size, ``stdin_once``, several clients at once, a client
that never reads (it must not hold up the container or its log), and attaching again after
ctrpyd restarted."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from tests.cri_container.support import Pod, log_lines
from tests.cri_net.conftest import plugin_dir
from tests.cri_sandbox.support import PodDaemon

from . import spdyclient
from .support import DEADLINE

if plugin_dir() is None:
    pytest.skip("containernetworking-plugins not installed (scripts/bootstrap installs them)",
                allow_module_level=True)

V4, V5 = "v4.channel.k8s.io", "v5.channel.k8s.io"
SUCCESS = {"metadata": {}, "status": "Success"}


def start(pod: Pod, name: str, *args: str, stdin: bool = False, stdin_once: bool = False, tty: bool = False) -> str:
    config = pod.container_config(name, *args, tty=tty)
    config.stdin, config.stdin_once = stdin, stdin_once
    container_id = pod.create(config)
    pod.start(container_id)
    return container_id


def attach_url(pod: Pod, container_id: str, *, stdin: bool = False, stdout: bool = True, stderr: bool = True,
               tty: bool = False) -> str:
    with pod.cri() as c:
        return c.call(c.runtime.Attach, api.AttachRequest(container_id=container_id, stdin=stdin, stdout=stdout,
                                                          stderr=stderr, tty=tty)).url


class Client:
    """One WebSocket attach: what came on each channel so far, read as the test needs it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.channels: dict[int, bytes] = {}
        self.closed = False

    def out(self, channel: int) -> bytes:
        return self.channels.get(channel, b"")

    async def send(self, channel: int, data: bytes) -> None:
        await self.ws.send(bytes((channel,)) + data)

    async def close_stdin(self) -> None:
        await self.ws.send(b"\xff\x00")  # v5: half-close of channel 0

    async def _next(self) -> None:
        try:
            message = await self.ws.recv()
        except ConnectionClosed:
            self.closed = True
            return
        if isinstance(message, str):
            channel, data = int(message[0]), base64.b64decode(message[1:])
        else:
            channel, data = message[0], message[1:]
        self.channels[channel] = self.out(channel) + data

    async def until(self, channel: int, wanted: bytes) -> None:
        """Read until ``wanted`` has come on ``channel``."""
        while wanted not in self.out(channel):
            assert not self.closed, f"closed before {wanted!r} on {channel}: {self.channels}"
            await self._next()

    async def to_the_end(self) -> dict[str, object]:
        """Read until the server closes; the status it sent on the error channel."""
        while not self.closed:
            await self._next()
        return json.loads(self.out(3)) if self.out(3) else {}  # type: ignore[no-any-return]


async def open_client(url: str, protocol: str = V5) -> Client:
    """Connect, and wait for the server's empty first message: the attach is in place then
    (output from now on reaches this client)."""
    ws = await connect(url.replace("http://", "ws://"), subprotocols=[protocol],  # type: ignore[list-item]
                       compression=None, open_timeout=DEADLINE)
    client = Client(ws)
    await client._next()
    assert not client.closed and not any(client.channels.values()), client.channels
    return client


def run(job: object) -> None:
    asyncio.run(asyncio.wait_for(job, DEADLINE))  # type: ignore[arg-type]


def wait_for(what: str, check: object) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_attach_types_into_sh_and_keeps_outputs_apart(pod: Pod) -> None:
    container_id = start(pod, "shell", "sh", stdin=True)

    async def scenario() -> None:
        client = await open_client(attach_url(pod, container_id, stdin=True))
        await client.send(0, b"echo hi\n")
        await client.until(1, b"hi\n")
        await client.send(0, b"echo oops >&2\n")
        await client.until(2, b"oops\n")
        await client.send(0, b"exit 3\n")
        assert await client.to_the_end() == SUCCESS  # attach reports no exit code
        assert client.out(1) == b"hi\n" and client.out(2) == b"oops\n"

    run(scenario())
    wait_for("the exit", lambda: pod.exited(container_id) is not None)
    assert pod.exited(container_id).exit_code == 3  # type: ignore[union-attr]
    records = pod.log("shell").splitlines()
    assert [r.split(" ", 1)[1] for r in records] == ["stdout F hi", "stderr F oops"]


def test_tty_attach_resizes_the_terminal(pod: Pod) -> None:
    container_id = start(pod, "tty", "sh", stdin=True, tty=True)

    async def scenario() -> None:
        client = await open_client(attach_url(pod, container_id, stdin=True, stderr=False, tty=True))
        await client.send(4, json.dumps({"Width": 77, "Height": 22}).encode())
        await client.send(0, b"stty size; echo marker-$((6*7))\r")
        await client.until(1, b"marker-42")
        assert b"22 77" in client.out(1)
        await client.send(0, b"exit\r")
        assert await client.to_the_end() == SUCCESS
        assert 2 not in client.channels

    run(scenario())
    assert "22 77" in log_lines(pod.log("tty"))


def test_the_end_of_stdin_only_detaches_without_stdin_once(pod: Pod) -> None:
    container_id = start(pod, "cat", "cat", stdin=True)

    async def scenario() -> None:
        first = await open_client(attach_url(pod, container_id, stdin=True))
        await first.send(0, b"one\n")
        await first.until(1, b"one\n")
        await first.close_stdin()
        assert await first.to_the_end() == SUCCESS  # containerd: detached
        second = await open_client(attach_url(pod, container_id, stdin=True))
        await second.send(0, b"two\n")
        await second.until(1, b"two\n")
        await second.ws.close()

    run(scenario())
    assert pod.state(container_id) == api.CONTAINER_RUNNING
    assert log_lines(pod.log("cat")) == ["one", "two"]


def test_stdin_once_closes_the_containers_stdin(pod: Pod) -> None:
    container_id = start(pod, "once", "sh", "-c", "cat; echo after-eof; while true; do echo tick; sleep 0.2; done",
                         stdin=True, stdin_once=True)

    async def scenario() -> None:
        first = await open_client(attach_url(pod, container_id, stdin=True))
        await first.send(0, b"one\n")
        await first.until(1, b"one\n")
        await first.close_stdin()
        await first.until(1, b"after-eof\n")  # cat saw the end of its stdin; still attached
        await first.until(1, b"tick\n")
        await first.ws.close()
        # Later clients get no stdin (the container's is closed), only the output.
        second = await open_client(attach_url(pod, container_id, stdin=True))
        await second.send(0, b"two\n")
        await second.until(1, b"tick\n")
        await second.ws.close()

    run(scenario())
    lines = log_lines(pod.log("once"))
    assert lines[:2] == ["one", "after-eof"] and "two" not in lines
    pod.stop(container_id)


def test_two_clients_see_the_same_output(pod: Pod) -> None:
    container_id = start(pod, "two", "sh", stdin=True)

    async def scenario() -> None:
        typing = await open_client(attach_url(pod, container_id, stdin=True))
        watching = await open_client(attach_url(pod, container_id, stdout=True, stderr=False), V4)
        await typing.send(0, b"echo both; echo err >&2\n")
        await typing.until(2, b"err\n")
        await watching.until(1, b"both\n")
        await typing.send(0, b"exit\n")
        assert await watching.to_the_end() == SUCCESS
        assert await typing.to_the_end() == SUCCESS
        assert watching.out(1) == b"both\n" and 2 not in watching.channels

    run(scenario())


def test_output_only_attach_ends_when_the_container_stops(pod: Pod) -> None:
    container_id = start(pod, "ticker", "sh", "-c", "while true; do echo tick; sleep 0.2; done")

    async def scenario() -> None:
        client = await open_client(attach_url(pod, container_id, stdout=True, stderr=True))
        await client.until(1, b"tick\n")
        await asyncio.to_thread(pod.stop, container_id)
        assert await client.to_the_end() == SUCCESS

    run(scenario())


def test_a_client_that_never_reads_does_not_hold_up_the_container(pod: Pod) -> None:
    lines = 40_000  # 40 MB: far more than every buffer between the shim and the client holds
    container_id = start(pod, "flood", "sh", "-c",
                         "line=$(head -c 999 /dev/zero | tr '\\0' x); read go; "
                         f"yes $line | head -n {lines}; echo done; sleep 1000", stdin=True)

    async def scenario() -> None:
        client = await open_client(attach_url(pod, container_id, stdin=True))
        client.ws.transport.pause_reading()  # never reads again
        await client.send(0, b"go\n")
        log = pod.log_dir / "flood.log"
        await asyncio.to_thread(wait_for, "the whole output in the log", lambda: _ends_with(log, "stdout F done"))
        client.ws.transport.abort()

    run(scenario())
    records = log_lines(pod.log("flood"))
    assert len(records) == lines + 1 and records[-1] == "done"
    assert set(records[:-1]) == {"x" * 999}
    assert pod.state(container_id) == api.CONTAINER_RUNNING
    shim_log = pod.daemon.state / "tasks" / "k8s.io" / container_id / "shim.log"
    assert "attach client fell behind: disconnected" in shim_log.read_text()
    pod.stop(container_id)


def _ends_with(path: Path, record: str) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, 2) - 200, 0))
            return f.read().decode().rstrip("\n").endswith(record)
    except FileNotFoundError:
        return False


def test_attach_over_spdy(pod: Pod) -> None:
    container_id = start(pod, "spdycat", "cat", stdin=True, stdin_once=True)
    outcome = asyncio.run(asyncio.wait_for(spdyclient.exec_session(
        attach_url(pod, container_id, stdin=True), stdin=True, sends=[("stdin", b"over spdy\n")]), DEADLINE))
    assert outcome.reply.status == 101
    assert outcome.out("stdout") == b"over spdy\n" and outcome.out("stderr") == b""
    assert outcome.status == SUCCESS  # cat ended with its stdin: the attach is over
    wait_for("the exit", lambda: pod.exited(container_id) is not None)


def test_attach_requests_are_checked(pod: Pod) -> None:
    created = pod.create(pod.container_config("created", "sh"))
    running = start(pod, "checked", "sleep", "1000")
    with pod.cri() as c:
        cases: list[tuple[api.AttachRequest, type[errors.CtrpyError]]] = [
            (api.AttachRequest(container_id=created, stdout=True), errors.FailedPrecondition),
            (api.AttachRequest(container_id=running, tty=True, stdout=True, stderr=True), errors.InvalidArgument),
            (api.AttachRequest(container_id=running), errors.InvalidArgument),
            (api.AttachRequest(container_id="nosuch", stdout=True), errors.NotFound),
        ]
        for request, kind in cases:
            with pytest.raises(kind):
                c.call(c.runtime.Attach, request)
    # Stdin asked of a container without one is ignored (containerd): the output still comes.
    assert "/attach/" in attach_url(pod, running, stdin=True)
    pod.stop(running)


def test_attach_after_ctrpyd_restarted(pods: PodDaemon, pod: Pod) -> None:
    """Last in the module: restarts the shared daemon."""
    container_id = start(pod, "survivor", "sh", stdin=True)
    pods.restart()

    async def scenario() -> None:
        client = await open_client(attach_url(pod, container_id, stdin=True))
        await client.send(0, b"echo again\n")
        await client.until(1, b"again\n")
        await client.send(0, b"exit\n")
        assert await client.to_the_end() == SUCCESS

    run(scenario())
    assert log_lines(pod.log("survivor")) == ["again"]
