"""containerd.services.containers.v1.Containers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from google.protobuf import empty_pb2

from ctrpy import namespaces
from ctrpy.api.containerd.events import container_pb2 as events_pb2
from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as api
from ctrpy.api.containerd.services.containers.v1 import containers_pb2_grpc as api_grpc
from ctrpy.manager import failpoints
from ctrpy.manager.events import Exchange
from ctrpy.manager.metadata.containers import ContainerStore
from ctrpy.manager.metadata.db import Database
from ctrpy.records import Container

from . import convert


def _runtime_event(container: Container) -> events_pb2.ContainerCreate.Runtime:
    runtime = events_pb2.ContainerCreate.Runtime(name=container.runtime.name)
    if container.runtime.options is not None:
        runtime.options.CopyFrom(convert.any_to_proto(container.runtime.options))
    return runtime


class ContainersServicer(api_grpc.ContainersServicer):
    def __init__(self, db: Database, store: ContainerStore, events: Exchange) -> None:
        self.db, self.store, self.events = db, store, events

    async def Get(self, request: api.GetContainerRequest, context: object) -> api.GetContainerResponse:
        container = await self.db.run(self.store.get, request.id)
        return api.GetContainerResponse(container=convert.container_to_proto(container))

    async def List(self, request: api.ListContainersRequest, context: object) -> api.ListContainersResponse:
        found = await self.db.run(self.store.list, list(request.filters))
        return api.ListContainersResponse(containers=[convert.container_to_proto(c) for c in found])

    async def ListStream(
        self, request: api.ListContainersRequest, context: object
    ) -> AsyncIterator[api.ListContainerMessage]:
        found = await self.db.run(self.store.list, list(request.filters))
        for container in found:
            yield api.ListContainerMessage(container=convert.container_to_proto(container))

    async def Create(self, request: api.CreateContainerRequest, context: object) -> api.CreateContainerResponse:
        structlog.contextvars.bind_contextvars(container=request.container.id)
        created = await self.db.run(self.store.create, convert.container_from_proto(request.container))
        failpoints.hit(failpoints.CONTAINERS_CREATE_AFTER_COMMIT)
        self.events.publish(
            namespaces.require(),
            "/containers/create",
            events_pb2.ContainerCreate(id=created.id, image=created.image, runtime=_runtime_event(created)),
        )
        return api.CreateContainerResponse(container=convert.container_to_proto(created))

    async def Update(self, request: api.UpdateContainerRequest, context: object) -> api.UpdateContainerResponse:
        structlog.contextvars.bind_contextvars(container=request.container.id)
        updated = await self.db.run(
            self.store.update,
            convert.container_from_proto(request.container),
            list(request.update_mask.paths),
        )
        self.events.publish(
            namespaces.require(),
            "/containers/update",
            events_pb2.ContainerUpdate(
                id=updated.id,
                image=updated.image,
                labels=dict(updated.labels),
                snapshot_key=updated.snapshot_key,
            ),
        )
        return api.UpdateContainerResponse(container=convert.container_to_proto(updated))

    async def Delete(self, request: api.DeleteContainerRequest, context: object) -> empty_pb2.Empty:
        structlog.contextvars.bind_contextvars(container=request.id)
        await self.db.run(self.store.delete, request.id)
        self.events.publish(namespaces.require(), "/containers/delete", events_pb2.ContainerDelete(id=request.id))
        return empty_pb2.Empty()
