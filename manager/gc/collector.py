"""One garbage collection: mark and sweep the metadata, then clean the stores behind it.

The order matters, as in containerd's ``DB.GarbageCollect``:

1. On the database thread, in one write transaction: read every namespace's records, mark
   what is reachable (``mark``) and delete the rest (``sweep``). Nothing else touches the
   database meanwhile, so an import or a snapshot commit sees the collection either wholly
   before or wholly after it, never half of it.
2. Still on the database thread, right after the commit: delete the blob files that no
   namespace holds a row for any more (the rule of ``NamespacedContent.delete``; a commit that
   finds a blob stored and links it is serialized with this on the same thread).
3. Publish ``/content/delete`` and ``/snapshot/remove`` for every row removed.
4. For each snapshotter that lost rows, run its store's cleanup, which removes backend
   snapshots no row references, children first, and never one still being created.
5. Abort ingests that no live lease holds and no writer has open: those of the leases that
   just expired or were deleted at once (see ``metadata.ingest_leases``), others once nobody
   wrote to them for :data:`INGEST_EXPIRY` (containerd gives an ingest without a lease a day).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from ctrpy.api.containerd.events import content_pb2 as content_events
from ctrpy.api.containerd.events import snapshot_pb2 as snapshot_events
from ctrpy.errors import CtrpyError, NotFound
from ctrpy.manager.events import Exchange
from ctrpy.manager.metadata.content import NamespacedContent
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.snapshots import SnapshotStore

from . import mark
from .sweep import Swept, sweep, unheld_blobs

log = structlog.get_logger(__name__)

#: How long an ingest that no lease holds may go unwritten before it is collected.
INGEST_EXPIRY = timedelta(hours=24)


@dataclass(frozen=True)
class CollectionStats:
    """What one collection did, and how long it took."""

    started_at: datetime
    duration: float  # seconds, all phases
    metadata_duration: float  # seconds the database was held for mark and sweep
    content_removed: int  # content rows, over all namespaces
    blobs_removed: int  # blob files
    snapshots_removed: int  # snapshot rows, over all namespaces
    leases_removed: int  # expired leases
    ingests_removed: int
    next_expiry: datetime | None  # the earliest lease or ingest expiry still to come

    @property
    def removed(self) -> int:
        """Objects removed: content and snapshot rows, leases and ingests."""
        return self.content_removed + self.snapshots_removed + self.leases_removed + self.ingests_removed


@dataclass(frozen=True)
class _Metadata:
    marked: mark.Marked
    swept: Swept
    blobs_removed: int
    duration: float


def _earliest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


class Collector:
    """Collects garbage across all namespaces of one ctrpyd.

    ``snapshotters`` maps each loaded snapshotter's name to its store. Only one collection may
    run at a time: the :class:`~ctrpy.manager.gc.scheduler.Scheduler` sees to that.
    """

    def __init__(
        self,
        db: Database,
        content: NamespacedContent,
        snapshotters: Mapping[str, SnapshotStore],
        events: Exchange,
        ingest_expiry: timedelta = INGEST_EXPIRY,
    ) -> None:
        self.db = db
        self.content = content
        self.snapshotters = snapshotters
        self.events = events
        self.ingest_expiry = ingest_expiry
        #: True while the collector publishes its own delete events (observers may ignore them).
        self.publishing = False
        # Leased ingests found missing by the last collection: forgotten if still missing now
        # (two collections in a row, so that one being opened right now is not forgotten).
        self._leased_missing: frozenset[tuple[str, str]] = frozenset()

    async def collect(self) -> CollectionStats:
        """Run one collection (see the module docstring) and say what it removed.

        Raises what the database raises should the mark or the sweep fail (nothing is removed
        then); failures of later steps are logged and left for the next collection.
        """
        started_at = datetime.now(UTC)
        began = time.monotonic()
        metadata = await self.db.run(self._mark_and_sweep, started_at)
        self._publish(metadata.swept)
        for name in sorted({record.snapshotter for record in metadata.swept.snapshots}):
            store = self.snapshotters.get(name)
            if store is None:
                continue  # not loaded now: its cleanup at the next start-up takes the backend's
            try:
                await store.cleanup()
            except (CtrpyError, OSError) as error:
                log.warning("snapshot cleanup after collection failed", snapshotter=name, error=str(error))
        try:
            ingests, ingest_expiry = await asyncio.to_thread(
                self._sweep_ingests,
                metadata.marked.live_ingests,
                metadata.marked.released_ingests,
                started_at,
            )
        except (CtrpyError, OSError) as error:
            log.warning("ingest collection failed", error=str(error))
            ingests, ingest_expiry = 0, None
        swept = metadata.swept
        stats = CollectionStats(
            started_at=started_at,
            duration=time.monotonic() - began,
            metadata_duration=metadata.duration,
            content_removed=len(swept.content),
            blobs_removed=metadata.blobs_removed,
            snapshots_removed=len(swept.snapshots),
            leases_removed=len(swept.leases),
            ingests_removed=ingests,
            next_expiry=_earliest(metadata.marked.next_expiry, ingest_expiry),
        )
        report = log.info if stats.removed else log.debug
        report(
            "garbage collected",
            content=stats.content_removed,
            blobs=stats.blobs_removed,
            snapshots=stats.snapshots_removed,
            leases=stats.leases_removed,
            ingests=stats.ingests_removed,
            seconds=round(stats.duration, 4),
        )
        return stats

    # -- database thread --------------------------------------------------------------------

    def _mark_and_sweep(self, now: datetime) -> _Metadata:
        began = time.monotonic()
        with self.db.transaction() as conn:
            marked = mark.mark(mark.load(conn), now)
            swept = sweep(conn, marked)
            unheld = unheld_blobs(conn, (digest for _, digest in swept.content))
        # After the commit and still on the database thread: no row can be linked in between.
        removed = 0
        for digest in unheld:
            try:
                self.content.store.delete(digest)
                removed += 1
            except NotFound:
                pass
            except OSError as error:
                log.warning("blob left behind by collection", digest=digest, error=str(error))
        return _Metadata(marked, swept, removed, time.monotonic() - began)

    # -- event loop -------------------------------------------------------------------------

    def _publish(self, swept: Swept) -> None:
        self.publishing = True
        try:
            for namespace, digest in swept.content:
                self.events.publish(namespace, "/content/delete", content_events.ContentDelete(digest=digest))
            for record in swept.snapshots:
                self.events.publish(
                    record.namespace,
                    "/snapshot/remove",
                    snapshot_events.SnapshotRemove(key=record.key, snapshotter=record.snapshotter),
                )
        finally:
            self.publishing = False

    # -- worker thread ----------------------------------------------------------------------

    def _sweep_ingests(
        self,
        live: frozenset[tuple[str, str]],
        released: frozenset[tuple[str, str]],
        now: datetime,
    ) -> tuple[int, datetime | None]:
        """Abort the ingests nothing keeps; return how many went and when the next expires."""
        store = self.content.store
        cutoff = now - self.ingest_expiry
        removed = 0
        next_expiry: datetime | None = None
        leased = self.content.leased_ingests.snapshot()
        present: set[tuple[str, str]] = set()
        aborted: set[tuple[str, str]] = set()
        for status in store.list_statuses():
            namespace, slash, ref = status.ref.partition("/")
            present.add((namespace, ref))
            if not slash or (namespace, ref) in live or store.is_locked(status.ref):
                continue
            lease_gone = (namespace, ref) in released or (namespace, ref) in leased
            if not lease_gone and status.updated_at > cutoff:
                next_expiry = _earliest(next_expiry, status.updated_at + self.ingest_expiry)
                continue
            try:
                store.abort(status.ref)
                removed += 1
            except NotFound:
                pass
            aborted.add((namespace, ref))
        missing = leased - present - live
        self.content.leased_ingests.forget(aborted | (missing & self._leased_missing))
        self._leased_missing = frozenset(missing)
        return removed, next_expiry
