"""CRI Exec through the streaming server over SPDY/3.1, with a client of our own on ctrpyd's SPDY
framing (:mod:`tests.cri_streaming.spdyclient`) that opens its streams as kubectl and crictl do:
output streams kept apart, stdin and its half-close, a terminal and its resize stream, exit codes
as Status JSON (v4) or text (v1-v3), single-use URLs, one port for SPDY and WebSocket, and an exec
killed when its client drops the connection."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import pytest

from ctrpy.manager.cri.streaming.spdyconn import Connection
from tests.cri_container.support import Pod
from tests.cri_net.conftest import plugin_dir
from tests.cri_streaming import spdyclient
from tests.cri_streaming.spdyclient import V1, V3, V4, Outcome, resize
from tests.cri_streaming.support import DEADLINE, exec_url

if plugin_dir() is None:
    pytest.skip("containernetworking-plugins not installed (scripts/bootstrap installs them)",
                allow_module_level=True)

def session(url: str, versions: tuple[str, ...] = spdyclient.CLIENT_GO, **kwargs: object) -> Outcome:
    return asyncio.run(asyncio.wait_for(spdyclient.exec_session(url, versions, **kwargs), DEADLINE))  # type: ignore[arg-type]


def test_stdout_and_stderr_are_kept_apart(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    outcome = session(exec_url(pod, container_id, "sh", "-c", "echo out; echo err >&2"),
                      ("v5.channel.k8s.io", *spdyclient.CLIENT_GO))
    assert outcome.reply.status == 101
    assert outcome.reply.get("Upgrade") == "SPDY/3.1"
    assert outcome.reply.get("X-Stream-Protocol-Version") == V4  # v5 is WebSocket-only
    assert outcome.out("stdout") == b"out\n" and outcome.out("stderr") == b"err\n"
    assert outcome.status == {"metadata": {}, "status": "Success"}


def test_stdin_reaches_cat_and_its_end_ends_it(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    data = bytes(range(256)) * 800  # 200 KiB: more than a FIFO and a SPDY window hold
    outcome = session(exec_url(pod, container_id, "cat", stdin=True), stdin=True,
                      sends=[("stdin", b"hello "), ("stdin", b"world\n"), ("stdin", data)])
    assert outcome.out("stdout") == b"hello world\n" + data, (len(outcome.out("stdout")), outcome.out("error"))
    assert outcome.status["status"] == "Success"


def test_tty_takes_the_size_from_the_resize_stream(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    url = exec_url(pod, container_id, "sh", "-c", "read line; stty size", stdin=True, stderr=False, tty=True)
    outcome = session(url, stdin=True, stderr=False, tty=True,
                      sends=[("resize", resize(123, 45)), ("stdin", b"go\r")], close_stdin=False)
    assert b"45 123" in outcome.out("stdout")
    assert "stderr" not in outcome.streams
    assert outcome.status["status"] == "Success"


def test_tty_process_starts_with_the_clients_first_size(box: tuple[Pod, str]) -> None:
    """The first size is awaited (briefly) before the process starts, so a command that reads
    its terminal size at once sees it, not 0x0 (crictl exec -it CID stty size)."""
    pod, container_id = box
    url = exec_url(pod, container_id, "sh", "-c", "stty size 2>&1; echo done", stdin=False, stderr=False, tty=True)
    outcome = session(url, stdin=False, stderr=False, tty=True, sends=[("resize", resize(101, 31))])
    assert outcome.out("stdout").startswith(b"31 101\r\n")
    assert outcome.status["status"] == "Success"


def test_tty_without_a_size_still_starts(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    url = exec_url(pod, container_id, "echo", "no size", stdin=False, stderr=False, tty=True)
    outcome = session(url, stdin=False, stderr=False, tty=True)
    assert b"no size" in outcome.out("stdout")
    assert outcome.status["status"] == "Success"


def test_exit_code_is_a_failure_status(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    outcome = session(exec_url(pod, container_id, "sh", "-c", "exit 3"))
    assert outcome.status == {
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }  # fmt: skip


def test_older_versions_report_failures_as_text(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    outcome = session(exec_url(pod, container_id, "sh", "-c", "echo out; exit 3"), (V3,))
    assert outcome.reply.get("X-Stream-Protocol-Version") == V3
    assert outcome.out("stdout") == b"out\n"
    assert outcome.out("error").startswith(b"command terminated with non-zero exit code")
    assert session(exec_url(pod, container_id, "true"), (V3,)).out("error") == b""  # nothing on success
    # v1, as 1.0 kubelets: the error stream is reset once the streams are there.
    outcome = session(exec_url(pod, container_id, "sh", "-c", "echo one"), ("v9.channel.k8s.io", V1))
    assert outcome.reply.get("X-Stream-Protocol-Version") == V1
    assert outcome.out("stdout") == b"one\n" and "error" in outcome.reset


def test_no_common_version_is_refused(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    outcome = session(exec_url(pod, container_id, "true"), ("v9.channel.k8s.io",))
    assert outcome.reply.status == 403
    assert outcome.reply.get_all("X-Accepted-Stream-Protocol-Versions") == [V4, V3, "v2.channel.k8s.io", V1]
    assert b"unable to negotiate protocol" in outcome.reply.body
    assert session(exec_url(pod, container_id, "true"), ()).reply.status == 400


def test_a_url_serves_once(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    url = exec_url(pod, container_id, "true")
    assert session(url).status["status"] == "Success"
    replayed = session(url)
    assert (replayed.reply.status, replayed.reply.body) == (404, b"404 page not found\n")
    # A live token on a request that is no upgrade: used up, and refused.
    url = exec_url(pod, container_id, "true")
    with pytest.raises(urllib.error.HTTPError) as plain:
        urllib.request.urlopen(url, timeout=DEADLINE)
    assert plain.value.code == 400
    assert session(url).reply.status == 404


def test_request_heads_are_bounded(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    url = exec_url(pod, container_id, "true")
    host, port = url.split("/")[2].split(":")

    async def send(head: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head)
        answer = await reader.read()
        writer.close()
        return answer

    huge = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert asyncio.run(asyncio.wait_for(send(huge), DEADLINE)).startswith(b"HTTP/1.1 431 ")
    assert asyncio.run(asyncio.wait_for(send(b"NOT HTTP\r\n\r\n"), DEADLINE)).startswith(b"HTTP/1.1 400 ")
    # The token was not taken by those: it still serves.
    assert session(url).status["status"] == "Success"


def test_a_dropped_client_kills_its_exec(box: tuple[Pod, str]) -> None:
    pod, container_id = box
    url = exec_url(pod, container_id, "sh", "-c", "echo up; sleep 1001")

    async def drop() -> None:
        reply, reader, writer = await spdyclient.upgrade(url, spdyclient.CLIENT_GO)
        assert reply.status == 101
        conn = Connection(reader, writer, server=False)
        conn.start()
        streams = {name: await conn.open_stream({"streamtype": name}) for name in ("error", "stdout", "stderr")}
        seen = b""
        while b"up" not in seen:
            chunk = await streams["stdout"].read()
            assert chunk, f"stdout ended early: {seen!r}"
            seen += chunk
        writer.transport.abort()  # no GOAWAY, no FIN: the client is just gone
        await conn.aclose(grace=0.1)

    asyncio.run(asyncio.wait_for(drop(), DEADLINE))
    deadline = time.monotonic() + DEADLINE
    while "sleep 1001" in (ps := pod.exec_sync(container_id, "ps", "-o", "args").stdout.decode()):
        assert time.monotonic() < deadline, ps
        time.sleep(0.2)
