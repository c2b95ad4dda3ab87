"""Reporting task events to ctrpyd, in order, until ctrpyd has them.

The shim calls containerd's own ``containerd.services.events.v1.Events/Publish`` on ctrpyd's
socket, with the ``containerd-namespace`` header and an ``Any`` whose type URL is the bare
event name (``containerd.events.TaskExit``), exactly as containerd's shims do. Events leave
one at a time from one queue, so ctrpyd sees them in the order the shim produced them
(create, start, exit, delete). Each is retried with a capped back-off until Publish succeeds:
ctrpyd may be down for a while and come back.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from ctrpy.api.containerd.services.events.v1 import events_pb2, events_pb2_grpc

log = logging.getLogger("ctrpy.shim")

NAMESPACE_HEADER = "containerd-namespace"
PUBLISH_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
# gRPC's own reconnect back-off grows to two minutes by default; keep it near ours, so that a
# restarted ctrpyd gets the pending events within seconds.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", int(BACKOFF_MAX * 1000)),
]


def pack(message: Message) -> any_pb2.Any:
    """An Any with containerd's bare type URL (protobuf's ``Pack`` would add a prefix)."""
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp from nanoseconds since the epoch."""
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def grpc_target(address: str) -> str:
    """A gRPC target for a unix socket given as a path, ``unix:path`` or ``unix:///path``."""
    return address if address.startswith("unix:") else f"unix:{address}"


class Publisher:
    """An ordered, retrying queue of events for one namespace. Runs on the event loop."""

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self._queue: collections.deque[tuple[str, Message]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None

    def publish(self, topic: str, event: Message) -> None:
        """Queue ``event`` under ``topic`` (``/tasks/exit``); it is sent in order, with retries."""
        if not self.address:
            return
        self._queue.append((topic, event))
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
        """Stop sending (what is still queued is dropped) and close the channel."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            topic, event = self._queue[0]
            await self._send(topic, event)
            self._queue.popleft()

    async def _send(self, topic: str, event: Message) -> None:
        request = events_pb2.PublishRequest(topic=topic, event=pack(event))
        delay = BACKOFF_FIRST
        attempt = 0
        while True:
            attempt += 1
            try:
                if self._channel is None:
                    self._channel = grpc.aio.insecure_channel(grpc_target(self.address), options=CHANNEL_OPTIONS)
                stub = events_pb2_grpc.EventsStub(self._channel)
                await stub.Publish(
                    request,
                    metadata=((NAMESPACE_HEADER, self.namespace),),
                    timeout=PUBLISH_TIMEOUT,
                )
                return
            except grpc.aio.AioRpcError as exc:
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("publish %s failed (attempt %d): %s", topic, attempt, exc.details())
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
