"""Which ingests were opened under a lease, so that they go with that lease.

containerd aborts an ingest at the first collection after the lease it was written under is
deleted (an ingest written without a lease gets a day instead). The ``ingests`` rows of a
lease go with the lease, so the collector could not tell such an ingest from one that never
had a lease, and kept it for a day: a ``ctr images import`` that failed or was interrupted
left its partial blobs on disk. This set remembers, for the life of the process, every
(namespace, ref) an ingest was leased under; the collector aborts those that no live lease
holds any more, and forgets the ones that are gone. After a restart the day's grace applies
again, as it does to an ingest whose lease expired while ctrpyd was down.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class LeasedIngests:
    """A thread-safe set of (namespace, client ref) pairs: written on the database thread,
    read and pruned by the collector's worker thread."""

    def __init__(self) -> None:
        self._pairs: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def add(self, namespace: str, ref: str) -> None:
        """Remember that the ingest ``ref`` of ``namespace`` was opened under a lease."""
        with self._lock:
            self._pairs.add((namespace, ref))

    def snapshot(self) -> frozenset[tuple[str, str]]:
        """Every pair remembered now."""
        with self._lock:
            return frozenset(self._pairs)

    def forget(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Drop ``pairs`` (ingests aborted, committed or gone)."""
        with self._lock:
            self._pairs.difference_update(pairs)
