"""Fixtures for pod sandboxes: a ctrpyd with the CRI on and a network of its own (see support)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cri_net.conftest import plugin_dir
from tests.cri_sandbox.support import PodDaemon

if plugin_dir() is None:
    pytest.skip("containernetworking-plugins not installed (scripts/bootstrap installs them)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def pods() -> Iterator[PodDaemon]:
    """One started ctrpyd for the module, reaped afterwards (pods, cgroups, network)."""
    daemon = PodDaemon()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.reap()


@pytest.fixture
def podd() -> Iterator[PodDaemon]:
    """A ctrpyd of the test's own, not started (arm failpoints first); reaped afterwards."""
    daemon = PodDaemon()
    try:
        yield daemon
    finally:
        daemon.reap()
