"""The tasks one shim serves: the task it was started for, and those a pod adds to it.

A shim starts for one task (its ``ShimConfig``). ctrpyd may ask it to create more: the
containers of a Kubernetes pod share the shim of the pod's sandbox (pause) container, as in
containerd, whose runc v2 shim serves a whole pod. Each task keeps everything of its own:
bundle, exit file, OOM watch, stdio and CRI log, attach socket (named after the task, not the
shim), runc state. What the tasks share is the process: one reaper, whose exits go to every
task (each knows its own pids), and one ordered events queue.

A task is dropped from the table by Shutdown once it is deleted (or at once, ``now``); the shim
exits when no task it holds is alive, so deleting the sandbox's task while the pod's containers
still run leaves them served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os

from ctrpy.errors import InvalidArgument, NotFound, Unavailable

from . import files
from .config import ShimConfig
from .events import Publisher
from .reaper import Reaper
from .task import Task

log = logging.getLogger("ctrpy.shim")


class Tasks:
    """id -> :class:`Task`, starting with the task the shim was started for."""

    def __init__(self, config: ShimConfig, reaper: Reaper, publisher: Publisher) -> None:
        self.config = config
        self.reaper = reaper
        self.publisher = publisher
        self._tasks: dict[str, Task] = {config.id: Task(config, reaper, publisher, dispatch_exits=False)}
        self._closing: set[asyncio.Task[None]] = set()
        self.closed = False  # set once the shim is on its way out: no task is added then
        self._home = config.bundle  # the shim's cwd, where its shim.log is
        reaper.on_exit = self._on_exit

    def _on_exit(self, pid: int, status: int) -> None:
        for task in list(self._tasks.values()):
            task.on_exit(pid, status)

    def get(self, task_id: str) -> Task:
        """The task of ``task_id``; NotFound when the shim does not hold it."""
        task = self._tasks.get(task_id)
        if task is None:
            raise NotFound(f'task "{task_id}"')
        return task

    def find(self, task_id: str) -> Task | None:
        """The task of ``task_id``, or None."""
        return self._tasks.get(task_id)

    def for_create(self, task_id: str, bundle: str) -> tuple[Task, bool]:
        """The task to create ``task_id`` in: the one the shim holds under that id, else a new
        one for ``bundle`` (True: added here, to drop again when its create fails).

        A new task's bundle gets this shim's ``address`` and ``shim.pid`` before anything runs
        in it, so that a ctrpyd that restarts finds the task whatever point the create reached,
        and the shim's ``shim.log`` (a hard link: one file, whichever bundle goes first).
        """
        task = self._tasks.get(task_id)
        if task is not None:
            return task, False
        if self.closed:
            raise Unavailable(f'shim of task "{self.config.id}" is shutting down')
        if not bundle or not os.path.isabs(bundle) or not os.path.isdir(bundle):
            raise InvalidArgument(f'bundle "{bundle}" of task "{task_id}" is not a directory')
        config = dataclasses.replace(self.config, id=task_id, bundle=bundle)
        files.write_atomic(os.path.join(bundle, files.ADDRESS), self.config.socket_address)
        files.write_atomic(os.path.join(bundle, files.SHIM_PID), str(os.getpid()))
        with contextlib.suppress(OSError):
            os.link(os.path.join(self._home, files.SHIM_LOG), os.path.join(bundle, files.SHIM_LOG))
        task = Task(config, self.reaper, self.publisher, dispatch_exits=False)
        self._tasks[task_id] = task
        return task, True

    def drop(self, task_id: str) -> None:
        """Forget a task (its stdio and watches are released in the background)."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return
        job = asyncio.get_running_loop().create_task(task.close())
        self._closing.add(job)
        job.add_done_callback(self._closing.discard)
        if task.config.bundle == self._home and self._tasks:
            self._move_on()

    def _move_on(self) -> None:
        """The shim lives in a task's bundle (cwd, shim.log: its first task's to begin with);
        that bundle is about to be removed while other tasks go on: move to another's."""
        other = next(iter(self._tasks.values())).config.bundle
        self._home = other
        with contextlib.suppress(OSError):
            os.chdir(other)
        try:
            fd = os.open(os.path.join(other, files.SHIM_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return
        os.dup2(fd, 2)
        os.close(fd)

    def release(self, task_id: str, *, now: bool) -> bool:
        """Shutdown for ``task_id``: drop it if it is deleted (or ``now``); True when the shim
        should exit, because no task it holds is alive any more."""
        task = self._tasks.get(task_id)
        if task is not None and (now or task.deleted):
            self.drop(task_id)
        if all(t.deleted for t in self._tasks.values()):
            self.closed = True
            return True
        return False

    async def close(self) -> None:
        """Release every task's stdio and watches when the shim exits (containers are left alone)."""
        self.closed = True
        for task in list(self._tasks.values()):
            await task.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
