"""containerd.services.namespaces.v1.Namespaces."""

from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2

from ctrpy import namespaces
from ctrpy.api.containerd.events import namespace_pb2 as events_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2 as api
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2_grpc as api_grpc
from ctrpy.manager.events import Exchange
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.namespaces import NamespaceStore

from . import convert


class NamespacesServicer(api_grpc.NamespacesServicer):
    def __init__(self, db: Database, store: NamespaceStore, events: Exchange) -> None:
        self.db, self.store, self.events = db, store, events

    async def Get(self, request: api.GetNamespaceRequest, context: object) -> api.GetNamespaceResponse:
        namespace = await self.db.run(self.store.get, request.name)
        return api.GetNamespaceResponse(namespace=convert.namespace_to_proto(namespace))

    async def List(self, request: api.ListNamespacesRequest, context: object) -> api.ListNamespacesResponse:
        # containerd 1.6 ignores the request's filter and lists every namespace: so does
        # ctrpyd, so that a client sees the same namespaces (and no error) from both.
        found = await self.db.run(self.store.list, [])
        return api.ListNamespacesResponse(namespaces=[convert.namespace_to_proto(ns) for ns in found])

    async def Create(self, request: api.CreateNamespaceRequest, context: object) -> api.CreateNamespaceResponse:
        created = await self.db.run(self.store.create, convert.namespace_from_proto(request.namespace))
        # Like containerd, create and update events carry the caller's namespace (the
        # header's), not the one created or updated; only the delete event names its subject.
        self.events.publish(
            namespaces.current.get() or namespaces.DEFAULT,
            "/namespaces/create",
            events_pb2.NamespaceCreate(name=created.name, labels=dict(created.labels)),
        )
        return api.CreateNamespaceResponse(namespace=convert.namespace_to_proto(created))

    async def Update(self, request: api.UpdateNamespaceRequest, context: object) -> api.UpdateNamespaceResponse:
        updated = await self.db.run(
            self.store.update,
            convert.namespace_from_proto(request.namespace),
            list(request.update_mask.paths),
        )
        self.events.publish(
            namespaces.current.get() or namespaces.DEFAULT,
            "/namespaces/update",
            # containerd's event carries the request's labels, not the resulting ones.
            events_pb2.NamespaceUpdate(name=updated.name, labels=dict(request.namespace.labels)),
        )
        return api.UpdateNamespaceResponse(namespace=convert.namespace_to_proto(updated))

    async def Delete(self, request: api.DeleteNamespaceRequest, context: object) -> empty_pb2.Empty:
        await self.db.run(self.store.delete, request.name)
        for hook in self.store.deleted_hooks:
            await asyncio.to_thread(hook, request.name)
        # containerd stamps the delete event with the namespace that was deleted.
        self.events.publish(request.name, "/namespaces/delete", events_pb2.NamespaceDelete(name=request.name))
        return empty_pb2.Empty()
