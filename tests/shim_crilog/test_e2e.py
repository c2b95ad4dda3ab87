"""CRI logs written by the shim, end to end: a real ctrpyd, real runc, busybox containers.

Tasks are created through the containerd API with ``ctrpy-crilog://`` URIs in stdout and
stderr, as the CRI layer creates them; the stock ``ctr`` passes such a URI with ``--log-uri``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import datetime
from pathlib import Path

import pytest

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from ctrpy.errors import FailedPrecondition, InvalidArgument
from ctrpy.manager.runtime import ShimClient
from ctrpy.shim import crilog
from tests.crash.support import IMAGE, CrashDaemon, alive, wait_until

STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?(Z|[+-]\d\d:\d\d)")
# Prints "line 0", "line 1", ... to stdout until killed.
COUNTER = ["sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); usleep 20000; done"]

Record = tuple[str, str, bytes]  # (stream, tag, content)


def create_task(
    d: CrashDaemon, container_id: str, stdout: str, stderr: str = "", terminal: bool = False
) -> int:
    """Tasks.Create with the given stdio (no Start); returns the init pid."""
    with d.api() as c:
        container = c.call(c.containers.Get, containers_pb2.GetContainerRequest(id=container_id)).container
        request = snapshots_pb2.MountsRequest(snapshotter=container.snapshotter, key=container.snapshot_key)
        mounts = c.call(c.snapshots.Mounts, request).mounts
        created = c.call(c.tasks.Create, tasks_pb2.CreateTaskRequest(
            container_id=container_id, rootfs=mounts, stdout=stdout, stderr=stderr, terminal=terminal,
        ))  # fmt: skip
    return int(created.pid)


def give_a_terminal(d: CrashDaemon, container_id: str) -> None:
    """Set ``process.terminal`` in a container's spec (ctr's argument parsing makes ``--tty``
    and ``sh -c`` hard to combine)."""
    with d.api() as c:
        container = c.call(c.containers.Get, containers_pb2.GetContainerRequest(id=container_id)).container
        spec = json.loads(container.spec.value)
        spec["process"]["terminal"] = True
        container.spec.value = json.dumps(spec).encode()
        request = containers_pb2.UpdateContainerRequest(container=container)
        request.update_mask.paths.append("spec")
        c.call(c.containers.Update, request)


def start_task(d: CrashDaemon, container_id: str) -> None:
    with d.api() as c:
        c.call(c.tasks.Start, tasks_pb2.StartRequest(container_id=container_id))


def run_logged(d: CrashDaemon, container_id: str, log: Path, argv: list[str], max_line_size: int = 16384) -> str:
    """Create and start a container whose stdout and stderr go to the CRI log ``log``."""
    d.ok("containers", "create", IMAGE, container_id, "--", *argv)
    uri = crilog.uri(str(log), max_line_size)
    create_task(d, container_id, uri, uri)
    start_task(d, container_id)
    return uri


def records(path: Path) -> list[Record]:
    """Every record of a CRI log, its timestamp checked to be RFC3339Nano."""
    found = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        stamp, stream, tag, content = line.split(b" ", 3)
        assert STAMP.fullmatch(stamp), line
        assert stream in (b"stdout", b"stderr") and tag in (b"P", b"F"), line
        found.append((stream.decode(), tag.decode(), content))
    return found


def stamps(path: Path) -> list[float]:
    text = path.read_text(errors="replace")
    return [datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00")).timestamp()
            for line in text.splitlines()]  # fmt: skip


def count(path: Path) -> int:
    return len(records(path)) if path.exists() else 0


def reopen(d: CrashDaemon, container_id: str) -> None:
    """ShimClient.reopen_log(), as the CRI layer calls it, with the address from the bundle."""
    address = (d.bundle(container_id) / "address").read_text().strip()

    async def call() -> None:
        client = await ShimClient.connect(address, container_id, namespace=d.namespace)
        try:
            await client.reopen_log()
        finally:
            await client.close()

    asyncio.run(call())


def kill_and_wait(d: CrashDaemon, container_id: str) -> int:
    d.ok("tasks", "kill", "-s", "KILL", container_id)
    return d.wait_exit(container_id)


def counter_lines(path: Path) -> list[int]:
    """The numbers of a COUNTER log, checking every record is a whole stdout line."""
    numbers = []
    for stream, tag, content in records(path):
        assert (stream, tag) == ("stdout", "F") and content.startswith(b"line "), content
        numbers.append(int(content[5:]))
    return numbers


def test_both_streams_are_written_in_the_cri_format(logd: CrashDaemon) -> None:
    d = logd
    log = d.base / "pods" / "pod-1" / "c" / "0.log"  # no directory yet: the shim makes them
    script = (
        "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf 'crlf\\r\\n'; echo;"
        " head -c 250 /dev/zero | tr '\\0' x; echo; printf '\\001\\377\\n'; printf 'no newline'"
    )
    run_logged(d, "both", log, ["sh", "-c", script], max_line_size=100)
    assert d.wait_exit("both") == 0
    found = records(log)
    assert [(t, c) for s, t, c in found if s == "stderr"] == [("F", b"err1"), ("F", b"err2")]
    assert [(t, c) for s, t, c in found if s == "stdout"] == [
        ("F", b"out1"), ("F", b"out2"), ("F", b"crlf"), ("F", b""),
        ("P", b"x" * 100), ("P", b"x" * 100), ("F", b"x" * 50),
        ("F", b"\x01\xff"), ("P", b"no newline"),
    ]  # fmt: skip
    assert log.stat().st_mode & 0o777 == 0o640
    assert log.parent.stat().st_mode & 0o777 == 0o755
    assert stamps(log) == sorted(stamps(log))
    # Tasks.Get hands the URIs back unchanged.
    with d.api() as c:
        process = c.call(c.tasks.Get, tasks_pb2.GetRequest(container_id="both")).process
    assert process.stdout == process.stderr == crilog.uri(str(log), 100)
    d.ok("tasks", "rm", "both")
    d.ok("containers", "rm", "both")


def test_the_stock_ctr_asks_for_it_with_log_uri(logd: CrashDaemon) -> None:
    log = logd.base / "ctr" / "run.log"
    logd.ok("run", "--rm", "--log-uri", f"ctrpy-crilog://{log}?max_line_size=4", IMAGE, "ctr-run",
            "echo", "hello")  # fmt: skip
    assert records(log) == [("stdout", "P", b"hell"), ("stdout", "F", b"o")]


def test_a_malformed_uri_is_refused_and_leaves_nothing(logd: CrashDaemon) -> None:
    d = logd
    d.ok("containers", "create", IMAGE, "bad", "true")
    for uri in ("ctrpy-crilog://relative/x.log", f"ctrpy-crilog://{d.base}/x.log?colour=red"):
        with pytest.raises(InvalidArgument):
            create_task(d, "bad", uri, uri)
    assert d.tasks() == {}
    log = d.base / "good.log"
    create_task(d, "bad", crilog.uri(str(log)), crilog.uri(str(log)))
    start_task(d, "bad")
    assert d.wait_exit("bad") == 0
    d.ok("tasks", "rm", "bad")
    assert log.exists() and records(log) == []


def test_a_terminal_is_one_stream_tagged_stdout(logd: CrashDaemon) -> None:
    d = logd
    log = d.base / "logs" / "tty.log"
    d.ok("containers", "create", IMAGE, "tty", "--", "sh", "-c", "echo tty-out; echo tty-err >&2")
    give_a_terminal(d, "tty")
    create_task(d, "tty", crilog.uri(str(log)), terminal=True)
    start_task(d, "tty")
    assert d.wait_exit("tty") == 0
    assert records(log) == [("stdout", "F", b"tty-out"), ("stdout", "F", b"tty-err")]  # \r\n gone
    d.ok("tasks", "rm", "tty")


def test_reopen_after_rotation_writes_the_new_file(logd: CrashDaemon) -> None:
    d = logd
    log = d.base / "logs" / "rotating.log"
    d.ok("containers", "create", IMAGE, "rot", "--", *COUNTER)
    uri = crilog.uri(str(log))
    create_task(d, "rot", uri, uri)
    with pytest.raises(FailedPrecondition, match='container "rot" is not running'):
        reopen(d, "rot")  # created, not started
    start_task(d, "rot")
    wait_until(lambda: count(log) >= 5, "the first lines")

    rotated = log.with_name("rotating.log.1")
    os.rename(log, rotated)  # what the kubelet does, then it calls ReopenContainerLog
    reopen(d, "rot")
    old_size = rotated.stat().st_size
    wait_until(lambda: count(log) >= 5, "lines in the new file")
    assert rotated.stat().st_size == old_size  # nothing more went to the renamed file
    before, after = counter_lines(rotated), counter_lines(log)
    assert before + after == list(range(len(before) + len(after)))  # no line lost or split
    assert log.stat().st_mode & 0o777 == 0o640

    assert kill_and_wait(d, "rot") == 137
    with pytest.raises(FailedPrecondition, match="not running"):
        reopen(d, "rot")
    d.ok("tasks", "rm", "rot")

    # A task whose output goes elsewhere has nothing to reopen.
    d.ok("run", "-d", IMAGE, "plain", "sleep", "1000")
    reopen(d, "plain")
    assert kill_and_wait(d, "plain") == 137
    d.ok("tasks", "rm", "plain")


def test_logs_keep_growing_while_ctrpyd_is_killed_and_after(logd: CrashDaemon) -> None:
    d = logd
    log = d.base / "logs" / "survivor.log"
    run_logged(d, "survivor", log, COUNTER)
    wait_until(lambda: count(log) >= 5, "the first lines")
    shim = d.shim_pid("survivor")

    d.kill()  # SIGKILL, as a crash
    down = count(log)
    wait_until(lambda: count(log) >= down + 10, "lines while ctrpyd is down")
    assert alive(shim)

    d.start()
    assert d.status("survivor") == "RUNNING"
    up = count(log)
    wait_until(lambda: count(log) >= up + 10, "lines after the restart")
    # The restarted ctrpyd's shim client still reopens the log.
    rotated = log.with_name("survivor.log.1")
    os.rename(log, rotated)
    reopen(d, "survivor")
    wait_until(lambda: count(log) >= 3, "lines in the new file")

    assert kill_and_wait(d, "survivor") == 137
    numbers = counter_lines(rotated) + counter_lines(log)
    assert numbers == list(range(len(numbers)))  # contiguous: nothing lost across the crash
    assert stamps(rotated) + stamps(log) == sorted(stamps(rotated) + stamps(log))
    d.ok("tasks", "rm", "survivor")
