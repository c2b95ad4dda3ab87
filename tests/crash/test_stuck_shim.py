"""A shim that stops answering must not stop the daemon.

One shim among running ones is stopped with SIGSTOP: the stand-in for a shim stuck in the
kernel or swapped out. It still accepts connections (the kernel does that), it never answers.
ctrpyd must then answer every call within its deadline (``[shim]`` ``call_timeout`` and
``state_timeout``, short here): List and Get show the stuck task as containerd does, status
UNKNOWN and pid 0; Kill, ListPids, Delete and a new Wait fail with DeadlineExceeded naming the
shim; a Wait the shim took before it stopped keeps waiting; the other tasks, the events and the
exit reports of other shims go on as usual. After SIGCONT everything works again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from ctrpy.api.containerd.types.task import task_pb2
from ctrpy.errors import CtrpyError, DeadlineExceeded
from tests.crash.conftest import Archive
from tests.crash.support import IMAGE, CrashDaemon, Events, ok, wait_until

CALL_TIMEOUT = 3.0
STATE_TIMEOUT = 1.0
# Liveness bound for one call about the stuck task: its deadline plus plenty for a loaded machine.
BOUND = 25.0
SIGWINCH = int(signal.SIGWINCH)  # ignored by the container's sleep: harmless if it lands late


@pytest.fixture
def stuckd(busybox_archive: Archive) -> Iterator[CrashDaemon]:
    """A ctrpyd with short shim deadlines and busybox imported; reaped afterwards."""
    daemon = CrashDaemon()
    config = daemon.base / "config.toml"
    config.write_text(
        f"version = 1\n[shim]\ncall_timeout = {CALL_TIMEOUT}\nstate_timeout = {STATE_TIMEOUT}\n"
    )
    daemon.extra_args = ("--config", str(config))
    try:
        daemon.start()
        ok(daemon.ctr("images", "import", str(busybox_archive.path)))
        yield daemon
    finally:
        daemon.reap()


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds taken, the result or the CtrpyError raised)."""
    start = time.monotonic()
    try:
        result: Any = call()
    except CtrpyError as exc:
        result = exc
    return time.monotonic() - start, result


def assert_names_the_shim(error: object, container_id: str, namespace: str, shim_pid: int) -> None:
    """A DeadlineExceeded from ctrpyd (not the test client's own deadline), naming the shim."""
    assert isinstance(error, DeadlineExceeded), repr(error)
    message = str(error)
    assert f'task "{container_id}"' in message, message
    assert f'namespace "{namespace}"' in message and f"pid {shim_pid}" in message, message


