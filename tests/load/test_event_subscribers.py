"""A subscriber that stops reading neither slows nor blocks the others, and is told what it missed.

One subscriber opens a stream and reads nothing; another reads everything. Many thousand events
are published, one after another, each naming its sequence number. The reading subscriber gets
every one of them, in order, while the stalled one holds its stream open (bounded by a deadline,
not timed). When the stalled one finally reads, it gets what was queued for it and then the
stream ends with UNAVAILABLE saying how many events it missed: those received plus those
missed are exactly the events published. Nothing is dropped silently.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import any_pb2

from ctrpy.api.containerd.events import container_pb2 as container_events
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.client import Client
from tests.hostile import probes
from tests.hostile.conftest import configured_daemon
from tests.support.ctrpyd import Daemon

TOPIC = "/load/sequence"
# Well past the per-subscriber queue (4096 events) and what HTTP/2 and the sockets buffer on the
# way (about 4 MB: some 950 events of this size), so that about 1900 are missed. Each event is a
# Publish call of its own, so bytes fill the transport far cheaper than a larger count would.
EVENTS = 7_000
PADDING = "p" * 4096  # so that the stalled stream's transport buffers fill, not only the queue
DEADLINE = 600.0


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    instance = configured_daemon()
    try:
        instance.start()
        yield instance
    finally:
        probes.kill_leftovers(instance)
        instance.cleanup()


def event(n: int) -> any_pb2.Any:
    payload = container_events.ContainerCreate(id=f"seq-{n}", image=PADDING)
    return any_pb2.Any(type_url=payload.DESCRIPTOR.full_name, value=payload.SerializeToString())


def ping(n: int) -> any_pb2.Any:
    payload = container_events.ContainerCreate(id=f"ping-{n}")
    return any_pb2.Any(type_url=payload.DESCRIPTOR.full_name, value=payload.SerializeToString())


def sequence(envelope: events_pb2.Envelope) -> int | None:
    """The event's sequence number; None for a ping."""
    name = container_events.ContainerCreate.FromString(envelope.event.value).id
    return None if name.startswith("ping-") else int(name.removeprefix("seq-"))


def subscribe(client: Client, publisher: Client) -> Iterator[events_pb2.Envelope]:
    """A Subscribe stream for the test's topic, returned once the server delivers to it: pings
    are published until the stream has read one (a stream is live only once its handler runs)."""
    stream = client.events.Subscribe(events_pb2.SubscribeRequest(filters=[f'topic=="{TOPIC}"']),
                                     metadata=client.metadata, timeout=DEADLINE)
    first: list[events_pb2.Envelope] = []
    waiting = threading.Thread(target=lambda: first.append(next(stream)), daemon=True)
    waiting.start()
    for n in range(1000):
        publisher.call(publisher.events.Publish, events_pb2.PublishRequest(topic=TOPIC, event=ping(n)))
        waiting.join(0.05)
        if not waiting.is_alive():
            break
    assert first, "the subscription never got an event"
    return stream  # type: ignore[no-any-return]


def test_a_stalled_subscriber_does_not_hold_back_the_others(daemon: Daemon) -> None:
    with daemon.client(timeout=60) as stalled_client, daemon.client(timeout=60) as reader_client, \
            daemon.client(timeout=60) as publisher:
        stalled = subscribe(stalled_client, publisher)
        reader = subscribe(reader_client, publisher)
        received: list[int] = []
        reader_failed: list[BaseException] = []

        def read() -> None:
            try:
                for envelope in reader:
                    n = sequence(envelope)
                    if n is not None:
                        received.append(n)
                    if len(received) == EVENTS:
                        return
            except BaseException as exc:  # reported by the test thread below
                reader_failed.append(exc)

        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        for n in range(EVENTS):
            publisher.call(publisher.events.Publish, events_pb2.PublishRequest(topic=TOPIC, event=event(n)))
        reading.join(DEADLINE)
        assert not reading.is_alive(), f"the reader got {len(received)} of {EVENTS} events and is stuck"
        assert reader_failed == []
        assert received == list(range(EVENTS))  # all of them, in order, though one subscriber stalled
        reader.cancel()

        # Now the stalled subscriber reads: what was queued for it, then the news of what it missed.
        got: list[int] = []
        with pytest.raises(grpc.RpcError) as ended:
            for envelope in stalled:
                n = sequence(envelope)
                if n is not None:
                    got.append(n)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        details = ended.value.details()  # type: ignore[attr-defined]
        match = re.search(r"(\d+) events were not delivered", details)
        assert match, details
        missed = int(match.group(1))
        assert missed > 0
        assert got == list(range(len(got)))  # what it did get came in order, from the start
        # Pings came before the sequence and were all queued, never missed: the sums add up.
        assert len(got) + missed == EVENTS, (len(got), missed)

    probes.assert_serving(daemon)
