"""When to collect: containerd's gc scheduler (``pkg/gc/scheduler``), on asyncio.

The scheduler counts changes to the metadata, *deletions* (which may leave garbage) and other
*mutations*, and runs the collector, one collection at a time:

- once at start-up, ``startup_delay`` seconds after :meth:`Scheduler.start`, or just before
  the socket serves if that comes first (:meth:`Scheduler.startup_collection`; none when 0);
- when asked (:meth:`Scheduler.collect_now`, for ``Images.Delete`` and ``Leases.Delete`` with
  ``sync``), at once; the caller waits for a collection that began after its request and gets
  its stats;
- after ``deletion_threshold`` deletions (when above 0), ``schedule_delay`` seconds later;
- after any deletion, or ``mutation_threshold`` mutations (when above 0), at the earliest
  ``schedule_delay`` seconds later and no sooner than the *pause interval* after the previous
  collection ended. The interval keeps the time spent holding the database to about
  ``pause_threshold`` of all time (the average metadata pause divided by the threshold, less
  the pause itself; 1 second before the first collection or with a threshold of 0);
- when the earliest lease (or idle ingest) expiry comes, as seen by the last collection or
  told by :meth:`lease_created`, paced the same way, so an expired lease lets go of its objects
  without waiting for another change.

``schedule_delay`` is 1 second by default. containerd's is 0, but its scheduler only notices
deletions on a periodic tick, which leaves a client that makes an object in one call and
refers to it in the next, without a lease, a similar moment in practice. Such a client still
races the collector: clients should hold a lease.

Deletions and mutations are learnt from the event exchange (every store change publishes an
event after its commit; the collector's own events are ignored) and from :meth:`mutated`, which
the leases servicer calls (leases publish no events).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

import structlog

from ctrpy.errors import CtrpyError, Unavailable
from ctrpy.manager.config import GcConfig
from ctrpy.manager.events import Envelope

from . import labels as gclabels
from .collector import CollectionStats, Collector

log = structlog.get_logger(__name__)

# Topics of the stores whose changes can make or unmake garbage (not tasks, not namespaces: a
# namespace can only be deleted empty).
_WATCHED = ("/images/", "/containers/", "/content/", "/snapshot/")
_DELETIONS = ("/delete", "/remove")
_FIRST_INTERVAL = 1.0
_RETRY_EXTRA = 1.0  # after a failed collection, wait this much longer than the interval


class GcTrigger(Protocol):
    """What servicers use of the scheduler."""

    def mutated(self, dirty: bool) -> None:
        """Record a change to the metadata; ``dirty`` when something was deleted."""

    def lease_created(self, labels: Mapping[str, str]) -> None:
        """Record a new lease with ``labels`` (its expiry, if any, calls for a collection)."""

    async def collect_now(self) -> CollectionStats:
        """Collect now and wait for it; Unavailable if collection is off or failed."""


def go_duration(seconds: float) -> str:
    """``seconds`` written the way Go prints a ``time.Duration`` (``0s``, ``100ms``, ``1.5s``)."""
    if seconds <= 0:
        return "0s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.6g}{unit}"
    return f"{round(seconds * 1e9)}ns"


class Scheduler:
    """Runs a :class:`Collector` when the policy says so; see the module docstring."""

    def __init__(self, policy: GcConfig) -> None:
        self.pause_threshold = min(max(policy.pause_threshold, 0.0), 0.5)
        self.deletion_threshold = max(policy.deletion_threshold, 0)
        self.mutation_threshold = max(policy.mutation_threshold, 0)
        self.schedule_delay = max(policy.schedule_delay, 0.0)
        self.startup_delay = max(policy.startup_delay, 0.0)
        #: What introspection reports for the ``io.containerd.gc.v1`` ``scheduler`` plugin:
        #: the policy, then the last collection's outcome (updated in place after each run).
        self.exports: dict[str, str] = {
            "PauseThreshold": str(self.pause_threshold),
            "DeletionThreshold": str(self.deletion_threshold),
            "MutationThreshold": str(self.mutation_threshold),
            "ScheduleDelay": go_duration(self.schedule_delay),
            "StartupDelay": go_duration(self.startup_delay),
            "Collections": "0",
        }
        #: The outcome of the last successful collection, and how many there were.
        self.last: CollectionStats | None = None
        self.collections = 0
        #: Totals since start-up, for the metrics endpoint: seconds of successful collections,
        #: objects they removed, and failed collections.
        self.duration_total = 0.0
        self.removed_total = 0
        self.failures = 0
        self._collector: Collector | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._due: float | None = None  # time.monotonic() of the next collection
        self._expiry_due: float | None = None
        self._deletions = 0
        self._mutations = 0
        self._waiters: list[asyncio.Future[CollectionStats]] = []
        self._interval = _FIRST_INTERVAL
        self._pause_total = 0.0
        self._last_end: float | None = None

    # -- life -------------------------------------------------------------------------------

    def start(self, collector: Collector) -> None:
        """Begin scheduling collections by ``collector``, and watch its event exchange for
        changes. Call from the event loop, once."""
        if self._task is not None:
            raise RuntimeError("the gc scheduler is already running")
        self._collector = collector
        collector.events.observers.append(self.observe)
        if self.startup_delay > 0:
            self._due = time.monotonic() + self.startup_delay
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gc-scheduler")

    async def close(self) -> None:
        """Stop scheduling; a collection in progress is cancelled (its metadata transaction,
        once begun, still completes), and callers waiting get Unavailable."""
        task, self._task = self._task, None
        if self._collector is not None:
            with contextlib.suppress(ValueError):
                self._collector.events.observers.remove(self.observe)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._settle(Unavailable("garbage collector stopped"))

    @property
    def pause_total(self) -> float:
        """Seconds successful collections held the metadata database, since start-up."""
        return self._pause_total

    # -- inputs (event loop) ------------------------------------------------------------------

    def mutated(self, dirty: bool) -> None:
        """Record a metadata change; ``dirty`` when it deleted something."""
        if dirty:
            self._deletions += 1
        else:
            self._mutations += 1
        self._reschedule()

    def lease_created(self, labels: Mapping[str, str]) -> None:
        """Record a new lease: a mutation, and a collection when its ``gc.expire`` comes."""
        expiry = gclabels.expires_at(labels)
        if expiry is not None:
            due = time.monotonic() + max((expiry - datetime.now(UTC)).total_seconds(), 0.0)
            if self._expiry_due is None or due < self._expiry_due:
                self._expiry_due = due
        self.mutated(dirty=False)

    def observe(self, envelope: Envelope) -> None:
        """An exchange observer: count store events as changes, skipping the collector's own."""
        if self._collector is not None and self._collector.publishing:
            return
        topic = envelope.topic
        if topic.startswith(_WATCHED):
            self.mutated(dirty=topic.endswith(_DELETIONS))

    async def collect_now(self) -> CollectionStats:
        """Ask for a collection and wait for one that begins after this call.

        Unavailable when the scheduler is not running or the collection failed.
        """
        if self._task is None:
            raise Unavailable("garbage collector is not running")
        waiter: asyncio.Future[CollectionStats] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._reschedule()
        return await waiter

    async def startup_collection(self) -> None:
        """Run the start-up collection now if it has not run yet (it is due ``startup_delay``
        after :meth:`start`). ctrpyd calls this just before it serves, so that the start-up
        collection never takes what a client made, without a lease, in its first moments.
        A failure is logged (by the round) and left to the next collection."""
        if self.startup_delay > 0 and self.collections == 0 and self._task is not None:
            with contextlib.suppress(Unavailable):
                await self.collect_now()

    # -- the loop -----------------------------------------------------------------------------

    def _reschedule(self) -> None:
        now = time.monotonic()
        soonest = now + self.schedule_delay
        paced = soonest if self._last_end is None else max(soonest, self._last_end + self._interval)
        wanted: float | None = None
        if self._waiters:
            wanted = now
        elif self.deletion_threshold and self._deletions >= self.deletion_threshold:
            wanted = soonest
        elif self._deletions or (self.mutation_threshold and self._mutations >= self.mutation_threshold):
            wanted = paced
        if self._expiry_due is not None:
            expiry = max(self._expiry_due, paced)
            wanted = expiry if wanted is None else min(wanted, expiry)
        if wanted is not None and (self._due is None or wanted < self._due):
            self._due = wanted
            self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            due = self._due
            now = time.monotonic()
            if due is None or due > now:
                timeout = None if due is None else due - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            await self._round()

    async def _round(self) -> None:
        assert self._collector is not None
        waiters, self._waiters = self._waiters, []
        deletions, mutations = self._deletions, self._mutations
        self._due = None
        self._expiry_due = None
        try:
            stats = await self._collector.collect()
        except asyncio.CancelledError:
            self._waiters[:0] = waiters  # close() answers them
            raise
        except Exception as error:  # sqlite3.Error included: a failure must not end the loop
            self._failed(waiters, error)
            return
        self._deletions -= deletions
        self._mutations -= mutations
        self._last_end = time.monotonic()
        self.collections += 1
        self._pause_total += stats.metadata_duration
        self.duration_total += stats.duration
        self.removed_total += stats.removed
        if self.pause_threshold > 0:
            average = self._pause_total / self.collections
            self._interval = average / self.pause_threshold - average
        if stats.next_expiry is not None:
            wait = (stats.next_expiry - datetime.now(UTC)).total_seconds()
            due = self._last_end + max(wait, 0.0)
            # A lease made during the collection may have asked for an earlier one.
            if self._expiry_due is None or due < self._expiry_due:
                self._expiry_due = due
        self.last = stats
        self.exports.update(
            {
                "Collections": str(self.collections),
                "LastCollection": stats.started_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "LastDuration": go_duration(stats.duration),
                "LastPause": go_duration(stats.metadata_duration),
                "LastRemoved": str(stats.removed),
            }
        )
        self.exports.pop("LastError", None)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(stats)
        self._reschedule()

    def _failed(self, waiters: list[asyncio.Future[CollectionStats]], error: BaseException) -> None:
        log.error("garbage collection failed", error=str(error))
        self.failures += 1
        self.exports["LastError"] = str(error)
        self._last_end = time.monotonic()
        self._due = self._last_end + self._interval + _RETRY_EXTRA
        failure = Unavailable(f"garbage collection failed: {error}")
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(failure)

    def _settle(self, error: CtrpyError) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
