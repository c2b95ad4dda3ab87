"""Real shims, real runc, a busybox rootfs and a fake ctrpyd that records forwarded events.

Plain Python (no pytest), so that bench/shim_cost.py can use it too. Everything a test starts
is cleaned up by :meth:`Env.close`, even after a failure: shims are SIGKILLed by pid, runc
deletes the containers (``--force``), rootfs mounts are undone, bundles removed, and the
test's cgroup parent is removed from every hierarchy.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from ctrpy import ttrpc
from ctrpy.api.containerd.events import task_pb2 as task_events
from ctrpy.api.containerd.services.ttrpc.events.v1 import events_pb2
from ctrpy.errors import Unavailable
from ctrpy.manager.runtime import Bundle, ShimClient, ShimLauncher, Stdio
from ctrpy.mount import Mount, mountpoints_under, unmount_recursive
from ctrpy.shim import files

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh", "echo", "cat", "sleep", "true", "false", "id", "head", "tr", "stty", "ls")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NAMESPACE = "testns"


def build_rootfs(path: Path) -> Path:
    """A directory with static busybox as bin/busybox and a few applet symlinks."""
    (path / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for applet in APPLETS:
        (path / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        (path / d).mkdir(exist_ok=True)
    return path


def base_spec(workdir: Path) -> dict[str, Any]:
    """``runc spec`` output, as a dict."""
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["runc", "spec"], cwd=workdir, check=True)
    spec: dict[str, Any] = json.loads((workdir / "config.json").read_text())
    (workdir / "config.json").unlink()
    return spec


def cgroup_dirs(parent: str) -> list[Path]:
    """Every directory of cgroup ``parent`` in every mounted hierarchy."""
    found = []
    for hierarchy in CGROUP_ROOT.iterdir():
        d = hierarchy / parent.lstrip("/")
        if d.is_dir():
            found.append(d)
    return found


def remove_cgroup(parent: str) -> None:
    """Remove cgroup ``parent`` and its children (deepest first) from every hierarchy."""
    for top in cgroup_dirs(parent):
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _rmdir(d)
        _rmdir(top)


def _rmdir(d: Path) -> None:
    for _ in range(200):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def is_shim(pid: int) -> bool:
    """Whether ``pid`` runs a ctrpy-shim (a zombie no longer does)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = stat.partition(" (")[2].rpartition(") ")
    return name == "ctrpy-shim" and rest[:1] not in ("Z", "X")


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Published:
    """One Forward call the fake manager received (the envelope's fields)."""

    namespace: str
    topic: str
    type_url: str
    value: bytes
    exit_file: files.ExitInfo | None = None  # the bundle's exit file when a TaskExit arrived
    timestamp_ns: int = 0  # the envelope's: when the shim queued the event
    metadata_namespace: str = ""  # the call's containerd-namespace-ttrpc metadata

    def decode(self) -> Message:
        name = self.type_url.rsplit(".", 1)[-1]
        message: Message = getattr(task_events, name)()
        message.ParseFromString(self.value)
        return message


