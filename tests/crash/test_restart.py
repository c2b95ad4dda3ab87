"""ctrpyd stopped (SIGTERM) or killed (SIGKILL) with tasks in every state, then started again.

The containers never notice: their shims keep them running while ctrpyd is away, record the
exits that happen meanwhile (the bundle's ``exit`` file, the exec's status in the shim), and
ctrpyd finds them all again at start-up.
"""

from __future__ import annotations

import re
import threading

import pytest

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from tests.crash.support import IMAGE, CrashDaemon, alive, exit_when, wait_until


def create_task(daemon: CrashDaemon, container_id: str) -> int:
    """Tasks.Create without Start (ctr has no command for that); returns the init pid."""
    with daemon.api() as c:
        container = c.call(c.containers.Get, containers_pb2.GetContainerRequest(id=container_id)).container
        request = snapshots_pb2.MountsRequest(snapshotter=container.snapshotter, key=container.snapshot_key)
        mounts = c.call(c.snapshots.Mounts, request).mounts
        created = c.call(
            c.tasks.Create, tasks_pb2.CreateTaskRequest(container_id=container_id, rootfs=mounts)
        )
    return int(created.pid)


def start_task(daemon: CrashDaemon, container_id: str) -> None:
    with daemon.api() as c:
        c.call(c.tasks.Start, tasks_pb2.StartRequest(container_id=container_id))


def exec_pids(daemon: CrashDaemon, container_id: str) -> dict[str, int]:
    """Exec id -> host pid, from ``ctr tasks ps``."""
    found = {}
    for line in daemon.ok("tasks", "ps", container_id).splitlines()[1:]:
        match = re.match(r"(\d+)\s+&ProcessDetails\{ExecID:([^,]+),", line)
        if match:
            found[match.group(2)] = int(match.group(1))
    return found


def remove_all(daemon: CrashDaemon) -> None:
    """Kill, delete and remove every task and container; nothing may stay mounted."""
    for container_id, (_, status) in daemon.tasks().items():
        if status == "PAUSED":
            daemon.ok("tasks", "resume", container_id)
        if status != "STOPPED":
            daemon.ok("tasks", "kill", "-s", "KILL", container_id)
            daemon.wait_exit(container_id)
        daemon.ok("tasks", "rm", container_id)
    for container_id in daemon.containers():
        daemon.ok("containers", "rm", container_id)
        assert daemon.cgroups_of(container_id) == []
    assert daemon.leftover_mounts() == []
    wait_until(lambda: len(daemon.shims()) == 1, "every shim but the template to exit")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_tasks_in_every_state_are_recovered(ready: CrashDaemon, how: str) -> None:
    d = ready
    d.ok("containers", "create", IMAGE, "created", "sleep", "1000")
    create_task(d, "created")
    d.ok("run", "-d", IMAGE, "running", "sleep", "1000")
    d.ok("run", "-d", IMAGE, "paused", "sleep", "1000")
    d.ok("tasks", "pause", "paused")
    d.ok("run", "-d", IMAGE, "stopped", "sh", "-c", "exit 5")
    wait_until(lambda: d.status("stopped") == "STOPPED", "the task 'stopped' to exit")
    d.ok("run", "-d", IMAGE, "downtime", *exit_when("/go", 7))
    d.ok("run", "-d", IMAGE, "execs", "sleep", "1000")
    d.ok("tasks", "exec", "-d", "--exec-id", "later", "execs", *exit_when("/later", 3))
    d.ok("tasks", "exec", "-d", "--exec-id", "during", "execs", *exit_when("/during", 4))
    execs = exec_pids(d, "execs")
    before = d.tasks()
    assert {k: s for k, (_, s) in before.items()} == {
        "created": "CREATED", "running": "RUNNING", "paused": "PAUSED", "stopped": "STOPPED",
        "downtime": "RUNNING", "execs": "RUNNING",
    }  # fmt: skip

    if how == "SIGTERM":
        assert d.stop() == 0
    else:
        d.kill()
    for name, (pid, status) in before.items():
        assert status == "STOPPED" or alive(pid), f"{name} died with the manager"
    # Exits while ctrpyd is down: the init of 'downtime', the exec 'during'.
    (d.rootfs("downtime") / "go").touch()
    (d.rootfs("execs") / "during").touch()
    wait_until(lambda: (d.bundle("downtime") / "exit").exists(), "the exit file of 'downtime'")
    wait_until(lambda: not alive(execs["during"]), "the exec 'during' to exit")

    d.start()
    after = d.tasks()
    assert after == {**before, "downtime": (before["downtime"][0], "STOPPED")}
    assert d.containers() == sorted(before)
    assert d.wait_exit("stopped") == 5
    assert d.wait_exit("downtime") == 7
    assert d.get("downtime").exit_status == 7
    assert d.wait_exit("execs", "during") == 4
    assert set(exec_pids(d, "execs")) == {"later"}
    (d.rootfs("execs") / "later").touch()
    assert d.wait_exit("execs", "later") == 3
    # The recovered tasks work as before.
    start_task(d, "created")
    assert d.status("created") == "RUNNING"
    d.ok("tasks", "resume", "paused")
    assert d.status("paused") == "RUNNING"
    waited: list[int] = []
    waiter = threading.Thread(target=lambda: waited.append(d.wait_exit("running")))
    waiter.start()
    d.ok("tasks", "kill", "-s", "KILL", "running")
    waiter.join(60)
    assert waited == [137]
    remove_all(d)


def test_kill_9_with_three_running_and_one_exiting_meanwhile(ready: CrashDaemon) -> None:
    d = ready
    for name in ("a", "b", "c"):
        d.ok("run", "-d", IMAGE, name, "sleep", "1000")
    d.ok("run", "-d", IMAGE, "quits", *exit_when("/go", 42))
    before = d.tasks()
    d.kill()
    (d.rootfs("quits") / "go").touch()
    wait_until(lambda: (d.bundle("quits") / "exit").exists(), "the exit file of 'quits'")
    d.start()
    assert d.tasks() == {**before, "quits": (before["quits"][0], "STOPPED")}
    assert all(alive(pid) for name, (pid, _) in before.items() if name != "quits")
    assert d.wait_exit("quits") == 42
    for name in ("a", "b", "c"):
        d.ok("tasks", "kill", "-s", "KILL", name)
        assert d.wait_exit(name) == 137
    remove_all(d)


def test_restart_twice_keeps_a_stopped_tasks_status(ready: CrashDaemon) -> None:
    """A stopped task that nobody deleted keeps its status across any number of restarts."""
    d = ready
    d.ok("run", "-d", IMAGE, "done", "sh", "-c", "exit 9")
    wait_until(lambda: d.status("done") == "STOPPED", "the task to exit")
    d.kill()
    d.start()
    d.stop()
    d.start()
    assert d.status("done") == "STOPPED"
    assert d.wait_exit("done") == 9
    remove_all(d)
