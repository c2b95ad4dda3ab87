"""What a ctrpyd holds on the host, seen from outside: its processes, fds, threads, mounts, tasks.

The hostile-input and load tests use these to prove that nothing leaked, and to clean up
after themselves (by pid, by mount point) even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ctrpy.shim.spare import SPARE_NAME
from tests.support.containerd import mounts_under, unmount_under
from tests.support.ctrpyd import Daemon

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace("\0", " ")


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat")
    # The command name is in parentheses and may hold spaces: split after the last ")".
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]) if len(fields) > 1 else 0


def _state(pid: int) -> str:
    fields = _read(f"/proc/{pid}/stat").rpartition(")")[2].split()
    return fields[0] if fields else ""


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def daemon_pid(daemon: Daemon) -> int:
    assert daemon.process is not None and daemon.process.poll() is None, "ctrpyd is not running"
    return daemon.process.pid


def template_pids(daemon: Daemon) -> set[int]:
    """ctrpyd's shim template process (its direct child), which lives as long as it does."""
    if daemon.process is None:
        return set()
    pid = daemon.process.pid
    return {p for p in all_pids() if _ppid(p) == pid and "ctrpy.shim.main template" in _cmdline(p)}


def shim_pids(daemon: Daemon) -> set[int]:
    """Processes that belong to this daemon's tasks: shims (forked or spawned) and anything
    running in a bundle (containers, runc), found by their command line or working directory
    naming the daemon's state directory. The daemon, its template and the template's unclaimed
    spare shim (no task's until a Create claims it) are not counted."""
    state = str(daemon.state) + "/"
    mine = {os.getpid()}
    if daemon.process is not None:
        mine.add(daemon.process.pid)
    mine |= template_pids(daemon)
    found = set()
    for pid in all_pids():
        if pid in mine or _read(f"/proc/{pid}/comm").strip() == SPARE_NAME.decode():
            continue
        if state in _cmdline(pid) or _cwd(pid).startswith(state):
            found.add(pid)
    return found


def lingering_shims(daemon: Daemon, timeout: float = 15.0) -> dict[int, str]:
    """The processes of :func:`shim_pids` that are still there after ``timeout`` (a deleted
    task's shim exits shortly after Delete answers), with their command lines."""
    deadline = time.monotonic() + timeout
    while (pids := shim_pids(daemon)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {pid: _cmdline(pid) for pid in pids}


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fds_on(pid: int, name: str) -> int:
    """How many of ``pid``'s fds are open on a file whose path ends with ``name``."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(name):
                count += 1
        except OSError:
            continue
    return count


def zombies(pid: int) -> list[int]:
    """Children of ``pid`` that exited and were never reaped."""
    return [p for p in all_pids() if _ppid(p) == pid and _state(p) == "Z"]


def state_mounts(daemon: Daemon) -> list[str]:
    """Mount points below the daemon's state and root directories (bundles, temporary mounts)."""
    return mounts_under(daemon.state) + mounts_under(daemon.root)


def namespaces(daemon: Daemon) -> list[str]:
    result = daemon.ctr("namespaces", "ls", "-q")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def tasks(daemon: Daemon) -> dict[str, list[str]]:
    """Every task of every namespace, as ``ctr tasks ls -q`` lists them."""
    found = {}
    for ns in namespaces(daemon):
        result = daemon.ctr("tasks", "ls", "-q", namespace=ns)
        assert result.returncode == 0, result.stderr
        if result.stdout.split():
            found[ns] = result.stdout.split()
    return found


def bundles(daemon: Daemon) -> list[str]:
    """Task bundle directories left in the state directory (``tasks/<namespace>/<id>``)."""
    root = daemon.state / "tasks"
    if not root.is_dir():
        return []
    return sorted(f"{ns.name}/{b.name}" for ns in root.iterdir() if ns.is_dir() for b in ns.iterdir())


@dataclass(frozen=True)
class Usage:
    """What a running ctrpyd holds at one moment."""

    fds: int
    threads: int
    db_fds: int

    @classmethod
    def of(cls, daemon: Daemon) -> Usage:
        pid = daemon_pid(daemon)
        return cls(fd_count(pid), thread_count(pid), fds_on(pid, "meta.db"))


def settle(daemon: Daemon, baseline: Usage, slack: int = 4, timeout: float = 30.0) -> Usage:
    """Wait until the daemon's fds and threads come back within ``slack`` of ``baseline`` (idle
    worker threads and closing sockets take a moment), and return what it holds then. Gives up
    after ``timeout`` and returns the last reading: the caller asserts on it."""
    deadline = time.monotonic() + timeout
    while True:
        now = Usage.of(daemon)
        if (now.fds <= baseline.fds + slack and now.threads <= baseline.threads + slack
                and now.db_fds <= baseline.db_fds) or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def kill_leftovers(daemon: Daemon) -> list[int]:
    """SIGKILL every process of this daemon's tasks (by pid) and unmount everything below its
    directories; return the pids killed. For fixture teardown, after a failing test too."""
    killed = []
    for pid in sorted(shim_pids(daemon)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    unmount_under(daemon.base)
    return killed


def remove_cgroups(namespace: str, timeout: float = 10.0) -> None:
    """Remove the cgroup directories runc made for a namespace's containers
    (``/sys/fs/cgroup/<controller>/<namespace>/<id>``), deepest first. A container process
    still in one (its shim was killed) is killed by pid first: the namespace is the test's own."""
    if not namespace or "/" in namespace or namespace.startswith("."):
        return
    tops = [c / namespace for c in (CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ()) if (c / namespace).is_dir()]
    directories = sorted((p for top in tops for p in [top, *top.rglob("*")] if p.is_dir()),
                         key=lambda p: len(str(p)), reverse=True)
    deadline = time.monotonic() + timeout
    for directory in directories:
        while True:
            pids = [int(x) for x in _read(str(directory / "cgroup.procs")).split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            directory.rmdir()


def cleanup_tasks(daemon: Daemon) -> None:
    """Kill and delete every task, then delete every container, through the stock ctr."""
    for ns, ids in tasks(daemon).items():
        for task_id in ids:
            daemon.ctr("tasks", "kill", "-s", "KILL", task_id, namespace=ns)
            for _ in range(50):
                if daemon.ctr("tasks", "rm", task_id, namespace=ns).returncode == 0:
                    break
                time.sleep(0.1)


def assert_serving(daemon: Daemon) -> None:
    """The process is alive and its health service says SERVING for the whole server."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert daemon.process is not None and daemon.process.poll() is None, daemon.log()[-4000:]
    with daemon.client() as client:
        stub = health_pb2_grpc.HealthStub(client.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def assert_no_leaks(daemon: Daemon) -> None:
    """No task in any namespace, no process of a task, no bundle, no mount below the daemon."""
    assert tasks(daemon) == {}
    assert lingering_shims(daemon) == {}
    assert bundles(daemon) == []
    assert state_mounts(daemon) == []


def run_as(user: str, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` (through runuser), capturing its output."""
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=timeout)
