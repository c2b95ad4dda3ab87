"""What the ``ctrpy run`` / ``ctrpy tasks`` tests share: a daemon (the reference containerd or
ctrpyd, through the ``backend`` fixture) with the busybox image imported, and a way to run the
CLI against it.

Import ``runner_fixture`` and ``backend_fixture`` into a test module to use the ``runner``
fixture. On teardown, even after a failure, every task of the test's namespaces is killed and
deleted and every container removed (with its snapshot) through the stock ctr, the cgroups of
those namespaces are removed, and the test's FIFO directory is checked and removed; the
``backend`` fixture then checks for mounts and stops the daemon.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.images.backends import Backend, backend_fixture  # noqa: F401  (re-exported fixture)
from tests.support.containerd import remove_cgroups

BUSYBOX = "docker.io/library/busybox:latest"
# Generous limits that only stop a hung test; no assertion depends on them.
LIMIT = 120.0


@dataclass
class Runner:
    """One daemon with busybox imported; ``ctrpy(...)`` runs the CLI against it."""

    backend: Backend
    fifo_dir: Path
    image: str = BUSYBOX

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def namespace(self) -> str:
        return self.backend.namespace

    def command(self, *args: str, namespace: str | None = None) -> list[str]:
        ns = namespace or self.namespace
        self.backend.namespaces.add(ns)
        return [sys.executable, "-m", "ctrpy.cli.main", "--address", self.backend.address, "--namespace", ns, *args]

    def io_flags(self) -> list[str]:
        """Flags for ``run`` and ``tasks start|exec``: FIFOs in the test's own directory."""
        return ["--fifo-dir", str(self.fifo_dir)]

    def create_flags(self) -> list[str]:
        """Flags for ``containers create``: with containerd, runc's state in the test's dir
        (ctrpyd keeps runc's state in its own state directory anyway)."""
        if self.kind == "containerd":
            return ["--runc-root", str(self.backend.scratch.parent / "runc")]
        return []

    def run_flags(self) -> list[str]:
        """Flags for ``run``: FIFOs (and, with containerd, runc's state) in the test's dirs."""
        return self.io_flags() + self.create_flags()

    def ctrpy(self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = LIMIT,
              namespace: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ctrpy; stdin is /dev/null unless ``input`` is given. Raises AssertionError on
        failure when ``check``."""
        raw = subprocess.run(self.command(*args, namespace=namespace), input=input,
                             stdin=subprocess.DEVNULL if input is None else None,
                             capture_output=True, timeout=timeout)
        result = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(errors="replace"),
                                             raw.stderr.decode(errors="replace"))
        if check:
            assert result.returncode == 0, f"ctrpy {args} exited {result.returncode}:\n{result.stderr}"
        return result

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.backend.ctr(*args, check=check)

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ctrpy in the background (the caller waits for it or kills it)."""
        return subprocess.Popen(self.command(*args), **kwargs)  # type: ignore[call-overload,no-any-return]

    def task_status(self, container_id: str) -> str | None:
        """The task's status from ``ctrpy tasks ls`` (None when there is no task)."""
        for line in self.ctrpy("tasks", "ls").stdout.splitlines()[1:]:
            cells = line.split()
            if cells and cells[0] == container_id:
                return cells[2]
        return None

    def container_ids(self) -> list[str]:
        return self.ctrpy("containers", "ls", "-q").stdout.split()

    def snapshot_keys(self) -> list[str]:
        return [line.split()[0] for line in self.ctrpy("snapshots", "ls").stdout.splitlines()[1:] if line.strip()]

    def fifo_entries(self) -> list[str]:
        return sorted(p.name for p in self.fifo_dir.iterdir()) if self.fifo_dir.exists() else []


def wait_stopped(runner: Runner, container_id: str) -> None:
    """Poll ``tasks ls`` until the task has stopped (fails after :data:`LIMIT` seconds)."""
    deadline = time.monotonic() + LIMIT
    while runner.task_status(container_id) != "STOPPED":
        if time.monotonic() > deadline:
            pytest.fail(f"task {container_id} did not stop")
        time.sleep(0.05)


@pytest.fixture(scope="session", name="busybox_tar")
def busybox_tar_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "busybox.tar"
    write_oci_layout_tar(busybox_image(), path)
    return path


def _quiet(backend: Backend, ns: str, *args: str) -> list[str]:
    try:
        result = backend.ctr(*args, namespace=ns, check=False, timeout=30)
    except subprocess.TimeoutExpired:
        return []
    return result.stdout.split() if result.returncode == 0 else []


def remove_everything(backend: Backend) -> None:
    """Kill and delete every task, delete every container and its snapshot, in every
    namespace the test used; then remove those namespaces' (empty) cgroups."""
    for ns in sorted(backend.namespaces | {backend.namespace}):
        for task in _quiet(backend, ns, "tasks", "ls", "-q"):
            _quiet(backend, ns, "tasks", "kill", "--all", "--signal", "SIGKILL", task)
            _quiet(backend, ns, "tasks", "rm", "-f", task)
        for container in _quiet(backend, ns, "containers", "ls", "-q"):
            _quiet(backend, ns, "containers", "rm", container)
        if backend.kind == "ctrpyd":
            remove_cgroups(ns)
        else:
            # runc's default state root, should a test have used it: only our namespace's dir.
            with contextlib.suppress(OSError):
                os.rmdir(f"/run/containerd/runc/{ns}")


@pytest.fixture(name="runner")
def runner_fixture(backend: Backend, busybox_tar: Path, tmp_path: Path) -> Iterator[Runner]:
    """A :class:`Runner` on a fresh daemon; everything the test started is removed afterwards."""
    instance = Runner(backend, tmp_path / "fifo")
    try:
        instance.ctrpy("images", "import", str(busybox_tar))
        yield instance
    finally:
        remove_everything(backend)
        shutil.rmtree(instance.fifo_dir, ignore_errors=True)


def read_until(fd: int, wanted: bytes, limit: float = LIMIT) -> bytes:
    """Read from ``fd`` until ``wanted`` shows up (or end of file); fails after ``limit``
    seconds so that a broken test cannot hang the suite."""
    seen = b""
    deadline = time.monotonic() + limit
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"did not see {wanted!r} in time; got {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the pty's other side closed
            break
        if not chunk:
            break
        seen += chunk
    return seen


@dataclass
class PtyProcess:
    """A process whose stdin, stdout and stderr are a new pseudo-terminal."""

    process: subprocess.Popen[bytes]
    master: int

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def resize(self, columns: int, rows: int) -> None:
        """Change the terminal's size; the kernel sends SIGWINCH to the process on it."""
        import fcntl
        import struct
        import termios

        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def read_until(self, wanted: bytes) -> bytes:
        return read_until(self.master, wanted)

    def finish(self) -> tuple[int, bytes]:
        """Read everything up to the end, then wait for the exit status."""
        rest = read_until(self.master, b"\0never\0")
        return self.process.wait(LIMIT), rest

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


def spawn_in_pty(command: Sequence[str], columns: int = 100, rows: int = 30) -> PtyProcess:
    """Start ``command`` on a fresh pty of the given size, as its controlling terminal."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def controlling() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        process = subprocess.Popen(list(command), stdin=slave, stdout=slave, stderr=slave,
                                   start_new_session=True, preexec_fn=controlling)
    finally:
        os.close(slave)
    return PtyProcess(process, master)
