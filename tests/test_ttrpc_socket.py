"""ctrpyd's ttrpc socket, where its shims forward their task events (containerd's convention).

A real ctrpyd; the shim's side is played by ``ctrpy.ttrpc.Client`` calling
``containerd.services.events.ttrpc.v1.Events/Forward`` as a shim does, and what arrives is
read as ``ctr events`` reads it, through the gRPC ``Events.Subscribe``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from ctrpy import ttrpc
from ctrpy.api.containerd.events import task_pb2
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_events
from ctrpy.errors import InvalidArgument, Unavailable
from ctrpy.manager import config as configuration
from tests.support.ctrpyd import Daemon

SERVICE = "containerd.services.events.ttrpc.v1.Events"
TOPIC = "/ttrpc-test/exit"


def ttrpc_path(daemon: Daemon) -> Path:
    """Where a daemon started on ``--address X`` serves ttrpc: ``X.ttrpc``."""
    return Path(f"{daemon.address}.ttrpc")


def envelope(namespace: str = "default", topic: str = TOPIC, container: str = "c1",
             seconds: int = 1_700_000_000) -> ttrpc_events.ForwardRequest:
    event = task_pb2.TaskExit(container_id=container, id=container, pid=42, exit_status=3)
    return ttrpc_events.ForwardRequest(envelope=ttrpc_events.Envelope(
        timestamp=timestamp_pb2.Timestamp(seconds=seconds, nanos=5000), namespace=namespace, topic=topic,
        event=any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString()),
    ))  # fmt: skip


async def forward(path: Path, *requests: ttrpc_events.ForwardRequest) -> list[BaseException | None]:
    """Forward each request on one connection, as a shim does; what each raised (or None)."""
    outcomes: list[BaseException | None] = []
    async with ttrpc.Client(str(path)) as client:
        for request in requests:
            try:
                await client.call(SERVICE, "Forward", request, empty_pb2.Empty, timeout=20)
                outcomes.append(None)
            except Exception as error:
                outcomes.append(error)
    return outcomes


@pytest.fixture
def subscriber(daemon: Daemon) -> Iterator[list[events_pb2.Envelope]]:
    """What an ``Events.Subscribe`` for the test's topics receives, appended as it arrives."""
    received: list[events_pb2.Envelope] = []
    client = daemon.client(timeout=None)
    stream = client.events.Subscribe(events_pb2.SubscribeRequest(filters=['topic~="^/ttrpc-test/"']),
                                     metadata=client.metadata)

    def run() -> None:
        try:
            for item in stream:
                received.append(item)
        except Exception:  # cancelled at the end of the test, or the daemon went away
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        stream.cancel()
        thread.join(10)
        client.close()


def test_the_ttrpc_socket_sits_beside_the_main_one_with_its_owner_and_mode(daemon: Daemon) -> None:
    path = ttrpc_path(daemon)
    main, ttrpc_stat = daemon.address.stat(), path.stat()
    assert path.is_socket()
    assert ttrpc_stat.st_mode & 0o7777 == main.st_mode & 0o7777 == 0o660
    assert (ttrpc_stat.st_uid, ttrpc_stat.st_gid) == (main.st_uid, main.st_gid)


def test_forward_refuses_bad_envelopes_and_delivers_good_ones(daemon: Daemon,
                                                             subscriber: list[events_pb2.Envelope]) -> None:
    path = ttrpc_path(daemon)
    no_event = envelope()
    no_event.envelope.ClearField("event")
    bad = asyncio.run(forward(path, envelope(topic="no-slash"), envelope(topic="/ttrpc-test/a b"),
                              envelope(namespace="Bad/Namespace"), envelope(namespace=""), no_event))
    assert all(isinstance(error, InvalidArgument) for error in bad), bad
    assert "topic" in str(bad[0])
    # The subscription may not be in place yet: forward until the first good event is seen.
    deadline = time.monotonic() + 30
    sent = 0
    while not subscriber and time.monotonic() < deadline:
        assert asyncio.run(forward(path, envelope(namespace="ns-ttrpc", container=f"c{sent}"))) == [None]
        sent += 1
        time.sleep(0.2)
    assert subscriber, "no forwarded event reached the subscriber"
    # Nothing refused got through, and the good ones arrive as the shim stamped them.
    time.sleep(0.5)
    assert {item.topic for item in subscriber} == {TOPIC}
    first = subscriber[0]
    assert first.namespace == "ns-ttrpc"
    assert (first.timestamp.seconds, first.timestamp.nanos) == (1_700_000_000, 5000)  # microseconds kept
    assert first.event.type_url == "containerd.events.TaskExit"
    assert task_pb2.TaskExit.FromString(first.event.value).exit_status == 3
    # In order, from the first one sent after the subscription was in place (those before it
    # reach no one).
    seen = [task_pb2.TaskExit.FromString(item.event.value).container_id for item in subscriber]
    first_seen = int(seen[0].removeprefix("c"))
    assert seen == [f"c{n}" for n in range(first_seen, first_seen + len(seen))]
    assert first_seen + len(seen) == sent


