"""Fixtures shared by the whole suite: a real ctrpyd on a socket of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.ctrpyd import Daemon


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """A running ctrpyd with a fresh root, state and socket; killed and cleaned up afterwards."""
    instance = Daemon()
    try:
        instance.start()
        yield instance
    finally:
        instance.cleanup()
