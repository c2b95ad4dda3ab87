"""Fixtures of the load tests: a ctrpyd with busybox imported, cleaned up by pid and mount point,
and the cgroups of the test's namespace removed, whatever happened."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.hostile import probes
from tests.hostile.conftest import configured_daemon
from tests.support.ctrpyd import Daemon

IMAGE = "docker.io/library/busybox:latest"


@dataclass
class Loaded:
    daemon: Daemon
    namespace: str
    chain_id: str


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[Loaded]:
    """A running ctrpyd with busybox imported and unpacked in a namespace of the test's own."""
    daemon = configured_daemon()
    namespace = f"load-{secrets.token_hex(3)}"
    try:
        daemon.start()
        info = write_oci_layout_tar(busybox_image(IMAGE), tmp_path / "busybox.tar")
        result = daemon.ctr("images", "import", str(tmp_path / "busybox.tar"), namespace=namespace)
        assert result.returncode == 0, result.stderr
        yield Loaded(daemon, namespace, info.chain_ids[-1])
    finally:
        try:
            probes.kill_leftovers(daemon)
            daemon.cleanup()
        finally:
            probes.remove_cgroups(namespace)
