"""Shims that die, or cannot be reached when ctrpyd starts.

A shim killed with SIGKILL: ctrpyd sees it go (a pidfd), runs ``ctrpy-shim delete`` on the
bundle (runc delete --force, unmount, remove), and reports the task STOPPED with status 255,
or with the real status when the container had exited first and the shim had written it.
A shim that cannot be reached at start-up (socket gone, a stale socket refusing connections,
a frozen process) costs at most the connect timeout, and is cleaned up the same way.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest

from tests.crash.support import IMAGE, CrashDaemon, Events, alive, exit_when, wait_until


def _gone(daemon: CrashDaemon, container_id: str, pids: list[int]) -> None:
    """The container and its shim left nothing: processes, bundle, mounts, cgroups."""
    assert [pid for pid in pids if alive(pid)] == []
    assert not daemon.bundle(container_id).exists()
    assert [m for m in daemon.leftover_mounts() if f"/{container_id}/" in m] == []
    assert daemon.cgroups_of(container_id) == []


@pytest.mark.parametrize("state", ["running", "paused", "with-exec"])
def test_killed_shim_is_cleaned_up_and_reported_255(ready: CrashDaemon, state: str) -> None:
    d = ready
    events = Events(d, d.namespace)
    try:
        d.ok("run", "-d", IMAGE, "c1", "sleep", "1000")
        wait_until(lambda: events.seen("/tasks/start"), "ctr events to be subscribed")
        if state == "paused":
            d.ok("tasks", "pause", "c1")
        if state == "with-exec":
            d.ok("tasks", "exec", "-d", "--exec-id", "e1", "c1", "sleep", "1000")
        pids = [d.shim_pid("c1"), d.init_pid("c1")]
        pids += [int(line.split()[0]) for line in d.ok("tasks", "ps", "c1").splitlines()[1:]]
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: events.seen("/tasks/exit"), "ctrpyd to report the exit")
        assert [e.body.get("exit_status") for e in events.seen("/tasks/exit")] == [255]
        assert d.status("c1") == "STOPPED"
        assert d.get("c1").exit_status == 255
        assert d.wait_exit("c1") == 255
        _gone(d, "c1", pids)
        d.ok("tasks", "rm", "c1")
        assert d.tasks() == {}
        d.ok("containers", "rm", "c1")
        wait_until(lambda: events.seen("/containers/delete"), "the container's removal")
        assert len(events.seen("/tasks/exit")) == 1 and len(events.seen("/tasks/delete")) == 1
    finally:
        events.stop()


def test_shim_killed_after_its_container_exited_keeps_the_real_status(ready: CrashDaemon) -> None:
    d = ready
    events = Events(d, d.namespace)
    try:
        d.ok("run", "-d", IMAGE, "c1", *exit_when("/go", 7))
        wait_until(lambda: events.seen("/tasks/start"), "ctr events to be subscribed")
        pids = [d.shim_pid("c1"), d.init_pid("c1")]
        (d.rootfs("c1") / "go").touch()
        wait_until(lambda: events.seen("/tasks/exit"), "the shim to report the exit")
        assert (d.bundle("c1") / "exit").exists()  # written before the event
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: not d.bundle("c1").exists(), "ctrpyd to clean up after the shim")
        assert d.status("c1") == "STOPPED"
        assert d.get("c1").exit_status == 7
        assert d.wait_exit("c1") == 7
        _gone(d, "c1", pids)
        d.ok("tasks", "rm", "c1")
        wait_until(lambda: events.seen("/tasks/delete"), "the task's removal")
        # The shim had reported the exit: ctrpyd did not report it a second time.
        assert [e.body.get("exit_status") for e in events.seen("/tasks/exit")] == [7]
        d.ok("containers", "rm", "c1")
    finally:
        events.stop()


def _stale_socket(path: str) -> None:
    """Replace the socket file with one nobody listens on (connect: ECONNREFUSED)."""
    os.unlink(path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()


@pytest.mark.parametrize("how", ["socket-removed", "stale-socket", "frozen-shim"])
def test_unreachable_shim_at_restart(ready: CrashDaemon, how: str) -> None:
    d = ready
    d.ok("run", "-d", IMAGE, "lost", "sleep", "1000")
    d.ok("run", "-d", IMAGE, "fine", "sleep", "1000")
    pids = [d.shim_pid("lost"), d.init_pid("lost")]
    path = (d.bundle("lost") / "address").read_text().strip().removeprefix("unix://")
    d.kill()
    if how == "socket-removed":
        os.unlink(path)
    elif how == "stale-socket":
        _stale_socket(path)
        with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(path)
    else:
        os.kill(pids[0], signal.SIGSTOP)  # accepts connections (the kernel does), never answers
    d.start()
    assert d.tasks() == {"lost": (pids[1], "STOPPED"), "fine": (d.init_pid("fine"), "RUNNING")}
    assert d.get("lost").exit_status == 255
    assert "shim is gone" in d.log()
    _gone(d, "lost", pids)
    assert not os.path.exists(path)
    d.ok("tasks", "rm", "lost")
    d.ok("containers", "rm", "lost")
    d.ok("tasks", "kill", "-s", "KILL", "fine")
    assert d.wait_exit("fine") == 137
    d.ok("tasks", "rm", "fine")
    d.ok("containers", "rm", "fine")
    assert d.leftover_mounts() == []
