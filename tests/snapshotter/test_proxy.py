"""The proxy snapshotter: ``ctrpy-snapshotter`` in its own process, used through ``ProxySnapshotter``.

The whole conformance suite runs through the proxy against both backends, and a real ctrpyd
configured with ``[proxy_plugins.NAME]`` serves the stock ctr through it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ctrpy.errors import Unavailable
from ctrpy.snapshotter.proxy import ProxySnapshotter
from tests.support.ctrpyd import Daemon
from tests.support.polling import wait_until

from .conformance import CHECKS
from .harness import Harness, tree, write

_SCRIPT = Path(sys.executable).with_name("ctrpy-snapshotter")


def _command(*args: str) -> list[str]:
    """The installed console script, or the module when the script is not beside the interpreter."""
    if _SCRIPT.exists():
        return [str(_SCRIPT), *args]
    return [sys.executable, "-m", "ctrpy.snapshotter.main", *args]


class Server:
    """One ``ctrpy-snapshotter`` process on a socket of its own."""

    def __init__(self, root: Path, backend: str, socket_dir: Path, address: str | None = None) -> None:
        self.address = address or str(socket_dir / f"sn-{time.monotonic_ns()}.sock")
        self.log = socket_dir / (Path(self.address).stem + ".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                _command(
                    "--address",
                    self.address,
                    "--root",
                    str(root),
                    "--snapshotter",
                    backend,
                    "--log-level",
                    "debug",
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ctrpy-snapshotter exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.address)
                return
            except OSError:
                time.sleep(0.02)
            finally:
                probe.close()
        raise RuntimeError(f"ctrpy-snapshotter did not listen within {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class OwnedProxy(ProxySnapshotter):
    """A proxy that owns its server: closing it stops the process (so reopen restarts it)."""

    def __init__(self, server: Server) -> None:
        super().__init__(server.address, "proxied")
        self.server = server

    def close(self) -> None:
        super().close()
        self.server.stop()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="ctrpy-sn-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["overlayfs", "native"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, socket_dir: Path) -> Iterator[Harness]:
    backend = request.param
    h = Harness(lambda root: OwnedProxy(Server(root, backend, socket_dir)), tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_conformance_through_the_proxy(check: Callable[[Harness], None], harness: Harness) -> None:
    check(harness)


def test_no_server_is_unavailable(socket_dir: Path) -> None:
    with ProxySnapshotter(str(socket_dir / "nobody.sock"), timeout=10) as proxy, pytest.raises(Unavailable):
        proxy.stat("x")


def test_server_replaces_a_stale_socket_and_refuses_a_live_one(tmp_path: Path, socket_dir: Path) -> None:
    stale = socket_dir / "stale.sock"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(str(stale))
    holder.close()  # the file stays and nothing listens: a crashed server's leftover
    server = Server(tmp_path / "root", "native", socket_dir, address=str(stale))
    try:
        second = subprocess.run(
            _command(
                "--address", server.address, "--root", str(tmp_path / "other"), "--snapshotter", "native"
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1
        assert "in use by a running server" in second.stderr
        with ProxySnapshotter(server.address) as proxy:
            proxy.prepare("still-served", "")
            assert proxy.stat("still-served").name == "still-served"
    finally:
        assert server.stop() == 0
    assert not os.path.exists(server.address)  # removed on a clean stop


def test_ctrpyd_serves_ctr_through_a_proxy_plugin(tmp_path: Path, socket_dir: Path) -> None:
    """[proxy_plugins.NAME] type="snapshot": ctr snapshots --snapshotter NAME goes to the proxy."""
    server = Server(tmp_path / "proxied-root", "overlayfs", socket_dir)
    config = tmp_path / "ctrpyd.toml"
    config.write_text(
        f'version = 1\n\n[proxy_plugins.remote]\ntype = "snapshot"\naddress = "{server.address}"\n'
    )
    daemon = Daemon(extra_args=("--config", str(config)))
    target = tmp_path / "mnt"
    target.mkdir()
    try:
        daemon.start()
        plugins = daemon.ctr("plugins", "ls")
        assert re.search(r"io\.containerd\.snapshotter\.v1\s+remote\s+\S+\s+ok", plugins.stdout), (
            plugins.stdout
        )
        for args in (("prepare", "base-a", ""), ("commit", "base", "base-a"), ("prepare", "top", "base")):
            result = daemon.ctr("snapshots", "--snapshotter", "remote", *args)
            assert result.returncode == 0, result.stderr
        listing = daemon.ctr("snapshots", "--snapshotter", "remote", "ls")
        assert listing.returncode == 0, listing.stderr
        rows = {tuple(line.split()) for line in listing.stdout.splitlines()[1:]}
        assert rows == {("base", "Committed"), ("top", "base", "Active")}
        # The proxy's server holds them under ctrpyd's backend keys, namespace first.
        with ProxySnapshotter(server.address) as direct:
            backend = {info.name for info in direct.walk()}
        assert {key.split("/", 2)[2] for key in backend} == {"base", "top"}
        assert all(key.startswith("default/") for key in backend)
        # The mounts come back through both hops unchanged, and they work.
        mounts = daemon.ctr("snapshots", "--snapshotter", "remote", "mounts", str(target), "top")
        assert mounts.returncode == 0, mounts.stderr
        assert str(tmp_path / "proxied-root") in mounts.stdout
        subprocess.run(["sh", "-c", mounts.stdout], check=True)
        try:
            write(target / "through-proxy", "yes")
            assert tree(target) == {"through-proxy": "yes"}
        finally:
            subprocess.run(["umount", str(target)], check=True)
        assert daemon.ctr("snapshots", "--snapshotter", "remote", "rm", "top").returncode == 0
        assert daemon.ctr("snapshots", "--snapshotter", "remote", "rm", "base").returncode == 0
        # ctrpyd drops its rows in the call and removes the backend's snapshots after it returns.
        with ProxySnapshotter(server.address) as direct:
            wait_until(lambda: not list(direct.walk()), "the proxy's snapshots to be removed")
    finally:
        daemon.cleanup()
        server.stop()
