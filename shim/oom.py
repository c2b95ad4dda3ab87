"""Noticing that the kernel killed a process of the container for lack of memory.

cgroup v1: an eventfd registered on the container's ``memory.oom_control`` through
``cgroup.event_control`` fires on every OOM in the cgroup (and once more when the cgroup is
removed). cgroup v2: the ``oom_kill`` counter of ``memory.events``. Either way the watcher
compares the cgroup's ``oom_kill`` counter with what it has already reported, and reports each
new kill once; :meth:`OomWatcher.check` is also called when the init process exits, so a kill
is never missed even if the event arrived late.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable


def _mountpoint(controller: str) -> str | None:
    """Where the v1 hierarchy with ``controller`` is mounted (or the v2 mount for "")."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) < 3:
                continue
            fstype, options = fields[0], fields[2].split(",")
            point = left.split()[4]
            if controller and fstype == "cgroup" and controller in options:
                return point
            if not controller and fstype == "cgroup2":
                return point
    return None


def memory_cgroup(pid: int) -> tuple[str, bool] | None:
    """The memory cgroup directory of ``pid`` and whether it is v2, or None when unknown."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    unified_path = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            mount = _mountpoint("memory")
            return (os.path.join(mount, path.lstrip("/")), False) if mount else None
        if controllers == "":
            unified_path = path
    if unified_path is not None:
        mount = _mountpoint("")
        if mount and os.path.exists(os.path.join(mount, "cgroup.controllers")):
            directory = os.path.join(mount, unified_path.lstrip("/"))
            if os.path.exists(os.path.join(directory, "memory.events")):
                return directory, True
    return None


def read_oom_kills(directory: str, unified: bool) -> int | None:
    """The cgroup's ``oom_kill`` counter, or None when it cannot be read."""
    name = "memory.events" if unified else "memory.oom_control"
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        return None
    return None


class OomWatcher:
    """Calls ``on_oom()`` once for every OOM kill in one container's memory cgroup."""

    def __init__(self, directory: str, unified: bool, on_oom: Callable[[], None]) -> None:
        self.directory = directory
        self.unified = unified
        self._on_oom = on_oom
        self._reported = read_oom_kills(directory, unified) or 0
        self._eventfd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Register for OOM notifications (cgroup v1); v2 relies on :meth:`check`."""
        if self.unified:
            return
        control = os.open(os.path.join(self.directory, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            try:
                with open(os.path.join(self.directory, "cgroup.event_control"), "w") as f:
                    f.write(f"{efd} {control}")
            except OSError:
                os.close(efd)
                raise
        finally:
            os.close(control)
        self._eventfd = efd
        self._loop = loop
        loop.add_reader(efd, self._fired)

    def _fired(self) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_read(self._eventfd)
        if not os.path.isdir(self.directory):
            self.close()  # the cgroup was removed
            return
        self.check()

    def check(self) -> None:
        """Report OOM kills counted since the last report."""
        count = read_oom_kills(self.directory, self.unified)
        if count is not None and count > self._reported:
            self._reported = count
            self._on_oom()

    def close(self) -> None:
        """Stop watching."""
        if self._eventfd >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._eventfd)
            os.close(self._eventfd)
            self._eventfd = -1
