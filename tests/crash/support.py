"""Helpers for the crash and restart matrix: a ctrpyd that can be armed, and a thorough reaper.

Every test runs in a namespace of its own (``crash-<random>``), so its containers' cgroups
(``/<namespace>/<id>`` under every hierarchy) never collide with another test's. The reaper
finds what a test started by pid (ctrpyd, shims, the shim template: every process whose
command line names the daemon's private directory; containers: through runc's state and the
namespace's cgroups) and removes the cgroups and mounts, whatever state the test left.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from ctrpy.client import Client
from ctrpy.manager import failpoints
from ctrpy.shim.spare import SPARE_NAME
from tests.support.ctrpyd import Daemon
from tests.support.polling import wait_until as wait_until  # re-exported for the crash tests

IMAGE = "docker.io/library/busybox:latest"
RUNC_FAULT = Path(__file__).resolve().parent.parent / "faults" / "runc-fault"
CGROUP_ROOT = Path("/sys/fs/cgroup")
WAIT = 30.0


# A container that runs until a file appears in its root, then exits with a chosen status:
# the test decides when it exits (no sleeps racing the test).
def exit_when(path: str, status: int) -> list[str]:
    """argv for a container process that exits with ``status`` once ``path`` exists."""
    return ["sh", "-c", f"until [ -e {path} ]; do usleep 20000; done; exit {status}"]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X")


def kill_and_wait(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone (or a zombie that its parent will reap)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), f"pid {pid} to die")


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def is_spare(pid: int) -> bool:
    """Whether ``pid`` is a shim template's unclaimed spare shim (ctrpy.shim.spare)."""
    try:
        return Path(f"/proc/{pid}/comm").read_bytes().strip() == SPARE_NAME
    except OSError:
        return False


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (in this mount namespace)."""
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as table:
        points = [line.split()[4] for line in table]
    return [p for p in points if p.startswith(prefix) or p == str(path)]


def cgroup_dirs(relative: str) -> list[Path]:
    """The directory ``relative`` (``/ns/id``) in every cgroup hierarchy where it exists."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(CGROUP_ROOT):
            if entry.is_symlink() or not entry.is_dir():
                continue
            candidate = Path(entry.path) / relative.lstrip("/")
            if candidate.is_dir():
                found.append(candidate)
    return found


def thaw_cgroups(relative: str) -> None:
    """Thaw frozen cgroups at ``relative`` and below: a frozen process does not die of SIGKILL."""
    for top in cgroup_dirs(relative):
        for directory, _, _ in os.walk(top):
            for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                with contextlib.suppress(OSError):
                    Path(directory, name).write_text(value)


