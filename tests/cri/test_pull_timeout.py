"""``[cri] image_pull_progress_timeout``: a pull whose registry stops sending is cancelled once
nothing has progressed for that long (containerd's behaviour), well before the Transfer
service's own stall timeout, and leaves no image behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.cri import CriClient
from ctrpy.errors import DeadlineExceeded
from tests.cri.conftest import Images
from tests.support.ctrpyd import Daemon
from tests.support.registry import Reply, Request, forward, scripted


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Daemon]:
    config = tmp_path / "ctrpyd.toml"
    config.write_text(f'version = 1\n[transfer]\nstall_timeout = 60.0\n'
                      f'[cri]\ncni_conf_dir = "{tmp_path}"\nimage_pull_progress_timeout = "2s"\n')
    daemon = Daemon(extra_args=("--config", str(config)))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


def test_a_pull_without_progress_is_cancelled(impatient: Daemon, cri_images: Images) -> None:
    layer = cri_images.busybox.layers[0]

    def handler(request: Request) -> Reply:
        reply = forward(cri_images.registry.port, request)
        if request.method == "GET" and request.path.endswith(f"/blobs/{layer.digest}"):
            reply.stall_after, reply.stall_for = layer.size // 2, 60.0
        return reply

    with scripted(handler) as front, CriClient(str(impatient.address), 60) as cri:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no progress"):
            cri.pull_image(f"{front.host}/library/busybox:1")
        assert time.monotonic() - started < 45  # cancelled, not waiting the minute for the registry
        assert cri.list_images() == []
