"""The event exchange: ctrpyd's in-process bus, and what the Events service streams from.

Stores never publish; servicers publish after their transaction commits, so an event always
describes something that happened. Publishing never waits: each subscriber has its own bounded
queue, and one that falls too far behind is cut off with a clear error saying how many events it
missed, instead of slowing the publisher or the other subscribers (containerd's exchange drops
silently; ctrpy tells).

After a restart, the exits of the tasks ctrpyd found again are also kept for a while and given
to every subscriber that arrives in that while (:meth:`Exchange.replay_exits`). Those exits
happen before any client can have re-subscribed: a shim whose container exited while ctrpyd
was down delivers it as soon as ctrpyd answers, and the exit of a shim that died meanwhile is
published during start-up. A client that keeps state from events (dockerd) reconnects within
seconds and would otherwise never hear of them; containerd has the same race and loses them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from google.protobuf.message import DecodeError, Message

from ctrpy import filters, identifiers
from ctrpy.api.containerd.events import task_pb2 as task_events
from ctrpy.errors import InvalidArgument, Unavailable
from ctrpy.records import AnyValue

log = structlog.get_logger(__name__)

QUEUE_LIMIT = 4096
# How long after a restart the exits of recovered tasks are given to new subscribers, and how
# many are kept at most (one per task and exec that ended: a handful in practice).
REPLAY_SECONDS = 60.0
REPLAY_LIMIT = 1024
EXIT_TOPIC = "/tasks/exit"
_TOPIC = re.compile(r"^(/[A-Za-z0-9][A-Za-z0-9._-]*)+$")


@dataclass(frozen=True)
class Envelope:
    timestamp: datetime
    namespace: str
    topic: str
    event: AnyValue


def validate_topic(topic: str) -> str:
    """containerd's rule: a path of identifier-like components, starting with ``/``."""
    if not _TOPIC.match(topic):
        raise InvalidArgument(f'must start with "/" and contain path components: topic "{topic}"')
    return topic


def pack(event: Message) -> AnyValue:
    """An event as containerd sends it: an ``Any`` whose type URL is the bare full message name."""
    return AnyValue(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())


def _adaptor(envelope: Envelope) -> filters.Adaptor:
    def field(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path[0] == "namespace" and len(path) == 1:
            return envelope.namespace, True
        if path[0] == "topic" and len(path) == 1:
            return envelope.topic, True
        return "", False

    return field


class _Subscriber:
    def __init__(self, match: filters.Filter) -> None:
        self.match = match
        self.queue: asyncio.Queue[Envelope] = asyncio.Queue(QUEUE_LIMIT)
        self.missed = 0


class Exchange:
    """Fan-out of events to subscribers. All methods are called on the event loop."""

    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()
        # In-process listeners (the task manager watches /tasks/exit from shims); called on
        # the event loop for every envelope, before subscribers; they must not block.
        self.observers: list[Callable[[Envelope], None]] = []
        self._replay_tasks: frozenset[tuple[str, str]] = frozenset()
        self._replay_until = 0.0
        self._replay: list[Envelope] = []
        #: Events not delivered to subscribers that fell behind, since start-up (metrics).
        self.dropped = 0

    def replay_exits(self, tasks: Iterable[tuple[str, str]], seconds: float = REPLAY_SECONDS) -> None:
        """Keep the exits of ``tasks`` ((namespace, container id) found at start-up, their execs
        included) published in the next ``seconds``, and give them to each new subscriber first."""
        self._replay_tasks = frozenset(tasks)
        self._replay_until = time.monotonic() + seconds
        self._replay = []

    def _replayable(self) -> list[Envelope]:
        if self._replay_tasks and time.monotonic() > self._replay_until:
            self._replay_tasks, self._replay = frozenset(), []
        return self._replay

    def _keep_for_replay(self, envelope: Envelope) -> None:
        if envelope.topic != EXIT_TOPIC or not envelope.event.type_url.endswith("TaskExit"):
            return
        self._replayable()  # forgets everything once the while is over
        if not self._replay_tasks:
            return
        try:
            container_id = task_events.TaskExit.FromString(envelope.event.value).container_id
        except DecodeError:  # a malformed event from a client: nothing to keep
            return
        if (envelope.namespace, container_id) in self._replay_tasks and len(self._replay) < REPLAY_LIMIT:
            self._replay.append(envelope)

    def publish(self, namespace: str, topic: str, event: Message) -> None:
        """Publish ``event`` under ``topic`` in ``namespace``; never blocks."""
        self.forward(
            Envelope(
                timestamp=datetime.now(UTC),
                namespace=identifiers.validate(namespace),
                topic=validate_topic(topic),
                event=pack(event),
            )
        )

    def forward(self, envelope: Envelope) -> None:
        """Deliver an already-built envelope (the Forward RPC, shims' events)."""
        log.debug("event", topic=envelope.topic, ns=envelope.namespace, type=envelope.event.type_url)
        for observe in self.observers:
            observe(envelope)
        if self._replay_tasks:
            self._keep_for_replay(envelope)
        for subscriber in self._subscribers:
            if subscriber.missed or not subscriber.match.match(_adaptor(envelope)):
                if subscriber.missed:
                    subscriber.missed += 1
                    self.dropped += 1
                continue
            try:
                subscriber.queue.put_nowait(envelope)
            except asyncio.QueueFull:
                subscriber.missed = 1
                self.dropped += 1

    async def subscribe(self, filter_expressions: Sequence[str] = ()) -> AsyncIterator[Envelope]:
        """Yield every event published from now on that matches one of the filters (after the
        recovered tasks' exits kept since a restart, see :meth:`replay_exits`).

        Raises Unavailable when the subscriber fell more than QUEUE_LIMIT events behind.
        """
        subscriber = _Subscriber(filters.parse_all(filter_expressions))
        for envelope in self._replayable():  # exits a client reconnecting after a restart missed
            if subscriber.match.match(_adaptor(envelope)):
                subscriber.queue.put_nowait(envelope)
        self._subscribers.add(subscriber)
        try:
            while True:
                if subscriber.missed and subscriber.queue.empty():
                    raise Unavailable(
                        f"event subscriber fell behind: {subscriber.missed} events were not delivered"
                    )
                yield await subscriber.queue.get()
        finally:
            self._subscribers.discard(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
