"""The writable layer's disk usage per container, for the stats calls, answered from memory.

Measuring a snapshot means a metadata lookup (the one database thread) and a walk of its upper
directory (a worker thread): per container and per ListContainerStats, that puts the kubelet's
stats poll in line behind every record write and snapshot operation of a pod start storm.
containerd's CRI samples each snapshot's usage every ``stats_collect_period`` seconds in the
background and its stats calls read the last sample; :class:`LayerSampler` does the same, lazily:

- a sample younger than ``period`` is the answer;
- an older one is the answer too, and a refresh is started in the background (one per
  container at a time, at most :data:`REFRESHING` at once, so a poll never floods the threads);
- a container not measured yet has no answer (its stats leave the writable layer out, as
  containerd's do until its syncer has sampled the snapshot), and its first sample is started;
- ``period`` 0 (the tests' setting) measures in the call, every time (at most :data:`FIRST`
  at once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

from ctrpy.errors import CtrpyError
from ctrpy.snapshotter.types import Usage

log = structlog.get_logger(__name__)

#: Background refreshes at once; first measurements at once.
REFRESHING = 2
FIRST = 8

#: Measures one container's layer now (raises CtrpyError when its snapshot is gone).
Measure = Callable[[], Awaitable[Usage]]


class LayerSampler:
    """Last-known writable-layer usage per container id (see the module docstring)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._samples: dict[str, tuple[float, Usage]] = {}
        self._refreshing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._refresh_gate = asyncio.Semaphore(REFRESHING)
        self._first_gate = asyncio.Semaphore(FIRST)

    async def usage(self, container_id: str, measure: Measure) -> Usage | None:
        """The container's last sample (see the module docstring); None before the first one,
        or when it cannot be measured (its snapshot is gone)."""
        if self.period <= 0:
            async with self._first_gate:
                return await self._measure(container_id, measure)
        found = self._samples.get(container_id)
        if found is None or time.monotonic() - found[0] >= self.period:
            self._refresh_later(container_id, measure)
        return found[1] if found is not None else None

    async def _measure(self, container_id: str, measure: Measure) -> Usage | None:
        try:
            usage = await measure()
        except CtrpyError:
            self._samples.pop(container_id, None)
            return None
        self._samples[container_id] = (time.monotonic(), usage)
        return usage

    def _refresh_later(self, container_id: str, measure: Measure) -> None:
        if container_id in self._refreshing:
            return
        self._refreshing.add(container_id)

        async def refresh() -> None:
            try:
                async with self._refresh_gate:
                    await self._measure(container_id, measure)
            except Exception as exc:  # a sample is best effort: the last one stays
                log.warning("sampling a writable layer failed", id=container_id, error=str(exc))
            finally:
                self._refreshing.discard(container_id)

        job = asyncio.get_running_loop().create_task(refresh())
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    def keep_only(self, container_ids: Iterable[str]) -> None:
        """Forget the samples of containers that are gone."""
        live = set(container_ids)
        for gone in [k for k in self._samples if k not in live]:
            del self._samples[gone]
