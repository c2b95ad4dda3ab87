"""Fixtures of the doctor tests: a real ctrpyd with the busybox image imported, whose
containers' processes (shims, container inits) are ended by pid afterwards, whatever happened."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.manager.doctor import procs
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.support.ctrpyd import Daemon

BUSYBOX = "docker.io/library/busybox:latest"


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("doctor-images") / "busybox.tar"
    write_oci_layout_tar(busybox_image(), path)
    return path


class Processes:
    """Processes a test started through ctrpyd, to end by pid when it is over."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.pids: dict[int, procs.Proc] = {}

    def remember(self, pid: int) -> int:
        """Note ``pid`` (with its start time, so a reused pid is never signalled)."""
        proc = procs.read_proc(pid)
        assert proc is not None, f"process {pid} is not running"
        self.pids[pid] = proc
        return pid

    def remember_task(self, namespace: str, container_id: str) -> tuple[int, int]:
        """Note the shim and init pids of a task from its bundle; return them."""
        bundle = self.daemon.state / "tasks" / namespace / container_id
        shim = int((bundle / "shim.pid").read_text())
        init = int((bundle / "init.pid").read_text())
        return self.remember(shim), self.remember(init)

    def crash_daemon(self) -> None:
        """SIGKILL ctrpyd, as a crash would, and wait until its shim template has noticed and
        exited (it does when its stdin closes), so that only the crash's leftovers remain."""
        templates = [s for s in procs.shims_of(Path(os.path.realpath(self.daemon.state))) if s.is_template]
        self.daemon.kill()
        for template in templates:
            while procs.alive(template.pid, template.starttime):
                time.sleep(0.01)

    def end_all(self) -> None:
        for pid, proc in self.pids.items():
            now = procs.read_proc(pid)
            if now is not None and now.live and now.starttime == proc.starttime:
                os.kill(pid, signal.SIGKILL)
        runc_root = self.daemon.state / "runc"
        if runc_root.is_dir():
            for namespace in runc_root.iterdir():
                for container in namespace.iterdir():
                    subprocess.run(
                        ["runc", "--root", str(namespace), "delete", "--force", container.name],
                        capture_output=True,
                        check=False,
                    )


@pytest.fixture
def loaded(daemon: Daemon, busybox_archive: Path) -> Iterator[tuple[Daemon, Processes]]:
    """A running ctrpyd with busybox imported, and the record of processes to end."""
    started = Processes(daemon)
    try:
        result = daemon.ctr("images", "import", str(busybox_archive))
        assert result.returncode == 0, result.stderr
        yield daemon, started
    finally:
        daemon.kill()
        started.end_all()
