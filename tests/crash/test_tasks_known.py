"""Tasks.List and Get answered from what ctrpyd knows (ctrpy.manager.tasks.known).

A task's init process state is asked of its shim once, then kept until something may move it:
a call of ctrpyd's that moves it (Start, Pause, Resume, Kill, Wait's answer...) or an event the
shim publishes (exit, start, paused...). These tests prove that the kept state follows every
move (exits seen only through the shim's events, pause and resume, a restart of ctrpyd with
exits while it was down), that a listing of tasks whose state is known asks no shim (ctrpyd's
debug log names each State it asks), that a forged event costs a question but changes nothing,
and that a stopped shim still shows UNKNOWN after the state deadline and RUNNING once it runs.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from ctrpy.api.containerd.events import task_pb2 as task_events
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.api.containerd.types.task import task_pb2
from tests.crash.conftest import Archive
from tests.crash.support import IMAGE, CrashDaemon, exit_when, ok, wait_until

ASKED = "state asked of the shim"
STATE_TIMEOUT = 1.0
BOUND = 25.0  # liveness bound for a listing with a stopped shim: its deadline and plenty


def asked(d: CrashDaemon, container_id: str) -> int:
    """How many State calls about ``container_id``'s init process ctrpyd has made so far."""
    lines = (line for line in d.log().splitlines() if ASKED in line)
    return sum(1 for line in lines if {f"id={container_id}", "exec_id="} <= set(line.split()))


def release(d: CrashDaemon, container_id: str, name: str) -> None:
    """Create ``/name`` in the container's root: its ``exit_when`` process exits."""
    (d.rootfs(container_id) / name).touch()


def remove(d: CrashDaemon, *names: str) -> None:
    for name in names:
        d.ctr("tasks", "kill", "-s", "KILL", name)
        wait_until(lambda: d.status(name) in ("STOPPED", "none"), f"{name} to stop")  # noqa: B023
        d.ok("tasks", "rm", name)
        d.ok("containers", "rm", name)


def test_list_follows_exits_pause_and_resume(ready: CrashDaemon) -> None:
    d = ready
    d.ok("run", "-d", IMAGE, "ends", *exit_when("/go", 3))
    d.ok("run", "-d", IMAGE, "stays", "sleep", "1000")
    pids = {name: d.init_pid(name) for name in ("ends", "stays")}
    assert d.tasks() == {"ends": (pids["ends"], "RUNNING"), "stays": (pids["stays"], "RUNNING")}

    # Known now: listing again (and Get) asks no shim.
    before = {name: asked(d, name) for name in ("ends", "stays")}
    for _ in range(3):
        assert d.tasks() == {"ends": (pids["ends"], "RUNNING"), "stays": (pids["stays"], "RUNNING")}
    assert d.get("stays").status == task_pb2.RUNNING
    assert {name: asked(d, name) for name in ("ends", "stays")} == before

    # An exit nobody asked ctrpyd about: only the shim's /tasks/exit tells.
    release(d, "ends", "go")
    wait_until(lambda: d.status("ends") == "STOPPED", "the exit to show in the listing")
    process = d.get("ends")
    assert (process.pid, process.status, process.exit_status) == (pids["ends"], task_pb2.STOPPED, 3)
    assert process.exited_at.seconds > 0
    assert d.tasks()["stays"] == (pids["stays"], "RUNNING")

    # Moves made through ctrpyd show as soon as the call returns.
    d.ok("tasks", "pause", "stays")
    assert d.tasks()["stays"] == (pids["stays"], "PAUSED")
    d.ok("tasks", "resume", "stays")
    assert d.tasks()["stays"] == (pids["stays"], "RUNNING")
    d.ok("tasks", "kill", "-s", "KILL", "stays")
    assert d.wait_exit("stays") == 137
    listed = d.tasks()
    assert listed["stays"] == (pids["stays"], "STOPPED")
    assert d.get("stays").exit_status == 137
    remove(d, "ends", "stays")
    assert d.tasks() == {}


