"""containerd.services.leases.v1.Leases.

Leases publish no events, so deleting one (or one of its resources) tells the garbage
collector directly; a Delete with ``sync`` waits for the collection.
"""

from __future__ import annotations

import base64
import os
import time

from google.protobuf import empty_pb2

from ctrpy import namespaces
from ctrpy.api.containerd.services.leases.v1 import leases_pb2 as api
from ctrpy.api.containerd.services.leases.v1 import leases_pb2_grpc as api_grpc
from ctrpy.manager.gc import GcTrigger
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.leases import LeaseStore
from ctrpy.manager.timeline import timelines

from . import convert


def generate_lease_id() -> str:
    """containerd's form for a lease the client did not name: the clock's nanoseconds, a dash,
    and four URL-safe random characters (``321172841-Z9nk``)."""
    return f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


class LeasesServicer(api_grpc.LeasesServicer):
    def __init__(self, db: Database, store: LeaseStore, gc: GcTrigger | None = None) -> None:
        self.db, self.store, self.gc = db, store, gc

    async def Create(self, request: api.CreateRequest, context: object) -> api.CreateResponse:
        began = time.monotonic_ns()
        lease = await self.db.run(self.store.create, request.id or generate_lease_id(), dict(request.labels))
        timelines.lease_created(namespaces.require(), lease.id, began, time.monotonic_ns())  # start-up timeline
        if self.gc is not None:
            self.gc.lease_created(lease.labels)
        return api.CreateResponse(lease=convert.lease_to_proto(lease))

    async def Delete(self, request: api.DeleteRequest, context: object) -> empty_pb2.Empty:
        began = time.monotonic_ns()
        await self.db.run(self.store.delete, request.id)
        timelines.lease_deleted(namespaces.require(), request.id, began, time.monotonic_ns())
        if self.gc is not None:
            self.gc.mutated(dirty=True)
            if request.sync:
                await self.gc.collect_now()
        return empty_pb2.Empty()

    async def List(self, request: api.ListRequest, context: object) -> api.ListResponse:
        found = await self.db.run(self.store.list, list(request.filters))
        return api.ListResponse(leases=[convert.lease_to_proto(lease) for lease in found])

    async def AddResource(self, request: api.AddResourceRequest, context: object) -> empty_pb2.Empty:
        await self.db.run(self.store.add_resource, request.id, convert.resource_from_proto(request.resource))
        return empty_pb2.Empty()

    async def DeleteResource(self, request: api.DeleteResourceRequest, context: object) -> empty_pb2.Empty:
        await self.db.run(self.store.delete_resource, request.id, convert.resource_from_proto(request.resource))
        if self.gc is not None:
            self.gc.mutated(dirty=True)
        return empty_pb2.Empty()

    async def ListResources(
        self, request: api.ListResourcesRequest, context: object
    ) -> api.ListResourcesResponse:
        found = await self.db.run(self.store.list_resources, request.id)
        return api.ListResourcesResponse(resources=[convert.resource_to_proto(r) for r in found])
