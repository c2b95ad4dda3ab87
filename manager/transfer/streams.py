"""Named streams that clients open on the Streaming service for a Transfer call to use.

containerd's Transfer API does not carry progress or credential requests in the Transfer call
itself: the client first opens ``containerd.services.streaming.v1.Streaming/Stream``, sends a
``StreamInit`` naming the stream, waits for the server's ``google.protobuf.Empty``, and then
passes that name in the Transfer request (``TransferOptions.progress_stream``,
``RegistryResolver.auth_stream``). The server looks the stream up by namespace and name and
sends (and, for credentials, receives) ``Any`` messages on it. Closing the stream on the server
ends the Streaming call, which the client reads as end of stream.

:class:`StreamManager` is the registry of open streams (containerd's ``plugins/streaming``);
the Streaming servicer feeds each :class:`Stream`'s inbox and drains its outbox.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

from ctrpy.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable

M = TypeVar("M", bound=Message)


def type_url(message: Message) -> str:
    """The type URL containerd's typeurl gives a protobuf message: its full name, no prefix."""
    return message.DESCRIPTOR.full_name


def pack(message: Message) -> any_pb2.Any:
    """``message`` as an Any with containerd's type URL."""
    return any_pb2.Any(type_url=type_url(message), value=message.SerializeToString())


def type_name(value: any_pb2.Any) -> str:
    """The full message name an Any carries (``type.googleapis.com/`` and the like dropped)."""
    return value.type_url.rsplit("/", 1)[-1]


def unpack(value: any_pb2.Any, kind: type[M]) -> M:
    """The message of type ``kind`` in ``value``; InvalidArgument when it holds another type."""
    expected = kind.DESCRIPTOR.full_name
    if type_name(value) != expected:
        raise InvalidArgument(f"expected {expected}, got {value.type_url or 'an empty Any'}")
    message = kind()
    try:
        message.ParseFromString(value.value)
    except Exception:  # protobuf raises DecodeError and friends
        raise InvalidArgument(f"malformed {expected}") from None
    return message


class Stream:
    """One open stream: :meth:`send` queues a message for the client; :meth:`recv` waits for the
    client's next one. After :meth:`close` (or once the client is gone) sending is a no-op and
    receiving raises Unavailable."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self.outbox: asyncio.Queue[any_pb2.Any | None] = asyncio.Queue()
        self.inbox: asyncio.Queue[any_pb2.Any | None] = asyncio.Queue()
        self.closed = False

    def send(self, message: Message) -> None:
        """Queue ``message`` (packed as containerd's typeurl does) for the client."""
        if not self.closed:
            self.outbox.put_nowait(pack(message))

    async def recv(self) -> any_pb2.Any:
        """The client's next message. Unavailable when the stream ended first."""
        if self.closed and self.inbox.empty():
            raise Unavailable(f"stream {self.name} is closed")
        message = await self.inbox.get()
        if message is None:
            self.inbox.put_nowait(None)  # later readers see the end too
            raise Unavailable(f"stream {self.name} ended")
        return message

    def close(self) -> None:
        """End the stream: the Streaming call returns once what was queued is sent."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)

    def client_gone(self) -> None:
        """The client half-closed or went away: wake anyone waiting in :meth:`recv`."""
        self.inbox.put_nowait(None)


class StreamManager:
    """The open streams by namespace and name."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], Stream] = {}

    def register(self, namespace: str, name: str) -> Stream:
        """A new stream; AlreadyExists when the namespace has one of that name open."""
        if not name:
            raise InvalidArgument("stream id must not be empty")
        key = (namespace, name)
        if key in self._streams:
            raise AlreadyExists(f"stream {name}")
        stream = Stream(namespace, name)
        self._streams[key] = stream
        return stream

    def unregister(self, stream: Stream) -> None:
        """Forget ``stream`` (it is closed as well)."""
        stream.close()
        if self._streams.get((stream.namespace, stream.name)) is stream:
            del self._streams[(stream.namespace, stream.name)]

    def get(self, namespace: str, name: str) -> Stream:
        """The open stream ``name`` of ``namespace``; NotFound otherwise."""
        try:
            return self._streams[(namespace, name)]
        except KeyError:
            raise NotFound(f"stream {name}") from None
