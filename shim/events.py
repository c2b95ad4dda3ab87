"""Reporting task events to ctrpyd, in order, until ctrpyd has them.

The shim calls ``containerd.services.events.ttrpc.v1.Events/Forward`` over ttrpc on ctrpyd's
ttrpc socket (``<ctrpyd socket>.ttrpc``), exactly as containerd's shims do: each event in an
Envelope with the time it was queued, the namespace, the topic and an ``Any`` whose type URL
is the bare event name (``containerd.events.TaskExit``); the namespace also travels in the
``containerd-namespace-ttrpc`` metadata, as containerd's client sends it. No gRPC channel: a
shim per container cannot afford one (its threads and memory). Events leave one at a time
from one queue, so ctrpyd sees them in the order the shim produced them (create, start, exit,
delete). Each is retried with a capped back-off until Forward succeeds: ctrpyd may be down
for a while and come back (the ttrpc client dials again on the next call).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from ctrpy import ttrpc
from ctrpy.api.containerd.services.ttrpc.events.v1 import events_pb2
from ctrpy.errors import CtrpyError

log = logging.getLogger("ctrpy.shim")

SERVICE = "containerd.services.events.ttrpc.v1.Events"
NAMESPACE_HEADER = "containerd-namespace-ttrpc"
FORWARD_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


def pack(message: Message) -> any_pb2.Any:
    """An Any with containerd's bare type URL (protobuf's ``Pack`` would add a prefix)."""
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp from nanoseconds since the epoch."""
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class Publisher:
    """An ordered, retrying queue of events for one namespace. Runs on the event loop."""

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self._queue: collections.deque[tuple[str, Message, int]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._client: ttrpc.Client | None = None

    def publish(self, topic: str, event: Message) -> None:
        """Queue ``event`` under ``topic`` (``/tasks/exit``); it is sent in order, with retries,
        stamped with the time it was queued (when it happened, not when ctrpyd got it)."""
        if not self.address:
            return
        self._queue.append((topic, event, time.time_ns()))
        self._idle.clear()
        self._wakeup.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._run())

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queue to empty; True when it did."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Stop sending (what is still queued is dropped) and close the connection."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            topic, event, queued_ns = self._queue[0]
            await self._send(topic, event, queued_ns)
            self._queue.popleft()

    async def _send(self, topic: str, event: Message, queued_ns: int) -> None:
        envelope = events_pb2.Envelope(
            timestamp=timestamp(queued_ns), namespace=self.namespace, topic=topic, event=pack(event)
        )
        request = events_pb2.ForwardRequest(envelope=envelope)
        delay = BACKOFF_FIRST
        attempt = 0
        while True:
            attempt += 1
            try:
                if self._client is None:
                    self._client = ttrpc.Client(self.address)
                await self._client.call(
                    SERVICE,
                    "Forward",
                    request,
                    empty_pb2.Empty,
                    timeout=FORWARD_TIMEOUT,
                    metadata=((NAMESPACE_HEADER, self.namespace),),
                )
                return
            except (CtrpyError, OSError) as exc:  # OSError: never expected, but a lost event is worse
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("forward %s failed (attempt %d): %s", topic, attempt, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