def test_forged_event_changes_nothing(ready: CrashDaemon) -> None:
    """Events.Publish is open to any client: a forged exit makes ctrpyd ask, not believe."""
    d = ready
    d.ok("run", "-d", IMAGE, "real", "sleep", "1000")
    pid = d.init_pid("real")
    assert d.tasks() == {"real": (pid, "RUNNING")}
    before = asked(d, "real")
    forged = task_events.TaskExit(container_id="real", id="real", pid=pid, exit_status=9)
    with d.api() as api:
        for topic, event in (
            (
                "/tasks/exit",
                any_pb2.Any(type_url="containerd.events.TaskExit", value=forged.SerializeToString()),
            ),
            # Malformed ones change nothing either (and ctrpyd keeps serving).
            ("/tasks/start", any_pb2.Any(type_url="containerd.events.TaskStart", value=b"\xff\xff")),
            ("/tasks/exit", any_pb2.Any(type_url="containerd.events.TaskExit", value=b"\xff\xff")),
            ("/tasks/delete", any_pb2.Any(type_url="containerd.events.TaskDelete", value=b"\xff\xff")),
        ):
            api.call(api.events.Publish, events_pb2.PublishRequest(topic=topic, event=event))
    wait_until(
        lambda: d.tasks() == {"real": (pid, "RUNNING")} and asked(d, "real") > before, "ctrpyd to ask again"
    )
    assert d.get("real").status == task_pb2.RUNNING
    remove(d, "real")


def test_list_after_restart(ready: CrashDaemon) -> None:
    """Recovered tasks are known at once (start-up asked their shims); an exit while ctrpyd was
    down shows with its status."""
    d = ready
    names = ("r1", "r2", "r3")
    for name in names:
        d.ok("run", "-d", IMAGE, name, *exit_when("/go", 5))
    pids = {name: d.init_pid(name) for name in names}
    assert {name: state for name, (_, state) in d.tasks().items()} == dict.fromkeys(names, "RUNNING")
    d.kill()
    release(d, "r3", "go")
    wait_until(lambda: (d.bundle("r3") / "exit").exists(), "r3's shim to record its exit")
    d.start()
    mark = {name: asked(d, name) for name in names}
    listed = d.tasks()
    assert listed == {
        "r1": (pids["r1"], "RUNNING"),
        "r2": (pids["r2"], "RUNNING"),
        "r3": (pids["r3"], "STOPPED"),
    }
    assert d.get("r3").exit_status == 5
    # r1 and r2 were known from start-up: that listing asked neither shim.
    assert {name: asked(d, name) for name in ("r1", "r2")} == {name: mark[name] for name in ("r1", "r2")}
    release(d, "r1", "go")
    wait_until(lambda: d.status("r1") == "STOPPED", "r1's exit after the restart")
    assert d.get("r1").exit_status == 5
    assert d.tasks()["r2"] == (pids["r2"], "RUNNING")
    remove(d, *names)


@pytest.fixture
def quickd(busybox_archive: Archive) -> Iterator[CrashDaemon]:
    """A ctrpyd with a short state deadline and busybox imported; reaped afterwards."""
    daemon = CrashDaemon()
    config = daemon.base / "config.toml"
    config.write_text(f"version = 1\n[shim]\nstate_timeout = {STATE_TIMEOUT}\n")
    daemon.extra_args = ("--config", str(config))
    try:
        daemon.start()
        ok(daemon.ctr("images", "import", str(busybox_archive.path)))
        yield daemon
    finally:
        daemon.reap()


def test_stopped_shim_of_a_known_task_shows_unknown(quickd: CrashDaemon) -> None:
    d = quickd
    for name in ("frozen", "fine"):
        d.ok("run", "-d", IMAGE, name, "sleep", "1000")
    pids = {name: d.init_pid(name) for name in ("frozen", "fine")}
    assert d.tasks() == {"frozen": (pids["frozen"], "RUNNING"), "fine": (pids["fine"], "RUNNING")}
    shim = d.shim_pid("frozen")
    os.kill(shim, signal.SIGSTOP)
    try:
        stat = Path(f"/proc/{shim}/stat")
        wait_until(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "T", "the shim to stop")
        began = time.monotonic()
        assert d.tasks() == {"frozen": (0, "UNKNOWN"), "fine": (pids["fine"], "RUNNING")}
        assert time.monotonic() - began < BOUND
        assert d.get("frozen").status == task_pb2.UNKNOWN
    finally:
        os.kill(shim, signal.SIGCONT)
    wait_until(lambda: d.status("frozen") == "RUNNING", "the continued shim's task to list RUNNING")
    assert d.tasks()["frozen"] == (pids["frozen"], "RUNNING")
    remove(d, "frozen", "fine")
