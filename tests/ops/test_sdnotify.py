"""sd_notify: ctrpyd says READY=1 on ``$NOTIFY_SOCKET`` once its socket serves and STOPPING=1 when
it drains, and no child of it (shim template, shims, runc) inherits the variable."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from ctrpy.manager.sdnotify import ENV, Notifier
from tests.support.ctrpyd import Daemon

DEADLINE = 60.0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket bound where a fake systemd listens."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(DEADLINE)
    try:
        yield sock, path
    finally:
        sock.close()


def messages_until(sock: socket.socket, wanted: str) -> list[str]:
    """Every datagram received up to and including the one holding the line ``wanted``."""
    got: list[str] = []
    while True:
        got.append(sock.recv(4096).decode())
        if wanted in got[-1].splitlines():
            return got


def test_notifier_sends_to_a_path_and_to_an_abstract_address(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    environ = {ENV: path, "OTHER": "x"}
    notifier = Notifier.from_environment(environ)
    assert environ == {"OTHER": "x"}  # taken out: children must not see it
    assert notifier.send("READY=1\nSTATUS=hello")
    assert sock.recv(4096) == b"READY=1\nSTATUS=hello"

    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"ctrpy-test-notify-{os.getpid()}"
    abstract.bind("\0" + name)
    abstract.settimeout(DEADLINE)
    try:
        assert Notifier("@" + name).send("STOPPING=1")
        assert abstract.recv(4096) == b"STOPPING=1"
    finally:
        abstract.close()


def test_notifier_without_systemd_or_with_nobody_listening(tmp_path: Path) -> None:
    assert not Notifier.from_environment({}).send("READY=1")
    assert not Notifier(str(tmp_path / "nobody")).send("READY=1")  # logged, not raised
    assert not Notifier("vsock:2:1234").send("READY=1")


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found


def test_ctrpyd_notifies_ready_when_serving_and_stopping_on_sigterm(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv(ENV, path)
    daemon = Daemon()
    try:
        daemon.start()
        ready = messages_until(sock, "READY=1")
        assert f"STATUS=serving on {daemon.address}" in ready[-1].splitlines()
        with daemon.client() as client:  # it serves
            client.call(client.version.Version, empty_pb2.Empty())
        assert daemon.process is not None
        children = _descendants(daemon.process.pid)
        assert children, "the shim template runs beside ctrpyd"
        for pid in children:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not any(entry.startswith(ENV.encode() + b"=") for entry in environ), pid
        assert daemon.stop() == 0
        assert "STOPPING=1" in messages_until(sock, "STOPPING=1")[-1].splitlines()
    finally:
        daemon.cleanup()
