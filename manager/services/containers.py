"""containerd.services.containers.v1.Containers.

Get, List, ListStream, Create and Update answer with the messages the store keeps serialized
(see manager/metadata/containers.py and :mod:`.wire`): their handlers are registered by
:func:`add_to_server` with no response serializer, and return bytes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import structlog
from google.protobuf import empty_pb2

from ctrpy import namespaces
from ctrpy.api.containerd.events import container_pb2 as events_pb2
from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as api
from ctrpy.manager import failpoints
from ctrpy.manager.events import Exchange
from ctrpy.manager.metadata.containers import ContainerStore
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.timeline import Step, timelines
from ctrpy.records import Container

from . import convert, wire
from .edge import Handler

# The field that holds the container in the Get, Create and Update responses and in
# ListContainerMessage, and the containers in ListContainersResponse.
_CONTAINER_FIELD = 1


def encode(container: Container) -> bytes:
    """The record as the serialized API message the store keeps (its :data:`Encoder`).

    Deterministic (map entries sorted by key), so equal records give equal bytes.
    """
    return convert.container_to_proto(container).SerializeToString(deterministic=True)


def _runtime_event(container: Container) -> events_pb2.ContainerCreate.Runtime:
    runtime = events_pb2.ContainerCreate.Runtime(name=container.runtime.name)
    if container.runtime.options is not None:
        runtime.options.CopyFrom(convert.any_to_proto(container.runtime.options))
    return runtime


class ContainersServicer:
    """The Containers service; registered by :func:`add_to_server`, not the generated function."""

    def __init__(self, db: Database, store: ContainerStore, events: Exchange) -> None:
        self.db, self.store, self.events = db, store, events

    async def Get(self, request: api.GetContainerRequest, context: object) -> bytes:
        """A serialized GetContainerResponse; from the store's cache when it holds the container."""
        message = self.store.cached_message(request.id)
        if message is None:
            message = await self.db.run(self.store.get_message, request.id)
        return wire.message_field(_CONTAINER_FIELD, message)

    async def List(self, request: api.ListContainersRequest, context: object) -> bytes:
        """A serialized ListContainersResponse."""
        messages = await self.db.run(self.store.list_messages, list(request.filters))
        return wire.repeated_message_field(_CONTAINER_FIELD, messages)

    async def ListStream(self, request: api.ListContainersRequest, context: object) -> AsyncIterator[bytes]:
        """Serialized ListContainerMessages."""
        messages = await self.db.run(self.store.list_messages, list(request.filters))
        for message in messages:
            yield wire.message_field(_CONTAINER_FIELD, message)

    async def Create(self, request: api.CreateContainerRequest, context: object) -> bytes:
        """A serialized CreateContainerResponse."""
        structlog.contextvars.bind_contextvars(container=request.container.id)
        began = time.monotonic_ns()
        created, message = await self.db.run(
            self.store.create_with_message, convert.container_from_proto(request.container)
        )
        timelines.container_created(namespaces.require(), created.id, began, time.monotonic_ns())
        failpoints.hit(failpoints.CONTAINERS_CREATE_AFTER_COMMIT)
        self.events.publish(
            namespaces.require(),
            "/containers/create",
            events_pb2.ContainerCreate(id=created.id, image=created.image, runtime=_runtime_event(created)),
        )
        return wire.message_field(_CONTAINER_FIELD, message)

    async def Update(self, request: api.UpdateContainerRequest, context: object) -> bytes:
        """A serialized UpdateContainerResponse."""
        structlog.contextvars.bind_contextvars(container=request.container.id)
        updated, message = await self.db.run(
            self.store.update_with_message,
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
        return wire.message_field(_CONTAINER_FIELD, message)

    async def Delete(self, request: api.DeleteContainerRequest, context: object) -> empty_pb2.Empty:
        structlog.contextvars.bind_contextvars(container=request.id)
        began = time.monotonic_ns()
        await self.db.run(self.store.delete, request.id)
        timelines.add(namespaces.require(), request.id, [Step("container delete", began, time.monotonic_ns())])
        self.events.publish(namespaces.require(), "/containers/delete", events_pb2.ContainerDelete(id=request.id))
        return empty_pb2.Empty()


def add_to_server(servicer: ContainersServicer, server: grpc.aio.Server) -> None:
    """Register the service as the generated ``add_ContainersServicer_to_server`` does, except
    that every method but Delete has no response serializer: they return bytes."""
    handlers: dict[str, Handler] = {
        "Get": grpc.unary_unary_rpc_method_handler(
            servicer.Get, request_deserializer=api.GetContainerRequest.FromString
        ),
        "List": grpc.unary_unary_rpc_method_handler(
            servicer.List, request_deserializer=api.ListContainersRequest.FromString
        ),
        "ListStream": grpc.unary_stream_rpc_method_handler(
            servicer.ListStream,  # grpc.aio takes async generators
            request_deserializer=api.ListContainersRequest.FromString,
        ),
        "Create": grpc.unary_unary_rpc_method_handler(
            servicer.Create, request_deserializer=api.CreateContainerRequest.FromString
        ),
        "Update": grpc.unary_unary_rpc_method_handler(
            servicer.Update, request_deserializer=api.UpdateContainerRequest.FromString
        ),
        "Delete": grpc.unary_unary_rpc_method_handler(
            servicer.Delete,
            request_deserializer=api.DeleteContainerRequest.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString,
        ),
    }
    name = api.DESCRIPTOR.services_by_name["Containers"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
