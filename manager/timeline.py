"""Where a container's start went: per-task step timings, kept in memory by ctrpyd.

Why: a slow ``ctr run`` is a chain of calls (Snapshots.Prepare, Containers.Create,
Tasks.Create, Tasks.Start, ..., Tasks.Delete) across three processes (the client, ctrpyd, the
shim) and runc; only the sum shows at the terminal. Each piece records its own steps here as it
goes, and ``ctrpy tasks timeline ID`` prints them in order with the gaps between them, so that
the rows add up to the span of the run.

What is recorded, per (namespace, container id), all on one clock (``time.monotonic_ns``, the
host's CLOCK_MONOTONIC, which the shim shares):

- ``image get``: Images.Get of the container's image, ``ctr run``'s first call (it then reads
  the manifest and config from the content store and stats the snapshot, ``between steps``
  here, before it makes its lease); kept per (namespace, image name), a few each, and claimed
  by the task's create: the latest that began before the task's first other step, at most
  :data:`IMAGE_WINDOW_NS` before it. ``client start``: from the client process' own start to
  that call, when the client says when it started (``ctrpy run`` does, :mod:`ctrpy.clientstart`;
  the stock ``ctr`` does not);
- ``lease create``: the server's side of Leases.Create of the lease the snapshot was prepared
  under (``ctr run``'s first change), and ``snapshot prepare``, Snapshots.Prepare of the
  container's snapshot key: the client makes both before the container exists, so they are kept
  by key (lease id, snapshot key) and claimed by the task's create;
- ``container create`` (Containers.Create) and ``lease delete`` of that lease (the client
  holds it only while it creates the container), kept the same way;
- ``bundle`` and ``shim start``: :meth:`TaskManager.create`;
- the shim's own steps (``rootfs mount``, ``stdio``, ``runc create``, ``runc start``): sent back
  by the shim in the trailing metadata of its Create and Start answers (:mod:`ctrpy.shim.steps`),
  so that nothing is written to disk for them; a shim that sends none is timed from ctrpyd's side;
- ``running``: from the end of the last step begun before the init process exited (``runc
  start``, normally) to that exit, as the first /tasks/exit reports it (its ``exited_at``);
- ``task delete``: :meth:`TaskManager.delete`; then, when they come, ``snapshot remove`` (of
  its key), ``container delete`` and ``lease delete`` (of its lease): ``ctr run --rm``'s end.

Everything else (the client's own work, other calls, gRPC round trips) shows as ``between
steps``. What no server can see is a client's process before its first call and after its last
(for ``ctr``: Go runtime start, configuration, dial, exit; about 10 ms here, as long as a whole
``ctr version`` takes): the timeline of a ``ctr run --rm ... true`` covers some 0.84-0.97 of
the wall time measured around the ctr process (``python -m bench --only timeline``).

The cost is a clock read per step; the store is bounded (:data:`KEEP` timelines, as many
unclaimed prepares, and :data:`PER_IMAGE` Images.Get calls for each of as many names), oldest
first out, and a timeline outlives its task (``ctr run`` deletes the task before anyone can
ask) until it is pushed out or the task is created again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: How many timelines (and unclaimed snapshot prepares) are kept.
KEEP = 512
#: How many Images.Get calls are kept per image name, and how long before a task's first step
#: one may have begun to be claimed by it.
PER_IMAGE = 8
IMAGE_WINDOW_NS = 5_000_000_000  # ctr takes a few calls, milliseconds apart; generous under load
#: How long before its first call a client's own start is believed (ctrpy.clientstart).
CLIENT_START_LIMIT_NS = 60_000_000_000
CLIENT_START = "client start"
GAP = "between steps"
RUNNING = "running (until it exited)"


@dataclass(frozen=True)
class Step:
    """One measured step: monotonic nanoseconds, and who measured it (ctrpyd or the shim)."""

    name: str
    start_ns: int
    end_ns: int
    source: str = "ctrpyd"


@dataclass
class Timeline:
    """The steps of one task, in the order they were recorded."""

    namespace: str
    id: str
    steps: list[Step] = field(default_factory=list)
    snapshot_key: str = ""
    lease: str = ""
    exit_ns: int = 0  # the init process's exit, from its first exit event (0: none yet)

    def rows(self) -> list[dict[str, Any]]:
        """The steps in time order, each clipped to start where the previous ended, with a
        ``between steps`` row for every gap: the rows' durations add up to the whole span."""
        rows: list[dict[str, Any]] = []
        steps = list(self.steps)
        if self.exit_ns:
            # The task ran from the last step begun before its exit (runc start, normally) until
            # it exited; computed here, since the shim's steps of Start may be recorded after
            # the exit event (a process that exits at once).
            last = max((s.end_ns for s in steps if s.start_ns < self.exit_ns), default=self.exit_ns)
            if self.exit_ns > last:
                steps.append(Step(RUNNING, last, self.exit_ns))
        ordered = sorted(steps, key=lambda s: (s.start_ns, s.end_ns))
        if not ordered:
            return rows
        first = cursor = ordered[0].start_ns
        for step in ordered:
            if step.end_ns <= cursor:
                continue  # wholly inside what is already shown
            if step.start_ns > cursor:
                rows.append(_row(GAP, "", cursor, step.start_ns, first))
                cursor = step.start_ns
            rows.append(_row(step.name, step.source, cursor, step.end_ns, first))
            cursor = step.end_ns
        return rows

    def to_dict(self) -> dict[str, Any]:
        """What ``ctrpy tasks timeline --format json`` prints (milliseconds, RFC 3339 start)."""
        rows = self.rows()
        started = ""
        if self.steps:
            first = min(s.start_ns for s in self.steps)
            wall = time.time_ns() - (time.monotonic_ns() - first)
            started = datetime.fromtimestamp(wall / 1e9, UTC).isoformat().replace("+00:00", "Z")
        return {
            "namespace": self.namespace,
            "id": self.id,
            "started_at": started,
            "total_ms": round(sum(r["ms"] for r in rows), 3),
            "exited": bool(self.exit_ns),
            "steps": rows,
        }