class Background:
    """A call made in a thread; :meth:`result` waits for it (bounded)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.value = call()
        except CtrpyError as exc:
            self.value = exc

    def running(self) -> bool:
        return self.thread.is_alive()

    def result(self, timeout: float = BOUND) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not return"
        return self.value


def test_stopped_shim_does_not_stop_the_daemon(stuckd: CrashDaemon) -> None:
    d = stuckd
    ns = d.namespace
    events = Events(d, ns)
    for name in ("c1", "c2", "c3"):
        d.ok("run", "-d", IMAGE, name, "sleep", "1000")
    wait_until(lambda: len(events.seen("/tasks/start")) == 3, "ctr events to see the starts")
    pids = {name: d.init_pid(name) for name in ("c1", "c2", "c3")}
    shim = d.shim_pid("c1")
    api = d.api(timeout=60.0)

    def call(method: Callable[..., Any], request: Any) -> Any:
        return api.call(method, request)

    # A Wait the shim takes before it stops: it must survive the stop and end with the exit.
    early_wait = Background(lambda: call(api.tasks.Wait, tasks_pb2.WaitRequest(container_id="c1")))
    wait_until(lambda: "shim took the wait" in d.log(), "the shim to take the Wait")
    os.kill(shim, signal.SIGSTOP)
    try:
        # List: answered after the short state deadline; the stuck task is UNKNOWN, pid 0.
        took, listed = timed(lambda: d.tasks())
        assert took < BOUND
        assert listed == {"c1": (0, "UNKNOWN"), "c2": (pids["c2"], "RUNNING"), "c3": (pids["c3"], "RUNNING")}
        response = call(api.tasks.List, tasks_pb2.ListTasksRequest())
        stuck = [p for p in response.tasks if p.id == "c1"]
        assert len(stuck) == 1
        assert (stuck[0].pid, stuck[0].status, stuck[0].exit_status) == (0, task_pb2.UNKNOWN, 0)
        assert (stuck[0].stdin, stuck[0].stdout, stuck[0].stderr) == ("", "", "")

        # Get of the init process: the same, as containerd answers it.
        took, got = timed(lambda: call(api.tasks.Get, tasks_pb2.GetRequest(container_id="c1")))
        assert took < BOUND
        assert (got.process.id, got.process.pid, got.process.status) == ("c1", 0, task_pb2.UNKNOWN)
        # Get of an exec process: whether it exists only the shim knows.
        took, got = timed(lambda: call(api.tasks.Get, tasks_pb2.GetRequest(container_id="c1", exec_id="e1")))
        assert took < BOUND
        assert_names_the_shim(got, "c1", ns, shim)

        # Calls that act on the stuck task, all at once, from the API and from the stock ctr:
        # each fails with DeadlineExceeded naming the shim. Meanwhile the other tasks are
        # served as usual.
        stuck_ctr = [
            Background(lambda: d.ctr("tasks", "kill", "-s", "SIGWINCH", "c1", timeout=BOUND)),
            Background(lambda: d.ctr("tasks", "ps", "c1", timeout=BOUND)),
        ]
        stuck_calls = {
            "Kill": Background(lambda: call(
                api.tasks.Kill, tasks_pb2.KillRequest(container_id="c1", signal=SIGWINCH))),
            "Pids": Background(lambda: call(
                api.tasks.ListPids, tasks_pb2.ListPidsRequest(container_id="c1"))),
            "Wait": Background(lambda: call(api.tasks.Wait, tasks_pb2.WaitRequest(container_id="c1"))),
            "Delete": Background(lambda: call(
                api.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id="c1"))),
        }  # fmt: skip
        others = call(api.tasks.ListPids, tasks_pb2.ListPidsRequest(container_id="c2"))
        assert pids["c2"] in [p.pid for p in others.processes]
        assert call(api.tasks.Get, tasks_pb2.GetRequest(container_id="c2")).process.status == task_pb2.RUNNING
        d.ok("tasks", "kill", "-s", "KILL", "c2")
        assert d.wait_exit("c2") == 137
        d.ok("tasks", "rm", "c2")
        d.ok("containers", "rm", "c2")
        # The exit report of another shim that dies goes through too.
        os.kill(d.shim_pid("c3"), signal.SIGKILL)
        wait_until(
            lambda: [e for e in events.seen("/tasks/exit") if e.body.get("container_id") == "c3"],
            "ctrpyd to report c3's exit",
        )
        assert [e.body.get("exit_status") for e in events.seen("/tasks/exit")] == [137, 255]
        for name, background in stuck_calls.items():
            assert_names_the_shim(background.result(), "c1", ns, shim)
            assert f"did not answer {name} within {CALL_TIMEOUT:g}s" in str(background.value)

        for background in stuck_ctr:
            result = background.result()
            assert result.returncode != 0
            assert "context deadline exceeded" in result.stderr and f"pid {shim}" in result.stderr, (
                result.stderr
            )
        assert d.tasks() == {"c1": (0, "UNKNOWN"), "c3": (pids["c3"], "STOPPED")}
        assert early_wait.running()  # still waiting, as it should
    finally:
        os.kill(shim, signal.SIGCONT)
        events.stop()

    # Running again: everything works, and the early Wait ends with the exit.
    with api:
        wait_until(lambda: d.status("c1") == "RUNNING", "c1 to list as RUNNING again")
        assert d.tasks()["c1"] == (pids["c1"], "RUNNING")
        listed = api.call(api.tasks.ListPids, tasks_pb2.ListPidsRequest(container_id="c1"))
        assert pids["c1"] in [p.pid for p in listed.processes]
        d.ok("tasks", "kill", "-s", "KILL", "c1")
        exit_info = early_wait.result()
        assert not isinstance(exit_info, CtrpyError), exit_info
        assert exit_info.exit_status == 137
        assert d.wait_exit("c1") == 137
        deleted = api.call(api.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id="c1"))
        assert deleted.exit_status == 137
    for name in ("c1", "c3"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.ctr("tasks", "rm", name)
        d.ok("containers", "rm", name)
    assert d.tasks() == {}
