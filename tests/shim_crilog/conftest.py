"""Fixtures for CRI logs end to end: a real ctrpyd in a namespace of its own, busybox imported,
and everything it started (ctrpyd, shims, containers, cgroups, mounts) reaped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.crash.support import CrashDaemon


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image as an OCI layout tar, built once."""
    path = tmp_path_factory.mktemp("crilog-images") / "busybox.tar"
    write_oci_layout_tar(busybox_image(), path)
    return path


@pytest.fixture
def logd(busybox_tar: Path) -> Iterator[CrashDaemon]:
    """A started ctrpyd with busybox imported into the test's namespace; reaped by pid after."""
    daemon = CrashDaemon()
    try:
        daemon.start()
        daemon.ok("images", "import", str(busybox_tar))
        yield daemon
    finally:
        daemon.reap()
