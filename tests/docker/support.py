"""A private Docker Engine (Debian's ``docker.io`` 20.10) on a containerd-compatible daemon.

Plain Python (no pytest at module level), so that benchmarks can use it too::

    with docker_on_ctrpyd() as stack:
        stack.engine.ok("run", "--rm", BUSYBOX, "true")

dockerd keeps its root filesystems in its own graph driver (overlay2) and asks the daemon at
``--containerd`` only for containers, tasks and events, in the namespaces ``moby`` and
``plugins.moby``. Everything of one :class:`DockerEngine` lives under a short temp directory
(data root, exec root, pid file, API socket, daemon.json, the CLI's config, the log) except its
containers' cgroups, which sit at ``/<cgroup_parent>/<id>`` in every hierarchy under a parent
named for this instance only, so that cleanup removes exactly what it made.

Teardown (:meth:`DockerEngine.cleanup`), even after a failure: containers removed through the
API while dockerd answers, dockerd stopped by pid (SIGTERM, then SIGKILL), what is left in the
instance's cgroups killed by pid and the cgroups removed, runc's leftover state deleted, every
mount under the directory lazily unmounted, the directory removed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctrpy.testimage import busybox_image
from ctrpy.testimage.archive import write_docker_archive
from tests.crash.support import kill_and_wait, mounts_under, processes_naming, remove_cgroups
from tests.support.ctrpyd import Daemon
from tests.support.polling import wait_until

DOCKERD = "/usr/sbin/dockerd"
# Always the Debian client: another docker may come first on PATH.
DOCKER = "/usr/bin/docker"
RUNC = "runc"
BUSYBOX = "busybox:latest"
# Namespaces dockerd uses in containerd (its defaults).
NAMESPACE = "moby"
PLUGINS_NAMESPACE = "plugins.moby"
MNT_DETACH = 2


def available() -> bool:
    """Whether Debian's dockerd and docker client are installed."""
    return os.access(DOCKERD, os.X_OK) and os.access(DOCKER, os.X_OK)


class DockerFailed(RuntimeError):
    """A docker command that had to succeed did not; the message has its output."""


#: Polls for docker's side of things: a minute, as dockerd reacts slowly under load.
wait_for = functools.partial(wait_until, timeout=60.0, interval=0.1)


