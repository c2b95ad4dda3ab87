"""Fixtures for CRI containers: one ctrpyd with the CRI on, a network of its own and the busybox
test image in ``k8s.io`` for the module; a fresh pod per test (removed with its containers); a
ctrpyd of the test's own for tests that kill or restart it, started or (``crashd``) not yet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cri_container.support import Pod, busybox_daemon, make_pod
from tests.cri_net.conftest import plugin_dir
from tests.cri_sandbox.support import PodDaemon

if plugin_dir() is None:
    pytest.skip("containernetworking-plugins not installed (scripts/bootstrap installs them)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodDaemon]:
    """One started ctrpyd for the module with the busybox image, reaped afterwards."""
    with busybox_daemon(tmp_path_factory.mktemp("image")) as daemon:
        yield daemon


@pytest.fixture
def podd(tmp_path: Path) -> Iterator[PodDaemon]:
    """A started ctrpyd with the busybox image for the test alone (it may kill or restart it)."""
    with busybox_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
def crashd() -> Iterator[PodDaemon]:
    """A ctrpyd for the test alone, not started (the test sets its failpoints first), reaped."""
    daemon = PodDaemon()
    try:
        yield daemon
    finally:
        daemon.reap()


@pytest.fixture
def pod(pods: PodDaemon, tmp_path: Path) -> Iterator[Pod]:
    """A ready pod of the test's own; its containers and itself are removed afterwards."""
    made = make_pod(pods, tmp_path)
    try:
        yield made
    finally:
        made.cleanup()
