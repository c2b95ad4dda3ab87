"""A ctrpyd whose root, state and socket live on a small tmpfs, so that the disk fills up.

The tmpfs is mounted on a fresh directory, handed to :class:`Daemon` as its base, and lazily
unmounted (then the directory removed) after the test, even when the test failed: the daemon
is stopped by pid first, then its tasks' processes, then everything below the base unmounted.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ctrpy.testimage import busybox_image, large_image, write_oci_layout_tar
from tests.hostile.probes import kill_leftovers
from tests.support.ctrpyd import Daemon

#: The size of the daemon's filesystem.
TMPFS_BYTES = 24 << 20
#: The image that cannot fit: one 40 MiB layer of random bytes.
BIG_BYTES = 40 << 20
#: The image whose blob fits but whose unpacked layer does not.
HALF_BYTES = 13 << 20
HALF = "test.local/half:1"
BUSYBOX = "docker.io/library/busybox:latest"


def used_bytes(path: Path) -> int:
    """Bytes in use on the filesystem of ``path``."""
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return its last answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.1)
    return True


def fill(path: Path) -> None:
    """Fill the filesystem of ``path`` by writing ``path`` until ENOSPC (the file stays)."""
    chunk = b"\xa5" * (1 << 20)
    with open(path, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
        try:  # the last partial pages, too
            while True:
                out.write(b"\xa5" * 4096)
        except OSError:
            pass


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The archives: ``big`` (40 MiB, never fits), ``half`` (13 MiB: the blob fits, the blob
    and its unpacked files do not) and ``busybox`` (about 1 MiB)."""
    work = tmp_path_factory.mktemp("diskfull-images")
    big, half, small = work / "big.tar", work / "half.tar", work / "busybox.tar"
    write_oci_layout_tar(large_image(total_bytes=BIG_BYTES, layers=1, name="test.local/big:1"), big)
    write_oci_layout_tar(large_image(total_bytes=HALF_BYTES, layers=1, seed=1, name=HALF), half)
    write_oci_layout_tar(busybox_image(), small)
    return {"big": big, "half": half, "busybox": small}


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A fresh directory with a 24 MiB tmpfs mounted on it; unmounted and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="ctrpyfull-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs", str(base)],
        check=True,
        capture_output=True,
    )
    try:
        yield base
    finally:
        subprocess.run(["umount", "-l", str(base)], check=False, capture_output=True)
        os.rmdir(base)


@pytest.fixture
def full_daemon(small_disk: Path) -> Iterator[Daemon]:
    """A running ctrpyd whose whole base (root, state, socket, log) is on ``small_disk``."""
    daemon = Daemon(base=small_disk)
    try:
        daemon.start()
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            for task in daemon.ctr("tasks", "ls", "-q").stdout.split():
                daemon.ctr("tasks", "rm", "-f", task)
        daemon.kill()
        # Shims by pid, then every mount at or below the base (the tmpfs too, lazily): the
        # small_disk fixture then finds it unmounted and removes the directory.
        kill_leftovers(daemon)
