"""The daemons the image CLI tests run against: the reference containerd, and ctrpyd.

``backend`` (import :func:`backend_fixture` into a test module to use it) is a pytest fixture
parametrized over both, so every image test proves ctrpy against containerd's behaviour and
against ctrpyd at once. Each test gets a fresh daemon, its own
namespace, and a scratch directory inside the daemon's directory (so that the daemon's cleanup
also catches mounts a failing test leaves behind).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.containerd import CtrFailed, mounts_under, reference_containerd, run_ctr
from tests.support.ctrpyd import Daemon

BACKENDS = ["containerd", "ctrpyd"]

needs_root_and_containerd = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"),
    reason="needs root, containerd and ctr")


@dataclass
class Backend:
    """One running daemon as the tests see it."""

    kind: str
    address: str
    namespace: str
    scratch: Path
    namespaces: set[str] = field(default_factory=set)

    def ctr(self, *args: str, namespace: str | None = None, check: bool = True,
            input: str | bytes | None = None, text: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The stock ctr against this daemon; raises CtrFailed on failure when ``check``."""
        ns = namespace or self.namespace
        self.namespaces.add(ns)
        result = run_ctr(self.address, *args, namespace=ns, input=input, text=text, timeout=timeout)
        if check and result.returncode != 0:
            raise CtrFailed(result)
        return result

    def ctrpy(self, *args: str, namespace: str | None = None, check: bool = True,
              input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The ctrpy CLI against this daemon; raises CtrFailed on failure when ``check``."""
        ns = namespace or self.namespace
        self.namespaces.add(ns)
        command = [sys.executable, "-m", "ctrpy.cli.main", "--address", self.address, "--namespace", ns, *args]
        raw = subprocess.run(command, input=input, capture_output=True, timeout=timeout)
        result = subprocess.CompletedProcess(
            raw.args, raw.returncode, raw.stdout.decode(errors="replace"), raw.stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            raise CtrFailed(result)
        return result

    def ctrpy_bytes(self, *args: str, namespace: str | None = None) -> bytes:
        """The ctrpy CLI's raw stdout (for ``content get``); raises CtrFailed on failure."""
        ns = namespace or self.namespace
        command = [sys.executable, "-m", "ctrpy.cli.main", "--address", self.address, "--namespace", ns, *args]
        raw = subprocess.run(command, capture_output=True, timeout=120)
        if raw.returncode != 0:
            raise CtrFailed(subprocess.CompletedProcess(raw.args, raw.returncode, "", raw.stderr.decode()))
        return raw.stdout

    def other_namespace(self) -> str:
        """A second namespace of this test's own."""
        return f"{self.namespace}-b{secrets.token_hex(2)}"


@pytest.fixture(params=BACKENDS, name="backend")
def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh daemon of each kind; mounts below it are checked and removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"):
        pytest.skip("needs root, containerd and ctr")
    if request.param == "containerd":
        with reference_containerd(tmp_path / "d") as ctrd:
            scratch = ctrd.directory / "scratch"
            scratch.mkdir()
            instance = Backend("containerd", ctrd.address, ctrd.namespace, scratch)
            try:
                yield instance
            finally:
                ctrd.namespaces.update(instance.namespaces)
                leftover = mounts_under(scratch)
        assert not leftover, f"mounts left behind: {leftover}"
        return
    daemon = Daemon()
    try:
        daemon.start()
        scratch = daemon.base / "scratch"
        scratch.mkdir()
        yield Backend("ctrpyd", str(daemon.address), f"ctrpytest-{secrets.token_hex(4)}", scratch)
    finally:
        daemon.cleanup()
