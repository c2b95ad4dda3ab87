"""containerd.services.streaming.v1.Streaming: named streams for other calls to use.

The first message names the stream (``StreamInit``); it is registered in the call's namespace
and acknowledged with a ``google.protobuf.Empty``, as containerd's streaming service does. Then
messages the server queues on the stream (progress of a transfer, say) are sent, and the
client's messages are handed to whoever uses the stream, until the server closes it (the call
then ends) or the client goes away. See :mod:`ctrpy.manager.transfer.streams`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from google.protobuf import any_pb2, empty_pb2

from ctrpy import namespaces
from ctrpy.api.containerd.services.streaming.v1 import streaming_pb2 as api
from ctrpy.api.containerd.services.streaming.v1 import streaming_pb2_grpc as api_grpc
from ctrpy.manager.transfer.streams import Stream, StreamManager, pack, unpack


class StreamingServicer(api_grpc.StreamingServicer):
    def __init__(self, streams: StreamManager) -> None:
        self.streams = streams

    async def Stream(
        self, request_iterator: AsyncIterator[any_pb2.Any], context: object
    ) -> AsyncIterator[any_pb2.Any]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        init = unpack(first, api.StreamInit)
        stream = self.streams.register(namespaces.require(), init.id)
        reader = asyncio.ensure_future(_read(request_iterator, stream))
        try:
            yield pack(empty_pb2.Empty())
            while (message := await stream.outbox.get()) is not None:
                yield message
        finally:
            self.streams.unregister(stream)
            stream.client_gone()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _read(requests: AsyncIterator[any_pb2.Any], stream: Stream) -> None:
    """Hand the client's messages to the stream's inbox until the client half-closes."""
    try:
        async for message in requests:
            stream.inbox.put_nowait(message)
    except Exception:  # the call is ending; the handler's own error wins
        pass
    finally:
        stream.client_gone()
