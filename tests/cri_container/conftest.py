"""Fixtures for CRI containers: one ctrpyd with the CRI on, a network of its own and the busybox
test image in ``k8s.io`` for the module; a fresh pod per test (removed with its containers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cri_container.support import Pod, import_busybox, make_pod
from tests.cri_net.conftest import plugin_dir
from tests.cri_sandbox.support import PodDaemon

if plugin_dir() is None:
    pytest.skip("containernetworking-plugins not installed (scripts/bootstrap installs them)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodDaemon]:
    """One started ctrpyd for the module with the busybox image, reaped afterwards."""
    daemon = PodDaemon()
    try:
        daemon.start()
        import_busybox(daemon, tmp_path_factory.mktemp("image"))
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
