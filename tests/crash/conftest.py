"""Fixtures for the crash and restart matrix: an armed ctrpyd with busybox imported, reaped after."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrpy.testimage import ImageInfo, busybox_image, write_oci_layout_tar
from tests.crash.support import CrashDaemon, ok


@dataclass(frozen=True)
class Archive:
    path: Path
    info: ImageInfo


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """The busybox image as an OCI layout tar, built once, and what it holds."""
    path = tmp_path_factory.mktemp("crash-images") / "busybox.tar"
    return Archive(path, write_oci_layout_tar(busybox_image(), path))


@pytest.fixture
def crashd() -> Iterator[CrashDaemon]:
    """A ctrpyd (not started: arm it first) in a namespace of its own; reaped afterwards."""
    daemon = CrashDaemon()
    try:
        yield daemon
    finally:
        daemon.reap()


@pytest.fixture
def ready(crashd: CrashDaemon, busybox_archive: Archive) -> CrashDaemon:
    """A started ctrpyd with the busybox image imported into the test's namespace."""
    crashd.start()
    ok(crashd.ctr("images", "import", str(busybox_archive.path)))
    return crashd
