"""Fixtures shared by the whole suite: a real ctrpyd on a socket of its own, and for tests of
the metadata stores without a daemon, a metadata database beside a native snapshotter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.manager.metadata.db import Database
from ctrpy.snapshotter.native import NativeSnapshotter
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


@pytest.fixture
def meta_and_native(tmp_path: Path) -> Iterator[tuple[Database, NativeSnapshotter]]:
    """A metadata database and a native snapshotter under ``tmp_path``, closed afterwards."""
    db = Database(tmp_path / "meta.db")
    backend = NativeSnapshotter(tmp_path / "native")
    try:
        yield db, backend
    finally:
        backend.close()
        db.close()
