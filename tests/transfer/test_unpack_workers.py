"""[transfer] unpack_workers: layers unpacked in worker processes (the default) or, with 0, in
the daemon's threads; the same snapshots either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrpy.images import snapshots
from ctrpy.manager import config as configuration
from tests.support.ctrpyd import Daemon
from tests.support.polling import wait_until

from .conftest import Filled, ctrpy


def _workers_of(daemon: Daemon) -> list[int]:
    assert daemon.process is not None
    children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children").read_text().split()
    found = []
    for pid in children:
        try:
            if "ctrpy.manager.diff.worker" in Path(f"/proc/{pid}/cmdline").read_text():
                found.append(int(pid))
        except FileNotFoundError:
            pass
    return found


@pytest.mark.parametrize("workers", [0, 1])
def test_pull_unpacks_with_and_without_workers(tmp_path: Path, filled: Filled, workers: int) -> None:
    config = tmp_path / "ctrpyd.toml"
    config.write_text(f"version = 1\n[transfer]\nunpack_workers = {workers}\n")
    daemon = Daemon(extra_args=("--config", str(config)))
    try:
        daemon.start()
        ref = f"{filled.host}/library/busybox:1"
        for pulled, image in ((f"{filled.host}/library/multilayer:1", filled.multilayer), (ref, filled.busybox)):
            result = ctrpy(daemon, "default", "images", "pull", "--plain-http", pulled)
            assert result.returncode == 0, result.stderr
            with daemon.client() as client:
                top = image.chain_ids[-1]
                assert snapshots.stat(client, "overlayfs", top).name == top
        started = _workers_of(daemon)
        assert len(started) == workers  # kept warm for the next pull, then ended when idle
        run = daemon.ctr("run", "--rm", ref, "unpacked", "echo", "unpacked")
        assert run.returncode == 0 and run.stdout.strip() == "unpacked", run.stderr
    finally:
        pids = _workers_of(daemon) if daemon.process is not None else []
        daemon.stop()
        daemon.cleanup()
    for pid in pids:  # a stopped daemon leaves no worker behind
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=20,
                   what=f"unpack worker {pid} to end")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_config_reads_and_renders_unpack_workers() -> None:
    parsed = configuration.parse("version = 1\n[transfer]\nunpack_workers = 0\n")
    assert parsed.transfer_unpack_workers == 0
    assert configuration.parse(configuration.render(parsed)).transfer_unpack_workers == 0
    assert configuration.Config().transfer_unpack_workers == 2
    with pytest.raises(Exception, match="unpack_workers"):
        configuration.parse("version = 1\n[transfer]\nunpack_workers = -1\n")