def test_unknown_methods_are_unimplemented(daemon: Daemon) -> None:
    from ctrpy.errors import NotImplemented as Unimplemented

    async def call() -> None:
        async with ttrpc.Client(str(ttrpc_path(daemon))) as client:
            await client.call(SERVICE, "Publish", envelope(), empty_pb2.Empty, timeout=20)

    with pytest.raises(Unimplemented):
        asyncio.run(call())


def test_a_stale_file_is_replaced_and_the_socket_goes_at_a_clean_stop() -> None:
    daemon = Daemon()
    try:
        # A socket file left by a killed ctrpyd: bound once, nobody listening.
        path = ttrpc_path(daemon)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()
        daemon.start()
        assert asyncio.run(forward(path, envelope())) == [None]
        assert daemon.stop() == 0
        assert not path.exists() and not daemon.address.exists()
        [gone] = asyncio.run(forward(path, envelope()))
        assert isinstance(gone, Unavailable), gone
    finally:
        daemon.cleanup()


def test_a_configured_address_and_owner() -> None:
    daemon = Daemon()
    try:
        elsewhere = daemon.base / "shims.ttrpc"
        config = daemon.base / "ctrpyd.toml"
        config.write_text(f'[grpc]\nmode = "0600"\n[ttrpc]\naddress = "{elsewhere}"\nuid = 0\ngid = 1\n')
        daemon.extra_args = ("--config", str(config))
        daemon.start()
        assert not ttrpc_path(daemon).exists()
        stat = elsewhere.stat()
        assert (stat.st_mode & 0o7777, stat.st_uid, stat.st_gid) == (0o600, 0, 1)
        assert asyncio.run(forward(elsewhere, envelope())) == [None]
        assert daemon.stop() == 0
        assert not elsewhere.exists()
    finally:
        daemon.cleanup()


def test_ttrpc_settings_round_trip_and_follow_the_grpc_address() -> None:
    defaults = configuration.Config()
    assert defaults.ttrpc_socket == Path("/run/ctrpy/ctrpy.sock.ttrpc") and defaults.ttrpc_owner == (0, 0)
    moved = defaults.with_overrides(address=Path("/srv/c.sock"))
    assert moved.ttrpc_socket == Path("/srv/c.sock.ttrpc")
    rendered = configuration.render(defaults)
    assert "[ttrpc]" in rendered and "/run/ctrpy/ctrpy.sock.ttrpc" in rendered
    assert configuration.parse(rendered) == defaults
    parsed = configuration.parse('[grpc]\nuid = 7\ngid = 8\n[ttrpc]\naddress = "/srv/t.sock"\ngid = 9\n')
    assert parsed.ttrpc_socket == Path("/srv/t.sock") and parsed.ttrpc_owner == (7, 9)
    assert configuration.parse(configuration.render(parsed)) == parsed
    for text, message in (("[ttrpc]\naddress = 'rel'", "absolute"), ("[ttrpc]\nmode = '0600'", r"\[ttrpc\]"),
                          ("[grpc]\naddress = '/a'\n[ttrpc]\naddress = '/a'", "gRPC socket"),
                          ("[ttrpc]\nuid = 'root'", "must be a int")):
        with pytest.raises(InvalidArgument, match=message):
            configuration.parse(text)