class FakeManager:
    """A ctrpyd stand-in serving ttrpc Events/Forward on ``socket_path``; it can fail the first
    ``fail_first`` calls (with Unavailable, as a ctrpyd that is not ready would)."""

    def __init__(self, socket_path: Path, bundle_of: Callable[[str], Path], fail_first: int = 0) -> None:
        self.socket_path = socket_path
        self.bundle_of = bundle_of
        self.fail_first = fail_first
        self.failed = 0
        self.events: list[Published] = []
        self._changed = asyncio.Event()
        self._server: ttrpc.Server | None = None

    async def start(self) -> None:
        self._server = ttrpc.Server()
        self._server.register(
            "containerd.services.events.ttrpc.v1.Events",
            {"Forward": ttrpc.Method(events_pb2.ForwardRequest, self.forward)},
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.socket_path))
        sock.listen(64)
        await self._server.start(sock)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
            self.socket_path.unlink(missing_ok=True)

    async def forward(self, request: events_pb2.ForwardRequest, context: ttrpc.Context) -> empty_pb2.Empty:
        if self.failed < self.fail_first:
            self.failed += 1
            raise Unavailable("manager not ready")
        envelope = request.envelope
        published = Published(
            envelope.namespace,
            envelope.topic,
            envelope.event.type_url,
            envelope.event.value,
            timestamp_ns=envelope.timestamp.ToNanoseconds(),
            metadata_namespace=(context.metadata.get("containerd-namespace-ttrpc") or [""])[0],
        )
        if published.topic == "/tasks/exit":
            exit_event = published.decode()
            published.exit_file = files.read_exit(self.bundle_of(exit_event.container_id))  # type: ignore[attr-defined]
        self.events.append(published)
        self._changed.set()
        return empty_pb2.Empty()

    def topics(self, container_id: str | None = None) -> list[str]:
        return [
            e.topic
            for e in self.events
            if container_id is None or getattr(e.decode(), "container_id", None) == container_id
        ]

    async def wait_for(
        self,
        topic: str,
        container_id: str,
        *,
        match: Callable[[Any], bool] | None = None,
        timeout: float = 60.0,
    ) -> Published:
        """The first event with ``topic`` for ``container_id`` (and ``match``), waiting for it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for e in self.events:
                decoded = e.decode()
                ours = e.topic == topic and getattr(decoded, "container_id", None) == container_id
                if ours and (match is None or match(decoded)):
                    return e
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no {topic} for {container_id}; got {self.topics()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass


@dataclass
class Task:
    """A bundle, its shim and the test's ends of its FIFOs."""

    env: Env
    id: str
    bundle: Bundle
    client: ShimClient | None = None
    fifos: dict[str, Path] = field(default_factory=dict)
    readers: dict[str, int] = field(default_factory=dict)
    stdin_fd: int = -1

    @property
    def shim_pid(self) -> int | None:
        return self.bundle.shim_pid()

    @property
    def shim(self) -> ShimClient:
        assert self.client is not None
        return self.client

    def stdio(self, *, stdin: bool = False, terminal: bool = False, prefix: str = "") -> Stdio:
        """Make FIFOs (test holds stdin's write end and the outputs' read ends)."""
        names = ["stdin"] if stdin else []
        names += ["stdout"] if terminal else ["stdout", "stderr"]
        for name in names:
            path = self.env.fifo_dir / f"{self.id}-{prefix}{name}"
            os.mkfifo(path, 0o600)
            self.fifos[prefix + name] = path
            if name == "stdin":
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
                if not prefix:
                    self.stdin_fd = fd
                self.readers[prefix + name] = fd
            else:
                self.readers[prefix + name] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        return Stdio(
            stdin=str(self.fifos.get(prefix + "stdin", "")),
            stdout=str(self.fifos.get(prefix + "stdout", "")),
            stderr=str(self.fifos.get(prefix + "stderr", "")),
            terminal=terminal,
        )

    def write_stdin(self, data: bytes, name: str = "stdin") -> None:
        os.write(self.readers[name], data)

    def output(self, name: str = "stdout") -> bytes:
        """Everything buffered in an output FIFO right now."""
        fd = self.readers[name]
        chunks = []
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    async def create(self, stdio: Stdio | None = None) -> int:
        rootfs = [Mount("bind", str(self.env.rootfs), options=("rbind", "rw"))]
        return await self.shim.create(self.bundle.path, rootfs, stdio or Stdio())

    def cleanup(self) -> None:
        pid = self.shim_pid
        if pid and is_shim(pid):
            kill_pid(pid)
        subprocess.run(
            ["runc", "--root", str(self.env.runtime_root), "delete", "--force", self.id],
            capture_output=True,
            check=False,
        )
        if self.bundle.path.exists():
            unmount_recursive(self.bundle.path)
            if not mountpoints_under(self.bundle.path):
                shutil.rmtree(self.bundle.path, ignore_errors=True)
        for fd in self.readers.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.readers.clear()


