"""Fixtures for pinned network namespaces and CNI with the real plugins.

Every test network is unique to its test: its own bridge name, network name, /24 subnet (one
that no route on the host covers), host-local data directory, conf dir and result cache, so
that tests running at the same time (here or in other suites) cannot collide. Teardown deletes
what a test made even when it fails: the namespaces it pinned, its bridge, and the iptables
rules and chains portmap and the bridge's ipMasq made for it (found by the network name in
their comments).
portmap's shared top-level chains (CNI-HOSTPORT-*) and their jumps stay, as they do after
portmap's own DEL: other pods may use them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ctrpy.manager.cri import netns
from ctrpy.manager.cri.cni import CNI
from tests.support import podnet
from tests.support.podnet import plugin_dir
from tests.support.polling import wait_until

#: Test pod networks come from here (bench uses 10.216.0.0/14, critest runs 10.224.0.0/14).
SUBNETS = ipaddress.IPv4Network("10.200.0.0/13")


requires_plugins = pytest.mark.skipif(
    plugin_dir() is None, reason="containernetworking-plugins not installed (scripts/bootstrap installs them)"
)


def free_subnet() -> ipaddress.IPv4Network:
    """A random /24 of :data:`SUBNETS` that no route on the host overlaps."""
    return podnet.free_subnet(SUBNETS)


@dataclass
class Net:
    """One test's network: where its config, IPAM data and cache live, and how to build a CNI."""

    root: Path
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    conf_dir: Path
    cache_dir: Path
    ipam_dir: Path
    state_dir: Path
    namespaces: list[str] = field(default_factory=list)

    def write_conflist(
        self,
        version: str = "1.0.0",
        *,
        portmap: bool = True,
        extra: list[dict[str, Any]] | None = None,
        filename: str = "10-test.conflist",
        ipam: dict[str, Any] | None = None,
    ) -> Path:
        doc = podnet.conflist(self.name, self.bridge, self.subnet, self.ipam_dir, version=version,
                              masquerade=False, portmap=portmap, ipam=ipam, extra=extra)
        path = self.conf_dir / filename
        path.write_text(json.dumps(doc))
        return path

    def cni(self, **kwargs: Any) -> CNI:
        return CNI(self.cache_dir, conf_dir=str(self.conf_dir), **kwargs)

    def new_netns(self) -> str:
        path = netns.create(self.state_dir)
        self.namespaces.append(path)
        return path

    def allocated(self) -> list[str]:
        """The addresses host-local holds for this network (its files named by IP)."""
        directory = self.ipam_dir / self.name
        if not directory.is_dir():
            return []
        found = []
        for entry in directory.iterdir():
            with contextlib.suppress(ValueError):
                found.append(str(ipaddress.ip_address(entry.name)))
        return sorted(found)

    def nat_rules(self) -> list[str]:
        """The nat rules that mention this network (portmap's comments carry its name)."""
        out = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True)
        return [line for line in out.stdout.splitlines() if self.name in line]


_cleanup_iptables = podnet.remove_nat_rules


@pytest.fixture
def testnet(tmp_path: Path) -> Iterator[Net]:
    """A unique test network (no config written yet: call ``write_conflist``)."""
    tag = secrets.token_hex(4)
    net = Net(
        root=tmp_path,
        name=f"ctrpytest-{tag}",
        bridge=f"ctt{tag}",
        subnet=free_subnet(),
        conf_dir=tmp_path / "net.d",
        cache_dir=tmp_path / "cache",
        ipam_dir=tmp_path / "ipam",
        state_dir=tmp_path / "state",
    )
    net.conf_dir.mkdir()
    try:
        yield net
    finally:
        for path in [*net.namespaces, *netns.list_all(net.state_dir)]:
            with contextlib.suppress(Exception):
                netns.remove(path)
        _cleanup_iptables(net.name)
        subprocess.run(["ip", "link", "delete", net.bridge], capture_output=True)


class Listener:
    """A TCP server inside a network namespace that answers every connection with ``pong``."""

    SCRIPT = (
        "import socket,sys\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(8)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(b'pong'); c.close()\n"
    )

    def __init__(self, path: str, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={path}", sys.executable, "-c", self.SCRIPT, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"listener in {path} did not start: {line!r}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def listen() -> Iterator[Any]:
    """``listen(netns_path, port)`` starts a Listener; all are killed afterwards."""
    started: list[Listener] = []

    def start(path: str, port: int) -> Listener:
        listener = Listener(path, port)
        started.append(listener)
        return listener

    try:
        yield start
    finally:
        for listener in started:
            listener.stop()


def connect(host: str, port: int, timeout: float = 15.0) -> bytes:
    """Connect to host:port (retrying while the path comes up) and read the answer."""

    def attempt() -> bytes:
        try:
            with socket.create_connection((host, port), timeout=3) as s:
                return s.recv(16)
        except OSError:
            return b""

    return wait_until(attempt, f"an answer from {host}:{port}", timeout=timeout, interval=0.2)
