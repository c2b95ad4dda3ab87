"""containerd.services.images.v1.Images (the records; content and unpacking live elsewhere).

A Delete with ``sync`` waits for a garbage collection, so the image's content and snapshots are
gone when it returns (as containerd does).
"""

from __future__ import annotations

import time

from google.protobuf import empty_pb2

from ctrpy import clientstart, namespaces
from ctrpy.api.containerd.events import image_pb2 as events_pb2
from ctrpy.api.containerd.services.images.v1 import images_pb2 as api
from ctrpy.api.containerd.services.images.v1 import images_pb2_grpc as api_grpc
from ctrpy.manager.events import Exchange
from ctrpy.manager.gc import GcTrigger
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.images import ImageStore
from ctrpy.manager.timeline import timelines

from . import convert


class ImagesServicer(api_grpc.ImagesServicer):
    def __init__(self, db: Database, store: ImageStore, events: Exchange, gc: GcTrigger | None = None) -> None:
        self.db, self.store, self.events, self.gc = db, store, events, gc

    async def Get(self, request: api.GetImageRequest, context: object) -> api.GetImageResponse:
        began = time.monotonic_ns()
        image = await self.db.run(self.store.get, request.name)
        timelines.image_got(namespaces.require(), request.name, began, time.monotonic_ns(),  # ctr run's first call
                            clientstart.from_context(context))
        return api.GetImageResponse(image=convert.image_to_proto(image))

    async def List(self, request: api.ListImagesRequest, context: object) -> api.ListImagesResponse:
        found = await self.db.run(self.store.list, list(request.filters))
        return api.ListImagesResponse(images=[convert.image_to_proto(image) for image in found])

    async def Create(self, request: api.CreateImageRequest, context: object) -> api.CreateImageResponse:
        created = await self.db.run(self.store.create, convert.image_from_proto(request.image))
        self.events.publish(
            namespaces.require(),
            "/images/create",
            events_pb2.ImageCreate(name=created.name, labels=dict(created.labels)),
        )
        return api.CreateImageResponse(image=convert.image_to_proto(created))

    async def Update(self, request: api.UpdateImageRequest, context: object) -> api.UpdateImageResponse:
        updated = await self.db.run(
            self.store.update, convert.image_from_proto(request.image), list(request.update_mask.paths)
        )
        self.events.publish(
            namespaces.require(),
            "/images/update",
            events_pb2.ImageUpdate(name=updated.name, labels=dict(updated.labels)),
        )
        return api.UpdateImageResponse(image=convert.image_to_proto(updated))

    async def Delete(self, request: api.DeleteImageRequest, context: object) -> empty_pb2.Empty:
        await self.db.run(self.store.delete, request.name)
        self.events.publish(namespaces.require(), "/images/delete", events_pb2.ImageDelete(name=request.name))
        if request.sync and self.gc is not None:
            await self.gc.collect_now()
        return empty_pb2.Empty()
