"""What the CRI container tests share: a pod daemon with a busybox image in ``k8s.io``, and
helpers to make pods and containers through the generated CRI client."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri import CriClient
from ctrpy.manager import failpoints
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.cri_sandbox.support import PodDaemon

IMAGE = "docker.io/library/busybox:cri-container"


def import_busybox(daemon: PodDaemon, work: Path, name: str = IMAGE) -> None:
    """Build the busybox test image and import it into ``k8s.io`` with the stock ctr."""
    tar = work / "busybox.tar"
    write_oci_layout_tar(busybox_image(name), tar)
    result = daemon.ctr("images", "import", str(tar), namespace="k8s.io")
    assert result.returncode == 0, result.stderr


@contextmanager
def busybox_daemon(work: Path, configure: Callable[[PodDaemon], None] | None = None) -> Iterator[PodDaemon]:
    """A started ctrpyd with the busybox image in ``k8s.io`` (``configure`` edits it before the
    start), reaped however the block ends: the one body behind every fixture that needs one."""
    daemon = PodDaemon()
    try:
        if configure is not None:
            configure(daemon)
        daemon.start()
        import_busybox(daemon, work)
        yield daemon
    finally:
        daemon.reap()


@dataclass
class Pod:
    """A pod made for a test, with its log directory."""

    daemon: PodDaemon
    id: str
    config: api.PodSandboxConfig
    log_dir: Path
    made: list[str] = field(default_factory=list)

    def cri(self) -> CriClient:
        return self.daemon.cri()

    def container_config(self, name: str, *args: str, tty: bool = False, labels: dict[str, str] | None = None,
                         image: str = IMAGE, **linux: object) -> api.ContainerConfig:
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=image), command=list(args),
            log_path=f"{name}.log", tty=tty, labels=labels or {}, annotations={"note": name},
        )  # fmt: skip
        if linux:
            config.linux.resources.CopyFrom(api.LinuxContainerResources(**linux))  # type: ignore[arg-type]
        return config

    def create(self, config: api.ContainerConfig) -> str:
        with self.cri() as c:
            response = c.call(c.runtime.CreateContainer, api.CreateContainerRequest(
                pod_sandbox_id=self.id, config=config, sandbox_config=self.config))
        self.made.append(response.container_id)
        return response.container_id

    def run(self, name: str, *args: str, **kwargs: object) -> str:
        """Create and start a container; its id."""
        container_id = self.create(self.container_config(name, *args, **kwargs))  # type: ignore[arg-type]
        self.start(container_id)
        return container_id

    def start(self, container_id: str) -> None:
        with self.cri() as c:
            c.call(c.runtime.StartContainer, api.StartContainerRequest(container_id=container_id))

    def stop(self, container_id: str, timeout: int = 0) -> None:
        with self.cri() as c:
            c.call(c.runtime.StopContainer, api.StopContainerRequest(container_id=container_id, timeout=timeout))

    def remove(self, container_id: str) -> None:
        with self.cri() as c:
            c.call(c.runtime.RemoveContainer, api.RemoveContainerRequest(container_id=container_id))

    def status(self, container_id: str, verbose: bool = False) -> api.ContainerStatusResponse:
        with self.cri() as c:
            return c.call(c.runtime.ContainerStatus,
                          api.ContainerStatusRequest(container_id=container_id, verbose=verbose))

    def state(self, container_id: str) -> int:
        return self.status(container_id).status.state

    def exited(self, container_id: str) -> api.ContainerStatus | None:
        status = self.status(container_id).status
        return status if status.state == api.CONTAINER_EXITED else None

    def list(self, wanted: api.ContainerFilter | None = None) -> list[api.Container]:
        with self.cri() as c:
            return list(c.call(c.runtime.ListContainers, api.ListContainersRequest(filter=wanted)).containers)

    def exec_sync(self, container_id: str, *cmd: str, timeout: int = 0,
                  call_timeout: float | None = None) -> api.ExecSyncResponse:
        with self.cri() as c:
            return c.call(c.runtime.ExecSync, api.ExecSyncRequest(container_id=container_id, cmd=list(cmd),
                                                                  timeout=timeout), timeout=call_timeout)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def cleanup(self) -> None:
        for container_id in self.made:
            self.remove(container_id)
        self.daemon.stop_pod(self.id)
        self.daemon.remove_pod(self.id)


def make_pod(daemon: PodDaemon, work: Path, name: str = "") -> Pod:
    name = name or f"pod-{secrets.token_hex(3)}"
    config = daemon.pod(name)
    log_dir = work / "logs" / name
    config.log_directory = str(log_dir)
    return Pod(daemon, daemon.run(config), config, log_dir)


def log_lines(text: str) -> list[str]:
    """The content of each CRI log record (``<time> <stream> <P|F> <content>``)."""
    return [line.split(" ", 3)[3] if line.count(" ") >= 3 else "" for line in text.splitlines()]


def crash_in_create(daemon: PodDaemon, work: Path, name: str) -> tuple[Pod, api.ContainerConfig]:
    """Start ``daemon`` (not started yet) to die in CreateContainer once the snapshot is made,
    make a pod and create container ``name`` in it: ctrpyd is killed there. The pod, and the
    container's config for a create after the restart."""
    point = failpoints.CRI_CONTAINER_CREATE_AFTER_SNAPSHOT
    daemon.failpoints = point
    daemon.start()
    import_busybox(daemon, work)
    pod = make_pod(daemon, work)
    config = pod.container_config(name, "sleep", "600")
    with pytest.raises(errors.CtrpyError):
        pod.create(config)
    pod.made.clear()
    daemon.died(point)
    daemon.failpoints = ""
    return pod, config


def assert_only_the_pod_left(daemon: PodDaemon, pod: Pod) -> None:
    """No CRI container, and of ``k8s.io``'s containers and active snapshots only the pod's."""
    assert pod.list() == []
    assert daemon.ctr("containers", "ls", "-q", namespace="k8s.io").stdout.split() == [pod.id]
    active = [line.split()[0] for line in daemon.ctr("snapshots", "ls", namespace="k8s.io").stdout.splitlines()
              if "Active" in line]
    assert active == [pod.id]
