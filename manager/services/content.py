"""containerd.services.content.v1.Content: blobs and ingests of the call's namespace.

Which namespace sees what, labels and leases are the business of
:mod:`ctrpy.manager.metadata.content`; the Write conversation's rules are
:mod:`ctrpy.manager.content.session`'s. Everything that touches the disk runs in a worker
thread, the metadata on the database thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from google.protobuf import empty_pb2

from ctrpy import namespaces
from ctrpy.api.containerd.events import content_pb2 as events_pb2
from ctrpy.api.containerd.services.content.v1 import content_pb2 as api
from ctrpy.api.containerd.services.content.v1 import content_pb2_grpc as api_grpc
from ctrpy.manager.events import Exchange
from ctrpy.manager.metadata.content import BlobReader, NamespacedContent

from . import convert

#: Infos per List message (containerd batches them the same way).
LIST_BATCH = 100
#: Chunks a Content.Read reads in the thread that opens the blob (see ContentServicer._open).
FIRST_CHUNKS = 2


class ContentServicer(api_grpc.ContentServicer):
    def __init__(self, content: NamespacedContent, events: Exchange) -> None:
        self.content, self.db, self.events = content, content.db, events

    async def Info(self, request: api.InfoRequest, context: object) -> api.InfoResponse:
        info = await self.db.run(self.content.info, request.digest)
        return api.InfoResponse(info=convert.content_info_to_proto(info))

    async def Update(self, request: api.UpdateRequest, context: object) -> api.UpdateResponse:
        info = await self.db.run(
            self.content.update,
            request.info.digest,
            dict(request.info.labels),
            list(request.update_mask.paths),
        )
        return api.UpdateResponse(info=convert.content_info_to_proto(info))

    async def List(
        self, request: api.ListContentRequest, context: object
    ) -> AsyncIterator[api.ListContentResponse]:
        found = await self.db.run(self.content.list, list(request.filters))
        for start in range(0, len(found), LIST_BATCH):
            batch = found[start : start + LIST_BATCH]
            yield api.ListContentResponse(info=[convert.content_info_to_proto(info) for info in batch])

    async def Delete(self, request: api.DeleteContentRequest, context: object) -> empty_pb2.Empty:
        await self.db.run(self.content.delete, request.digest)
        self.events.publish(
            namespaces.require(), "/content/delete", events_pb2.ContentDelete(digest=request.digest)
        )
        return empty_pb2.Empty()

    async def Read(
        self, request: api.ReadContentRequest, context: object
    ) -> AsyncIterator[api.ReadContentResponse]:
        reader, first = await asyncio.to_thread(self._open, request.digest, request.offset, request.size)
        # As containerd's: a reply's offset counts from where the read began, not from the
        # start of the blob.
        offset = 0
        try:
            for data in first:
                yield api.ReadContentResponse(offset=offset, data=data)
                offset += len(data)
            while reader is not None and (chunk := await asyncio.to_thread(reader.next_chunk)) is not None:
                yield api.ReadContentResponse(offset=offset, data=chunk)
                offset += len(chunk)
        finally:
            if reader is not None:
                # Shielded: a cancelled stream still closes its file (after a read in flight).
                await asyncio.shield(asyncio.to_thread(reader.close))

    def _open(self, digest: str, offset: int, size: int) -> tuple[BlobReader | None, list[bytes]]:
        """Open the window and read its first chunks, in one worker thread: a window that ends
        within :data:`FIRST_CHUNKS` chunks (the manifests and configs a ``ctr run`` reads, ten
        of them) is read and closed here, and the caller's stream needs no other thread hop;
        otherwise the open reader, for the rest."""
        reader = self.content.read(digest, offset, size)
        try:
            first: list[bytes] = []
            while len(first) < FIRST_CHUNKS and (chunk := reader.next_chunk()) is not None:
                first.append(chunk)
            if len(first) < FIRST_CHUNKS:
                reader.close()
                return None, first
            return reader, first
        except BaseException:
            reader.close()
            raise

    async def Status(self, request: api.StatusRequest, context: object) -> api.StatusResponse:
        status = await asyncio.to_thread(self.content.status, request.ref)
        return api.StatusResponse(status=convert.ingest_status_to_proto(status))

    async def ListStatuses(
        self, request: api.ListStatusesRequest, context: object
    ) -> api.ListStatusesResponse:
        found = await asyncio.to_thread(self.content.list_statuses, list(request.filters))
        return api.ListStatusesResponse(statuses=[convert.ingest_status_to_proto(s) for s in found])

    async def Abort(self, request: api.AbortRequest, context: object) -> empty_pb2.Empty:
        await asyncio.to_thread(self.content.abort, request.ref)
        return empty_pb2.Empty()

    async def Write(
        self, request_iterator: AsyncIterator[api.WriteContentRequest], context: object
    ) -> AsyncIterator[api.WriteContentResponse]:
        # Every request gets its reply. After COMMIT the session is done and the loop waits for
        # the client to half-close (ctr does so at once); a request after that is refused.
        session = self.content.write_session()
        try:
            async for message in request_iterator:
                reply = await asyncio.to_thread(session.handle, convert.write_request_from_proto(message))
                yield convert.write_reply_to_proto(reply)
        finally:
            # Shielded: a cancelled stream still releases its ingest for a later resume.
            await asyncio.shield(asyncio.to_thread(session.close))