class Env:
    """One test's world: state dir, fake manager, launcher, cgroup parent, tasks."""

    def __init__(
        self,
        state: Path,
        fifo_dir: Path,
        rootfs: Path,
        spec: dict[str, Any],
        *,
        use_template: bool = True,
        fail_first: int = 0,
    ) -> None:
        self.state = state
        self.fifo_dir = fifo_dir
        self.rootfs = rootfs
        self.spec = spec
        self.cgroup_parent = f"/ctrpy-test-{secrets.token_hex(4)}"
        self.manager = FakeManager(state / "m.sock", self.bundle_path, fail_first)
        self.launcher = ShimLauncher(state, str(state / "m.sock"), use_template=use_template)
        self.tasks: list[Task] = []

    @property
    def runtime_root(self) -> Path:
        return self.state / "runc" / NAMESPACE

    def bundle_path(self, container_id: str) -> Path:
        return Bundle.at(self.state, NAMESPACE, container_id).path

    async def __aenter__(self) -> Env:
        await self.manager.start()
        await self.launcher.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self.tasks:
            if task.client is not None:
                await task.client.close()
            task.cleanup()
        self.tasks.clear()
        await self.launcher.close()
        await self.manager.stop()
        remove_cgroup(self.cgroup_parent)

    def make_spec(
        self,
        container_id: str,
        args: Sequence[str],
        *,
        terminal: bool = False,
        memory_limit: int | None = None,
        oom_score_adj: int | None = None,
    ) -> dict[str, Any]:
        spec = copy.deepcopy(self.spec)
        spec["process"]["args"] = list(args)
        spec["process"]["terminal"] = terminal
        if oom_score_adj is not None:
            spec["process"]["oomScoreAdj"] = oom_score_adj
        spec["root"] = {"path": "rootfs", "readonly": True}
        spec["linux"]["cgroupsPath"] = f"{self.cgroup_parent}/{container_id}"
        if memory_limit is not None:
            spec["linux"].setdefault("resources", {})["memory"] = {
                "limit": memory_limit,
                "swap": memory_limit,
            }
        return spec

    async def task(
        self, container_id: str, args: Sequence[str], *, start_shim: bool = True, **spec_options: Any
    ) -> Task:
        """A bundle for ``args`` and (by default) a shim serving it."""
        spec = self.make_spec(container_id, args, **spec_options)
        bundle = Bundle.create(self.state, NAMESPACE, container_id, json.dumps(spec).encode())
        task = Task(self, container_id, bundle)
        self.tasks.append(task)
        if start_shim:
            task.client = await self.launcher.start_shim(bundle)
        return task

    async def run(
        self, container_id: str, args: Sequence[str], **spec_options: Any
    ) -> tuple[int, bytes, bytes]:
        """Create, start, wait and delete a task; returns (exit status, stdout, stderr)."""
        task = await self.task(container_id, args, **spec_options)
        await task.create(task.stdio())
        waiter = asyncio.ensure_future(task.shim.wait())
        await task.shim.start()
        status = (await waiter).exit_status
        out, err = task.output("stdout"), task.output("stderr")
        await task.shim.delete()
        await task.shim.shutdown()
        return status, out, err

    async def run_and_remove(self, container_id: str, args: Sequence[str]) -> int:
        """:meth:`run`, then wait for the shim to exit and remove the bundle (ctrpyd's part)."""
        status, _, _ = await self.run(container_id, args)
        task = self.tasks.pop()
        shim_pid = task.shim_pid
        assert task.client is not None
        await task.client.close()
        for _ in range(1000):
            if not shim_pid or not is_shim(shim_pid):
                break
            await asyncio.sleep(0.01)
        task.bundle.remove()
        for fd in task.readers.values():
            os.close(fd)
        for path in task.fifos.values():
            path.unlink()
        return status