def remove_cgroups(relative: str) -> None:
    """Kill what is left in the cgroups at ``relative`` and below (by pid), then remove them."""
    thaw_cgroups(relative)
    for top in cgroup_dirs(relative):
        for directory, _, _ in sorted(os.walk(top), key=lambda item: -len(item[0])):
            for _ in range(50):
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    for line in Path(directory, "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(line), signal.SIGKILL)
                    time.sleep(0.05)


@dataclass(frozen=True)
class Event:
    namespace: str
    topic: str
    body: dict[str, Any]


class Events:
    """``ctr events`` running in the background; :meth:`seen` parses what it printed so far."""

    LINE = re.compile(r"^\S+ \S+ \S+ \S+ (\S+) (/\S+) ?(.*)$")

    def __init__(self, daemon: Daemon, namespace: str) -> None:
        self.namespace = namespace
        self.process = subprocess.Popen(
            [*daemon.ctr_command(namespace), "events"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def seen(self, topic: str | None = None) -> list[Event]:
        events = []
        for line in list(self.lines):
            match = self.LINE.match(line)
            if match is None or match.group(1) != self.namespace:
                continue
            if topic is None or match.group(2) == topic:
                events.append(Event(match.group(1), match.group(2), json.loads(match.group(3) or "{}")))
        return events

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)


class CrashDaemon(Daemon):
    """A ctrpyd for one crash test: its own namespace, failpoints and environment on demand.

    ``failpoints`` (``CTRPY_FAILPOINTS``) and ``env`` apply to the next :meth:`start`; set
    ``failpoints = ""`` to restart without them.
    """

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(extra_args=extra_args)
        self.namespace = f"crash-{secrets.token_hex(4)}"
        self.failpoints = ""
        self.env: dict[str, str] = {}
        self.helpers: list[subprocess.Popen[Any]] = []

    def command(self) -> list[str]:
        env = dict(self.env)
        if self.failpoints:
            env[failpoints.ENV] = self.failpoints
        prefix = ["env", *(f"{k}={v}" for k, v in sorted(env.items()))] if env else []
        return [*prefix, *super().command()]

    def ctr(  # type: ignore[override]
        self, *args: str, namespace: str | None = None, input: bytes | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return super().ctr(*args, namespace=namespace or self.namespace, input=input, timeout=timeout)

    def ok(self, *args: str) -> str:
        """Run ctr, require success, return its stdout."""
        return ok(self.ctr(*args)).stdout

    def api(self, timeout: float | None = 30.0) -> Client:
        return self.client(self.namespace, timeout)

    # --- what the daemon sees -----------------------------------------------------------

    def tasks(self) -> dict[str, tuple[int, str]]:
        """``ctr tasks ls``: id -> (pid, STATUS)."""
        rows = self.ok("tasks", "ls").splitlines()[1:]
        return {f[0]: (int(f[1]), f[2]) for f in (row.split() for row in rows)}

    def status(self, container_id: str) -> str:
        return self.tasks().get(container_id, (0, "none"))[1]

    def containers(self) -> list[str]:
        """``ctr containers ls -q`` (duplicates kept, to catch them)."""
        return self.ok("containers", "ls", "-q").split()

    def get(self, container_id: str, exec_id: str = "") -> Any:
        with self.api() as c:
            request = tasks_pb2.GetRequest(container_id=container_id, exec_id=exec_id)
            return c.call(c.tasks.Get, request).process

    def wait_exit(self, container_id: str, exec_id: str = "") -> int:
        """Tasks.Wait: the exit status of the task (or exec process)."""
        with self.api(timeout=WAIT) as c:
            request = tasks_pb2.WaitRequest(container_id=container_id, exec_id=exec_id)
            return int(c.call(c.tasks.Wait, request).exit_status)

    # --- what is on disk -----------------------------------------------------------------

    def bundle(self, container_id: str) -> Path:
        return self.state / "tasks" / self.namespace / container_id

    def rootfs(self, container_id: str) -> Path:
        return self.bundle(container_id) / "rootfs"

    def shim_pid(self, container_id: str) -> int:
        return int((self.bundle(container_id) / "shim.pid").read_text())

    def init_pid(self, container_id: str) -> int:
        return int((self.bundle(container_id) / "init.pid").read_text())

    def shims(self) -> list[int]:
        """Live processes that name this daemon's state dir: shims and the shim template (not
        the template's spare shim, which is no task's until a Create claims it)."""
        return [pid for pid in processes_naming(str(self.state) + "/") if not is_spare(pid)]

    def leftover_mounts(self) -> list[str]:
        return mounts_under(self.base)

    def cgroups_of(self, container_id: str) -> list[Path]:
        return cgroup_dirs(f"/{self.namespace}/{container_id}")

    # --- crashing ------------------------------------------------------------------------

    def died(self, failpoint: str) -> str:
        """Wait for ctrpyd to kill itself at ``failpoint``; returns its log."""
        assert self.process is not None
        code = self.process.wait(WAIT)
        self.process = None
        log = self.log()
        assert code == -signal.SIGKILL, f"ctrpyd exited with {code}, not by SIGKILL:\n{log[-3000:]}"
        assert f"ctrpy failpoint {failpoint}: killing" in log, log[-3000:]
        return log

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """Run ctr in the background (killed by pid at teardown if still running)."""
        process = subprocess.Popen(
            [*self.ctr_command(self.namespace), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.helpers.append(process)
        return process

    def reap(self) -> None:
        """Remove everything the test left: processes by pid, containers, cgroups, mounts."""
        for helper in self.helpers:
            if helper.poll() is None:
                helper.kill()
            helper.wait()
        self.kill()
        for pid in processes_naming(str(self.base) + "/"):
            kill_and_wait(pid)
        runc_root = self.state / "runc"
        for namespace_root in sorted(runc_root.glob("*")):
            for container in sorted(namespace_root.glob("*")):
                subprocess.run(
                    ["runc", "--root", str(namespace_root), "delete", "--force", container.name],
                    capture_output=True, check=False, timeout=60,
                )  # fmt: skip
        remove_cgroups(f"/{self.namespace}")
        self.cleanup()