class DockerEngine:
    """One private dockerd pointed at ``containerd`` (a socket path); start, stop, restart, clean.

    ``live_restore`` starts it with ``--live-restore`` (containers outlive dockerd).
    """

    def __init__(self, containerd: str | os.PathLike[str], base: Path | None = None,
                 live_restore: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        # Unix socket paths are limited to 108 bytes, and dockerd puts more below the exec root.
        self.base = base or Path(tempfile.mkdtemp(prefix="dk-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.containerd = str(containerd)
        self.live_restore = live_restore
        self.extra_args = extra_args
        self.cgroup_parent = f"ctrpy-docker-{secrets.token_hex(4)}"
        self.process: subprocess.Popen[bytes] | None = None

    # --- where things live ------------------------------------------------------------------

    @property
    def data_root(self) -> Path:
        return self.base / "root"

    @property
    def exec_root(self) -> Path:
        return self.base / "exec"

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.base / "docker.pid"

    @property
    def config_file(self) -> Path:
        return self.base / "daemon.json"

    @property
    def log_path(self) -> Path:
        return self.base / "dockerd.log"

    @property
    def runc_root(self) -> Path:
        """Where dockerd tells runc (through the runc options) to keep its state."""
        return self.exec_root / "runtime-runc"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    # --- the daemon -------------------------------------------------------------------------

    def command(self) -> list[str]:
        """dockerd's argv: nothing outside the base directory but the containers' cgroups."""
        argv = [
            DOCKERD,
            "--config-file", str(self.config_file),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", f"unix://{self.socket}",
            "--containerd", self.containerd,
            "--storage-driver", "overlay2",
            # No bridge, no iptables rules, no masquerading: containers get loopback only.
            "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
            "--cgroup-parent", f"/{self.cgroup_parent}",
        ]  # fmt: skip
        if self.live_restore:
            argv.append("--live-restore")
        return [*argv, *self.extra_args]

    def env(self) -> dict[str, str]:
        """The environment for dockerd and the client: no inherited DOCKER_*, a private CLI config."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["DOCKER_CONFIG"] = str(self.base / "cli")
        return env

    def start(self, timeout: float = 60.0) -> DockerEngine:
        """Start dockerd and wait until its API answers; RuntimeError (with the log) otherwise."""
        # The trust key would otherwise go to /etc/docker/key.json.
        self.config_file.write_text(json.dumps({"deprecated-key-path": str(self.base / "key.json")}))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env(), start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if self.docker("version", "--format", "{{.Server.Version}}", timeout=10).returncode == 0:
                        return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM by pid and wait; SIGKILL after ``grace`` seconds. Returns the exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait()
        self.process = None
        return process.returncode

    def restart(self, timeout: float = 60.0) -> DockerEngine:
        self.stop()
        return self.start(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # --- the client -------------------------------------------------------------------------

    def docker_command(self) -> list[str]:
        """The argv prefix that points Debian's docker client at this dockerd."""
        return [DOCKER, "-H", f"unix://{self.socket}"]

    def docker(self, *args: str, input: str | None = None,
               timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the docker client against this dockerd; never raises on a non-zero exit."""
        return subprocess.run(
            [*self.docker_command(), *args], input=input, capture_output=True, text=True,
            timeout=timeout, env=self.env(), stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip

    def ok(self, *args: str, input: str | None = None, timeout: float = 120.0) -> str:
        """Run docker, require exit 0, return its stdout; DockerFailed with its output otherwise."""
        result = self.docker(*args, input=input, timeout=timeout)
        if result.returncode != 0:
            raise DockerFailed(
                f"docker {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}\ndockerd log:\n{self.log_tail()}"
            )
        return result.stdout

    def inspect(self, container: str, template: str) -> str:
        """``docker inspect -f TEMPLATE CONTAINER``, stripped."""
        return self.ok("inspect", "-f", template, container).strip()

    def load(self, archive: Path) -> None:
        self.ok("load", "-i", str(archive))

    # --- what is left -------------------------------------------------------------------------

    def cgroups(self) -> list[Path]:
        """The instance's cgroup directories below the parent, in every hierarchy."""
        found = []
        for hierarchy in sorted(Path("/sys/fs/cgroup").iterdir()):
            parent = hierarchy / self.cgroup_parent
            if not hierarchy.is_symlink() and parent.is_dir():
                found += [p for p in parent.iterdir() if p.is_dir()]
        return found

    def overlay_mounts(self) -> list[str]:
        """Mounts of container root filesystems under the data root (the root itself excluded)."""
        return [p for p in mounts_under(self.data_root / "overlay2") if p != str(self.data_root / "overlay2")]

    def cleanup(self) -> None:
        """Remove everything this instance made; every step runs even if an earlier one fails."""
        def remove_containers() -> None:
            if self.pid is not None:
                ids = self.docker("ps", "-aq", timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, timeout=60)

        def delete_runc_state() -> None:
            for namespace_root in sorted(self.runc_root.glob("*")):
                for container in sorted(namespace_root.glob("*")):
                    subprocess.run([RUNC, "--root", str(namespace_root), "delete", "--force", container.name],
                                   capture_output=True, check=False, timeout=60)

        steps = (remove_containers, self.stop, lambda: remove_cgroups(f"/{self.cgroup_parent}"),
                 delete_runc_state, lambda: unmount_under(self.base),
                 lambda: shutil.rmtree(self.base, ignore_errors=True))
        for step in steps:
            try:
                step()
            except Exception as err:  # cleanup never hides the error that ended a test
                print(f"docker engine cleanup: {err!r}")


def unmount_under(directory: Path) -> None:
    """Lazily unmount everything at or below ``directory``, deepest first (stacked mounts too)."""
    for _ in range(8):
        points = mounts_under(directory)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def kill_processes_of(daemon: Daemon) -> None:
    """SIGKILL what ``daemon`` started that names its directory (shims, the shim template)."""
    for pid in processes_naming(str(daemon.base) + "/"):
        with contextlib.suppress(AssertionError):
            kill_and_wait(pid)


def busybox_archive(path: Path) -> Path:
    """The busybox test image as a ``docker save`` archive (``docker load`` reads it)."""
    write_docker_archive(busybox_image(), path)
    return path


@dataclass
class Stack:
    """A ctrpyd and a dockerd on it, with the busybox image loaded."""

    ctrpyd: Daemon
    engine: DockerEngine
    namespaces_before: tuple[str, ...] = ()  # what ctrpyd had before dockerd first connected

    def cleanup(self) -> None:
        self.engine.cleanup()
        kill_processes_of(self.ctrpyd)
        self.ctrpyd.cleanup()


@contextlib.contextmanager
def docker_on_ctrpyd(live_restore: bool = False, image: Path | None = None) -> Iterator[Stack]:
    """A fresh ctrpyd (no namespace made beforehand) and a private dockerd on it; torn down on exit.

    ``image``, a ``docker save`` archive, is loaded once dockerd answers (built when not given).
    """
    ctrpyd = Daemon(base=Path(tempfile.mkdtemp(prefix="cp-")))
    engine = DockerEngine(ctrpyd.address, live_restore=live_restore)
    stack = Stack(ctrpyd, engine)
    try:
        ctrpyd.start()
        stack.namespaces_before = tuple(ctrpyd.ctr("namespaces", "ls", "-q").stdout.split())
        engine.start()
        engine.load(image or busybox_archive(engine.base / "busybox.tar"))
        yield stack
    finally:
        stack.cleanup()
