"""Fixtures of the hostile-input tests: a ctrpyd with small layer limits, cleaned up by pid."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.hostile.probes import kill_leftovers
from tests.support.ctrpyd import Daemon

# The test daemon's bounds on one layer: small, so that a bomb is cheap to build and to refuse.
LAYER_LIMIT = 64 * 1024 * 1024
ENTRY_LIMIT = 10_000


def configured_daemon(config: str = "") -> Daemon:
    """A (not yet started) ctrpyd whose config file holds the test limits, then ``config``."""
    base = Path(tempfile.mkdtemp(prefix="ctrpyd-"))
    path = base / "ctrpyd.toml"
    path.write_text(f"[diff]\nmax_uncompressed_bytes = {LAYER_LIMIT}\nmax_entries = {ENTRY_LIMIT}\n{config}")
    return Daemon(base, extra_args=("--config", str(path)))


@contextmanager
def running_daemon() -> Iterator[Daemon]:
    """A started :func:`configured_daemon`; its tasks' processes are killed by pid and everything
    below it unmounted afterwards, however the block ends (the body of every such fixture)."""
    daemon = configured_daemon()
    try:
        daemon.start()
        yield daemon
    finally:
        kill_leftovers(daemon)
        daemon.cleanup()


@pytest.fixture
def hostile_daemon() -> Iterator[Daemon]:
    """A running ctrpyd with the test limits; its tasks' processes are killed by pid and
    everything below it unmounted afterwards, whatever the test did."""
    with running_daemon() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def module_daemon() -> Iterator[Daemon]:
    """The same, one for a whole module: for modules whose every test removes its containers
    and asserts that nothing of them is left, where a fresh daemon a test would check nothing
    more (starting one and importing an image was most of their time)."""
    with running_daemon() as daemon:
        yield daemon
