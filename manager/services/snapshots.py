"""containerd.services.snapshots.v1.Snapshots: every loaded snapshotter, per namespace.

Each request names its snapshotter; the work is done by that snapshotter's
:class:`~ctrpy.manager.metadata.snapshots.SnapshotStore` in the call's namespace, and the
snapshot events are published once it has succeeded. Mounts go back exactly as the backend
made them: clients such as ctr mount them on their own host (G8).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

from google.protobuf import empty_pb2

from ctrpy import namespaces
from ctrpy.api.containerd.events import snapshot_pb2 as events_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as api
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as api_grpc
from ctrpy.errors import InvalidArgument
from ctrpy.manager.events import Exchange
from ctrpy.manager.metadata.snapshots import SnapshotStore
from ctrpy.manager.timeline import timelines
from ctrpy.snapshotter import wire


class SnapshotsServicer(api_grpc.SnapshotsServicer):
    """The Snapshots API over ``stores`` (snapshotter name -> its store)."""

    def __init__(self, stores: Mapping[str, SnapshotStore], events: Exchange) -> None:
        self.stores, self.events = stores, events

    def _store(self, name: str) -> SnapshotStore:
        """The named snapshotter; InvalidArgument, in containerd's words, when none is loaded."""
        if not name:
            raise InvalidArgument("snapshotter argument missing")
        store = self.stores.get(name)
        if store is None:
            raise InvalidArgument(f"snapshotter not loaded: {name}")
        return store

    async def Prepare(
        self, request: api.PrepareSnapshotRequest, context: object
    ) -> api.PrepareSnapshotResponse:
        store = self._store(request.snapshotter)
        began = time.monotonic_ns()
        mounts = await store.prepare(request.key, request.parent, dict(request.labels))
        timelines.prepared(namespaces.require(), request.key, began, time.monotonic_ns(),  # a task's start-up
                           namespaces.current_lease.get() or "")
        self.events.publish(
            namespaces.require(),
            "/snapshot/prepare",
            events_pb2.SnapshotPrepare(key=request.key, parent=request.parent, snapshotter=store.name),
        )
        return api.PrepareSnapshotResponse(mounts=wire.mounts_to_proto(mounts))

    async def View(self, request: api.ViewSnapshotRequest, context: object) -> api.ViewSnapshotResponse:
        # containerd publishes no event for a view.
        mounts = await self._store(request.snapshotter).view(
            request.key, request.parent, dict(request.labels)
        )
        return api.ViewSnapshotResponse(mounts=wire.mounts_to_proto(mounts))

    async def Mounts(self, request: api.MountsRequest, context: object) -> api.MountsResponse:
        mounts = await self._store(request.snapshotter).mounts(request.key)
        return api.MountsResponse(mounts=wire.mounts_to_proto(mounts))

    async def Commit(self, request: api.CommitSnapshotRequest, context: object) -> empty_pb2.Empty:
        store = self._store(request.snapshotter)
        await store.commit(request.name, request.key, dict(request.labels))
        self.events.publish(
            namespaces.require(),
            "/snapshot/commit",
            events_pb2.SnapshotCommit(key=request.key, name=request.name, snapshotter=store.name),
        )
        return empty_pb2.Empty()

    async def Remove(self, request: api.RemoveSnapshotRequest, context: object) -> empty_pb2.Empty:
        store = self._store(request.snapshotter)
        began = time.monotonic_ns()
        await store.remove(request.key)
        timelines.snapshot_removed(namespaces.require(), request.key, began, time.monotonic_ns())
        self.events.publish(
            namespaces.require(),
            "/snapshot/remove",
            events_pb2.SnapshotRemove(key=request.key, snapshotter=store.name),
        )
        return empty_pb2.Empty()

    async def Stat(self, request: api.StatSnapshotRequest, context: object) -> api.StatSnapshotResponse:
        info = await self._store(request.snapshotter).stat(request.key)
        return api.StatSnapshotResponse(info=wire.info_to_proto(info))

    async def Update(self, request: api.UpdateSnapshotRequest, context: object) -> api.UpdateSnapshotResponse:
        # Only the name and the labels of the request's info count; ctr sends junk in kind (G2).
        info = wire.info_from_proto(request.info)
        updated = await self._store(request.snapshotter).update(info, list(request.update_mask.paths))
        return api.UpdateSnapshotResponse(info=wire.info_to_proto(updated))

    async def List(
        self, request: api.ListSnapshotsRequest, context: object
    ) -> AsyncIterator[api.ListSnapshotsResponse]:
        infos = await self._store(request.snapshotter).walk(list(request.filters))
        for start in range(0, len(infos), wire.LIST_BATCH):
            batch = infos[start : start + wire.LIST_BATCH]
            yield api.ListSnapshotsResponse(info=[wire.info_to_proto(info) for info in batch])

    async def Usage(self, request: api.UsageRequest, context: object) -> api.UsageResponse:
        usage = await self._store(request.snapshotter).usage(request.key)
        return wire.usage_to_proto(usage)

    async def Cleanup(self, request: api.CleanupRequest, context: object) -> empty_pb2.Empty:
        await self._store(request.snapshotter).cleanup()
        return empty_pb2.Empty()