def _row(name: str, source: str, start: int, end: int, first: int) -> dict[str, Any]:
    return {"step": name, "source": source, "offset_ms": round((start - first) / 1e6, 3),
            "ms": round((end - start) / 1e6, 3)}


class Timelines:
    """The bounded store of timelines; every method runs on ctrpyd's event loop."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._timelines: OrderedDict[tuple[str, str], Timeline] = OrderedDict()
        self._prepared: OrderedDict[tuple[str, str], tuple[Step, str]] = OrderedDict()
        self._leases: OrderedDict[tuple[str, str], Step] = OrderedDict()
        # Steps made before the task's create, by (namespace, "container:" id | "lease:" id).
        self._early: OrderedDict[tuple[str, str], Step] = OrderedDict()
        # Recent Images.Get calls by (namespace, image name), oldest first (see image_got).
        # Each is the call's step, then a "client start" step when the client sent its start.
        self._images: OrderedDict[tuple[str, str], list[tuple[Step, ...]]] = OrderedDict()

    def container_created(self, namespace: str, container_id: str, start_ns: int, end_ns: int) -> None:
        """Containers.Create of ``container_id`` took [start, end]; claimed by its task's create."""
        self._early[(namespace, "container:" + container_id)] = Step("container create", start_ns, end_ns)
        _bound(self._early, self.keep)

    def image_got(self, namespace: str, name: str, start_ns: int, end_ns: int, client_start_ns: int = 0) -> None:
        """Images.Get of ``name`` took [start, end]: ``ctr run``'s first call, made before its
        lease; the task of a container of that image created soon after claims it (:meth:`begin`).
        A few are kept per name, so that runs of one image side by side each find their own.
        ``client_start_ns``: when the calling process started, if it said so (``ctrpy run``
        does, :mod:`ctrpy.clientstart`); believed if it is before the call and not long before."""
        steps: tuple[Step, ...] = (Step("image get", start_ns, end_ns),)
        if 0 < start_ns - client_start_ns <= CLIENT_START_LIMIT_NS:
            steps += (Step(CLIENT_START, client_start_ns, start_ns, "client"),)
        recent = self._images.pop((namespace, name), [])
        recent.append(steps)
        del recent[:-PER_IMAGE]
        self._images[(namespace, name)] = recent
        _bound(self._images, self.keep)

    def _claim_image(self, namespace: str, name: str, before_ns: int) -> tuple[Step, ...]:
        """The steps of the latest Images.Get of ``name`` begun before ``before_ns`` and at
        most :data:`IMAGE_WINDOW_NS` earlier, taken out of the store; () if there is none."""
        recent = self._images.get((namespace, name), [])
        for index in range(len(recent) - 1, -1, -1):
            got = recent[index][0]
            if got.start_ns < before_ns and before_ns - got.start_ns <= IMAGE_WINDOW_NS:
                return recent.pop(index)
        return ()

    def lease_created(self, namespace: str, lease: str, start_ns: int, end_ns: int) -> None:
        """Leases.Create of ``lease`` took [start, end]; claimed with a prepare made under it."""
        self._leases[(namespace, lease)] = Step("lease create", start_ns, end_ns)
        _bound(self._leases, self.keep)

    def prepared(self, namespace: str, key: str, start_ns: int, end_ns: int, lease: str = "") -> None:
        """Snapshots.Prepare of ``key`` (under ``lease``) took [start, end]; claimed by the task
        that uses it."""
        self._prepared[(namespace, key)] = (Step("snapshot prepare", start_ns, end_ns), lease)
        _bound(self._prepared, self.keep)

    def begin(self, namespace: str, container_id: str, snapshot_key: str = "", image: str = "") -> Timeline:
        """A new timeline for a task being created (replacing an older one of the same id)."""
        timeline = Timeline(namespace, container_id, snapshot_key=snapshot_key)
        prepared = self._prepared.pop((namespace, snapshot_key), None) if snapshot_key else None
        if prepared is not None:
            timeline.steps.append(prepared[0])
            timeline.lease = prepared[1]
            created = self._leases.pop((namespace, prepared[1]), None) if prepared[1] else None
            deleted = self._early.pop((namespace, "lease:" + prepared[1]), None) if prepared[1] else None
            timeline.steps += [step for step in (created, deleted) if step is not None]
        container = self._early.pop((namespace, "container:" + container_id), None)
        if container is not None:
            timeline.steps.append(container)
        if image:
            before = min((step.start_ns for step in timeline.steps), default=time.monotonic_ns())
            timeline.steps += self._claim_image(namespace, image, before)
        self._timelines.pop((namespace, container_id), None)
        self._timelines[(namespace, container_id)] = timeline
        _bound(self._timelines, self.keep)
        return timeline

    def add(self, namespace: str, container_id: str, steps: Iterable[Step]) -> None:
        """Record steps of a task whose timeline exists (others are ignored)."""
        timeline = self._timelines.get((namespace, container_id))
        if timeline is not None:
            timeline.steps.extend(steps)

    def exited(self, namespace: str, container_id: str, at_ns: int) -> None:
        """The init process exited at ``at_ns`` (its first exit event says so; later ones are ignored)."""
        timeline = self._timelines.get((namespace, container_id))
        if timeline is not None and not timeline.exit_ns:
            timeline.exit_ns = at_ns

    def snapshot_removed(self, namespace: str, key: str, start_ns: int, end_ns: int) -> None:
        """Snapshots.Remove of ``key``: a step of the latest timeline whose snapshot it was."""
        if key:
            self._add_to_last(lambda t: t.namespace == namespace and t.snapshot_key == key,
                              Step("snapshot remove", start_ns, end_ns))

    def lease_deleted(self, namespace: str, lease: str, start_ns: int, end_ns: int) -> None:
        """Leases.Delete of ``lease``: a step of the latest timeline made under it, or, when no
        task has claimed the lease yet, kept for the one that will."""
        if not lease:
            return
        step = Step("lease delete", start_ns, end_ns)
        if not self._add_to_last(lambda t: t.namespace == namespace and t.lease == lease, step):
            self._early[(namespace, "lease:" + lease)] = step
            _bound(self._early, self.keep)

    def _add_to_last(self, match: Callable[[Timeline], bool], step: Step) -> bool:
        for timeline in reversed(self._timelines.values()):  # at most KEEP, newest first
            if match(timeline):
                timeline.steps.append(step)
                return True
        return False

    def get(self, namespace: str, container_id: str) -> Timeline | None:
        return self._timelines.get((namespace, container_id))

    def ids(self, namespace: str) -> list[str]:
        return [cid for ns, cid in self._timelines if ns == namespace]


def _bound(table: OrderedDict[Any, Any], keep: int) -> None:
    while len(table) > keep:
        table.popitem(last=False)


#: ctrpyd's store: one per process, like the event exchange's observers it serves.
timelines = Timelines()
