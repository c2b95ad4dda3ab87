"""CRI Exec through the streaming server over WebSocket, with a client of our own (websockets)
speaking the v4/v5 channel protocols as client-go does: output channels kept apart, stdin and
its half-close, a terminal and its size, exit codes as Status JSON, single-use URLs, and an exec
killed when its client drops the connection."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ctrpy import errors
from tests.cri_container.support import Pod
from tests.cri_net.conftest import plugin_dir
from tests.cri_streaming.support import DEADLINE, exec_url

if plugin_dir() is None:
    pytest.skip("containernetworking-plugins not installed (scripts/bootstrap installs them)",
                allow_module_level=True)

V4, V5 = "v4.channel.k8s.io", "v5.channel.k8s.io"


@dataclass
class Outcome:
    protocol: str | None
    channels: dict[int, bytes] = field(default_factory=dict)

    def out(self, channel: int) -> bytes:
        return self.channels.get(channel, b"")

    @property
    def status(self) -> dict[str, object]:
        return json.loads(self.out(3))  # type: ignore[no-any-return]


async def _session(url: str, protocol: str, sends: list[bytes]) -> Outcome:
    """Open ``url``, send ``sends`` (each a whole message, channel byte first) and collect every
    channel until the server closes the connection."""
    async with connect(url.replace("http://", "ws://"), subprotocols=[protocol],  # type: ignore[list-item]
                       compression=None, open_timeout=DEADLINE) as ws:
        outcome = Outcome(ws.subprotocol)

        async def send_all() -> None:  # while reading, as a real client does
            for message in sends:
                await ws.send(message)

        sender = asyncio.ensure_future(send_all())
        try:
            async for message in ws:
                if isinstance(message, str):  # the base64 protocols: a digit, then base64
                    channel, data = int(message[0]), base64.b64decode(message[1:])
                else:
                    channel, data = message[0], message[1:]
                outcome.channels[channel] = outcome.out(channel) + data
        except ConnectionClosed:
            pass
        await asyncio.gather(sender, return_exceptions=True)
    return outcome


def session(url: str, protocol: str = V5, sends: list[bytes] | None = None) -> Outcome:
    return asyncio.run(asyncio.wait_for(_session(url, protocol, sends or []), DEADLINE))


def test_stdout_and_stderr_are_kept_apart(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    for protocol in (V5, V4):
        url = exec_url(pod, container_id, "sh", "-c", "echo out; echo err >&2")
        assert url.startswith("http://127.0.0.1:") and "/exec/" in url
        outcome = session(url, protocol)
        assert outcome.protocol == protocol
        assert outcome.out(1) == b"out\n" and outcome.out(2) == b"err\n"
        assert outcome.status == {"metadata": {}, "status": "Success"}


def test_base64_and_pre_v4_protocols(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    outcome = session(exec_url(pod, container_id, "sh", "-c", "echo out; exit 4"), "v4.base64.channel.k8s.io")
    assert outcome.out(1) == b"out\n" and outcome.status["details"] == {
        "causes": [{"reason": "ExitCode", "message": "4"}]}
    # Before v4 the error channel has the message only, and nothing on success.
    outcome = session(exec_url(pod, container_id, "sh", "-c", "exit 4"), "channel.k8s.io")
    assert outcome.out(3).startswith(b"command terminated with non-zero exit code")
    assert 3 not in session(exec_url(pod, container_id, "true"), "base64.channel.k8s.io").channels


def test_exit_code_is_a_failure_status(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    outcome = session(exec_url(pod, container_id, "sh", "-c", "exit 3"), V4)
    assert outcome.status == {
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }  # fmt: skip


def test_stdin_reaches_cat_and_half_close_ends_it(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    url = exec_url(pod, container_id, "cat", stdin=True)
    outcome = session(url, V5, [b"\x00hello ", b"\x00world\n", b"\xff\x00"])
    assert outcome.out(1) == b"hello world\n"
    assert outcome.status["status"] == "Success"


def test_large_data_both_ways(box: tuple[Pod, str]) -> None:
    """More than a FIFO holds, in and out: nothing lost when either side waits for the other."""
    pod, container_id = box
    data = bytes(range(256)) * 1200  # 300 KiB
    chunks = [b"\x00" + data[i:i + 65536] for i in range(0, len(data), 65536)]
    outcome = session(exec_url(pod, container_id, "cat", stdin=True), V5, [*chunks, b"\xff\x00"])
    assert outcome.out(1) == data
    outcome = session(exec_url(pod, container_id, "sh", "-c", "head -c 1000000 /dev/zero"), V4)
    assert outcome.out(1) == b"\0" * 1000000


def test_tty_takes_the_size_from_the_resize_channel(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    url = exec_url(pod, container_id, "sh", "-c", "read line; stty size", stdin=True, stderr=False, tty=True)
    resize = b"\x04" + json.dumps({"Width": 123, "Height": 45}).encode()
    outcome = session(url, V5, [resize, b"\x00go\r"])
    assert b"45 123" in outcome.out(1)
    assert 2 not in outcome.channels
    assert outcome.status["status"] == "Success"


def test_a_url_serves_once(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    url = exec_url(pod, container_id, "true")
    assert session(url).status["status"] == "Success"
    with pytest.raises(InvalidStatus) as replayed:
        session(url)
    assert replayed.value.response.status_code == 404
    guessed = url.rsplit("/", 1)[0] + "/AAAAAAAAAAA"
    with pytest.raises(urllib.error.HTTPError) as unknown:
        urllib.request.urlopen(guessed, timeout=DEADLINE)
    assert unknown.value.code == 404


def test_a_dropped_client_kills_its_exec(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    url = exec_url(pod, container_id, "sh", "-c", "echo up; sleep 1000")

    async def drop() -> None:
        ws = await connect(url.replace("http://", "ws://"), subprotocols=[V5],  # type: ignore[list-item]
                           open_timeout=DEADLINE)
        seen = b""
        while b"up" not in seen:
            message = await ws.recv()
            assert isinstance(message, bytes)
            seen += message[1:]
        ws.transport.abort()  # no close handshake: the client is just gone

    asyncio.run(asyncio.wait_for(drop(), DEADLINE))
    deadline = time.monotonic() + DEADLINE
    while "sleep 1000" in (ps := pod.exec_sync(container_id, "ps", "-o", "args").stdout.decode()):
        assert time.monotonic() < deadline, ps
        time.sleep(0.2)


def test_exec_requests_are_validated(box: tuple[Pod, str], tmp_path: Path) -> None:
    pod, container_id = box
    with pytest.raises(errors.InvalidArgument, match="tty and stderr"):
        exec_url(pod, container_id, "sh", tty=True)
    with pytest.raises(errors.InvalidArgument, match="one of stdin, stdout, or stderr"):
        exec_url(pod, container_id, "sh", stdout=False, stderr=False)
    with pytest.raises(errors.NotFound):
        exec_url(pod, "no-such-container", "sh")
    idle = pod.create(pod.container_config("idle", "sleep", "600"))
    with pytest.raises(errors.FailedPrecondition, match="CONTAINER_CREATED"):
        exec_url(pod, idle, "sh")
