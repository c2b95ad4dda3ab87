"""What the benchmarks read from the kernel: memory per process, CPU per cgroup, process trees.

- :func:`smaps` reads ``/proc/PID/smaps_rollup`` (Rss, Pss, Private_Dirty... in kB).
- :class:`CpuGroup` is a cgroup of the CPU-accounting hierarchy (v1 ``cpuacct``, or the
  unified hierarchy on a v2-only host). The harness moves itself into one just long enough to
  start a daemon there: the daemon, and everything it starts (shims, runc) inherit it, so the
  group's usage counter is the CPU of the whole system under test. Containers themselves are
  not counted, since runc moves them into their own cgroups.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path


def smaps(pid: int) -> dict[str, int]:
    """The kB figures of ``/proc/PID/smaps_rollup``; an empty dict when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    values: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key] = int(fields[0])
    return values


def comm(pid: int) -> str:
    """The process's ``comm`` name, "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, None when it is missing or malformed."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _cgroup_mounts() -> tuple[Path | None, Path | None]:
    """(the v1 hierarchy holding cpuacct, the cgroup2 mount), either None when absent."""
    v1 = v2 = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) < 3:
            continue
        point = Path(left.split()[4])
        if fields[0] == "cgroup" and "cpuacct" in fields[2].split(","):
            v1 = point
        elif fields[0] == "cgroup2" and v2 is None:
            v2 = point
    return v1, v2


class CpuGroup:
    """One CPU-accounting cgroup, created under the hierarchy's root (see the module docstring)."""

    def __init__(self, name: str) -> None:
        v1, v2 = _cgroup_mounts()
        if v1 is not None:
            self.hierarchy, self.unified = v1, False
        elif v2 is not None:
            self.hierarchy, self.unified = v2, True
        else:
            raise RuntimeError("no CPU accounting cgroup hierarchy is mounted")
        self.path = self.hierarchy / name
        self.path.mkdir(parents=True, exist_ok=True)

    def usage_ns(self) -> int:
        """CPU time used so far by every process that ever ran in the group, in nanoseconds."""
        if not self.unified:
            return int((self.path / "cpuacct.usage").read_text())
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) * 1000
        raise RuntimeError(f"no usage_usec in {self.path / 'cpu.stat'}")

    def holds(self, pid: int) -> bool:
        """Whether ``pid`` is a member of this group right now."""
        relative = "/" + str(self.path.relative_to(self.hierarchy))
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        for line in lines:
            _, controllers, path = line.split(":", 2)
            wanted = controllers == "" if self.unified else "cpuacct" in controllers.split(",")
            if wanted:
                return path == relative
        return False

    def _own_path(self) -> Path:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (controllers == "") if self.unified else ("cpuacct" in controllers.split(",")):
                return self.hierarchy / path.lstrip("/")
        raise RuntimeError("this process is in no CPU accounting cgroup")

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with this process in the group, so that what it starts lands there."""
        home = self._own_path()
        (self.path / "cgroup.procs").write_text(str(os.getpid()))
        try:
            yield
        finally:
            (home / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self, wait: float = 5.0) -> None:
        """Remove the group (and an emptied parent); gives up quietly while it still has members."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()
