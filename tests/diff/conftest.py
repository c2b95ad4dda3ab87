"""Fixtures for the layer tests: a target root, an outside sentinel, and mount cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from diff_helpers import Sentinel, describe

from ctrpy.mount import unmount_recursive


@pytest.fixture(autouse=True)
def _unmount_everything(tmp_path: Path) -> Iterator[None]:
    """Whatever a test leaves mounted under tmp_path is unmounted, even when it fails."""
    yield
    unmount_recursive(tmp_path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def sentinel(tmp_path: Path, root: Path) -> Sentinel:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"secret\n")
    return Sentinel(
        tmp_path, outside, secret, describe(outside), {p.name for p in tmp_path.iterdir()},
        Sentinel.meta(outside),
    )
