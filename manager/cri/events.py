"""GetContainerEvents: CRI container and sandbox events to every subscriber, in order.

The kubelet's evented PLEG subscribes once and expects CONTAINER_CREATED, STARTED, STOPPED and
DELETED for containers and for sandboxes (whose event carries the sandbox id as container id).
Each subscriber has a bounded queue, in events and in bytes (an event carries the statuses of
all the pod's containers, so a count alone does not bound the memory): one that does not keep
up is cut off (its stream ends with RESOURCE_EXHAUSTED after the events queued before the
overflow) rather than making ctrpyd hold an unbounded backlog or drop events silently from the
middle of a stream. A subscriber that never reads holds its queue and what gRPC's flow control
window lets through, no more, until it goes away. (containerd keeps one buffered channel of
1000 and drops what does not fit.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import ResourceExhausted

#: Events one subscriber may have waiting before it is cut off, and their serialized bytes.
QUEUE_SIZE = 1000
QUEUE_BYTES = 8 << 20

#: Builds the event message for (container id, sandbox id, event type); None to skip it.
Describe = Callable[[str, str, int], api.ContainerEventResponse | None]


class _Subscriber:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[tuple[api.ContainerEventResponse, int]] = asyncio.Queue(size)
        self.bytes = 0
        self.cut_off = asyncio.Event()


class ContainerEvents:
    """The publisher side (:meth:`publish`, a sandbox ``Listener`` too) and the streams."""

    def __init__(self, describe: Describe, queue_size: int = QUEUE_SIZE, queue_bytes: int = QUEUE_BYTES) -> None:
        self.describe = describe
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self._subscribers: set[_Subscriber] = set()

    def publish(self, container_id: str, sandbox_id: str, event_type: int) -> None:
        """Hand one event to every subscriber (called on the event loop, never blocks)."""
        if not self._subscribers:
            return
        message = self.describe(container_id, sandbox_id, event_type)
        if message is None:
            return
        size = message.ByteSize()
        for subscriber in list(self._subscribers):
            try:
                if subscriber.bytes + size > self.queue_bytes and not subscriber.queue.empty():
                    raise asyncio.QueueFull
                subscriber.queue.put_nowait((message, size))
                subscriber.bytes += size
            except asyncio.QueueFull:
                subscriber.cut_off.set()
                self._subscribers.discard(subscriber)

    async def subscribe(self) -> AsyncIterator[api.ContainerEventResponse]:
        """Events from now on, until the caller goes away or falls too far behind."""
        subscriber = _Subscriber(self.queue_size)
        self._subscribers.add(subscriber)
        try:
            while True:
                if subscriber.queue.empty() and subscriber.cut_off.is_set():
                    raise ResourceExhausted("container events subscriber fell behind and was cut off")
                getting = asyncio.ensure_future(subscriber.queue.get())
                cutting = asyncio.ensure_future(subscriber.cut_off.wait())
                try:
                    await asyncio.wait((getting, cutting), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    cutting.cancel()
                    if not getting.done():
                        getting.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await getting
                if getting.done() and not getting.cancelled():
                    message, size = getting.result()
                    subscriber.bytes -= size
                    yield message
        finally:
            self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
