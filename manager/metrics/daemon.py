"""What a scrape reports about ctrpyd itself, gathered without touching the call paths.

- Task states come from the task events the exchange already carries (an observer keeps the
  last state per task: created, running, paused, stopped); a task found again after a restart
  counts as running while its shim lives, stopped once it died.
- Content and snapshot bytes are measured by walking the store directories on a worker thread,
  at most once every :data:`DISK_PERIOD` seconds (the first scrape starts the first walk; until
  it ends the gauges are left out). A walk of the snapshot trees is not free, so the answer is
  a sample, as containerd's CRI samples snapshot usage.
- GC runs, their time, and events dropped to slow subscribers are counters the scheduler and
  the exchange keep anyway.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from google.protobuf.message import DecodeError

from ctrpy.api.containerd.events import task_pb2 as task_events

from ..events import Envelope

log = structlog.get_logger(__name__)

DISK_PERIOD = 60.0
CREATED, RUNNING, PAUSED, STOPPED = "created", "running", "paused", "stopped"
STATES = (CREATED, RUNNING, PAUSED, STOPPED)

# topic -> (event type, the state it means); None: the task is gone.
_TOPICS: dict[str, tuple[Any, str | None]] = {
    "/tasks/create": (task_events.TaskCreate, CREATED),
    "/tasks/start": (task_events.TaskStart, RUNNING),
    "/tasks/exit": (task_events.TaskExit, STOPPED),
    "/tasks/paused": (task_events.TaskPaused, PAUSED),
    "/tasks/resumed": (task_events.TaskResumed, RUNNING),
    "/tasks/delete": (task_events.TaskDelete, None),
}


class TaskStates:
    """The last state of each task, as its events said. An exchange observer (event loop)."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], str] = {}

    def observe(self, envelope: Envelope) -> None:
        known = _TOPICS.get(envelope.topic)
        if known is None:
            return
        kind, state = known
        try:
            event = kind.FromString(envelope.event.value)
        except DecodeError:
            return
        exec_id = getattr(event, "id", "")
        if exec_id and exec_id != event.container_id:
            return  # an exec's exit or delete, not the task's
        key = (envelope.namespace, event.container_id)
        if state is None:
            self.states.pop(key, None)
        else:
            self.states[key] = state

    def keep(self, keys: set[tuple[str, str]]) -> None:
        """Forget tasks the task manager no longer has (their delete event may never come)."""
        for key in [key for key in self.states if key not in keys]:
            del self.states[key]


@dataclass
class DiskSample:
    """Bytes on disk under the content store and each snapshotter, and when they were measured."""

    content: int
    snapshots: dict[str, int]
    taken: float


def _tree_bytes(root: Path) -> int:
    """Disk usage of ``root`` (allocated blocks, hard links once), not crossing mount points."""
    try:
        device = os.lstat(root).st_dev
    except OSError:
        return 0
    seen: set[int] = set()
    total = 0
    pending = [str(root)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if info.st_dev != device:
                    continue
                if info.st_nlink > 1:
                    if info.st_ino in seen:
                        continue
                    seen.add(info.st_ino)
                total += info.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
    return total


def _blob_bytes(blobs: Path) -> int:
    """The sizes of the content store's blobs (``blobs/<algorithm>/<hex>``)."""
    total = 0
    try:
        algorithms = [entry.path for entry in os.scandir(blobs) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return 0
    for directory in algorithms:
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


@dataclass
class DiskSampler:
    """The last :class:`DiskSample`, refreshed in the background when older than ``period``."""

    blobs: Path
    snapshot_roots: dict[str, Path]
    executor: Executor
    period: float = DISK_PERIOD
    last: DiskSample | None = None
    _walking: asyncio.Future[DiskSample] | None = field(default=None, repr=False)

    def measure(self) -> DiskSample:
        return DiskSample(_blob_bytes(self.blobs),
                          {name: _tree_bytes(root) for name, root in sorted(self.snapshot_roots.items())},
                          time.monotonic())

    def current(self) -> DiskSample | None:
        """The last sample; starts a walk (on the event loop's side) when it is due."""
        stale = self.last is None or time.monotonic() - self.last.taken >= self.period
        if stale and self._walking is None:
            walking = asyncio.get_running_loop().run_in_executor(self.executor, self.measure)
            self._walking = walking
            walking.add_done_callback(self._done)
        return self.last

    def _done(self, walking: asyncio.Future[DiskSample]) -> None:
        self._walking = None
        if walking.cancelled():
            return
        error = walking.exception()
        if error is not None:
            log.warning("measuring the stores for metrics failed", error=str(error))
            return
        self.last = walking.result()

    async def first(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for a walk in progress: the first scrape then has the gauges."""
        walking = self._walking
        if walking is not None and self.last is None:
            await asyncio.wait([walking], timeout=timeout)


@dataclass(frozen=True)
class GcFigures:
    collections: int
    failures: int
    seconds: float
    pause_seconds: float
    removed: int


@dataclass(frozen=True)
class DaemonFigures:
    """Everything about the daemon one scrape reports, taken on the event loop."""

    tasks: dict[str, int]
    shims: int
    disk: DiskSample | None
    gc: GcFigures
    events_dropped: int
    subscribers: int


def count_states(tasks: Sequence[tuple[tuple[str, str], bool]], states: TaskStates) -> dict[str, int]:
    """Tasks per state from (key, shim alive) pairs."""
    counts = dict.fromkeys(STATES, 0)
    for key, alive in tasks:
        state = states.states.get(key, RUNNING) if alive else STOPPED
        counts[state] = counts.get(state, 0) + 1
    return counts


#: Reads the figures of the moment (bound in :mod:`.service`).
Gather = Callable[[], DaemonFigures]
