"""OCI runtime specs and the raw Tasks/Containers calls a Python client makes to run them.

:func:`runtime_spec` is the default spec ``ctr`` generates (capabilities, masked paths, the usual
mounts and namespaces), for a process and a cgroup path of the caller's choosing.
:class:`Runner` drives one container's whole life through the API (what ``ctr run --rm`` does),
so that tests can run containers without ctr and break the spec on the way.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import Any

from google.protobuf import any_pb2

from ctrpy import errors
from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from ctrpy.client import Client

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNTIME = "io.containerd.runc.v2"
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]


def _mount(destination: str, kind: str, source: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": source, "options": list(options)}


def runtime_spec(args: Sequence[str], cgroups_path: str, mounts: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """ctr's default spec running ``args``, in ``cgroups_path``, with ``mounts`` added last."""
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {key: CAPABILITIES for key in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "mounts": [
            _mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
            _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
            _mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666",
                   "mode=0620", "gid=5"),
            _mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
            _mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
            *mounts,
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def spec_any(spec: dict[str, Any] | bytes) -> any_pb2.Any:
    value = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
    return any_pb2.Any(type_url=SPEC_URL, value=value)


class Runner:
    """One container through the API: snapshot, container record, task; undone by :meth:`remove`.

    ``client`` must be in the namespace to use; ``snapshotter`` and ``parent`` (a committed
    snapshot, e.g. an image's top chain id) give the root filesystem.
    """

    def __init__(self, client: Client, container_id: str, parent: str, snapshotter: str = "overlayfs") -> None:
        self.client, self.id, self.parent, self.snapshotter = client, container_id, parent, snapshotter
        self.mounts: list[Any] = []

    def create_container(self, spec: dict[str, Any] | bytes | None) -> None:
        """Prepare the rootfs snapshot and create the container record with ``spec``."""
        c = self.client
        prepared = c.call(c.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=self.id, parent=self.parent))
        self.mounts = list(prepared.mounts)
        container = containers_pb2.Container(
            id=self.id, image="", runtime=containers_pb2.Container.Runtime(name=RUNTIME),
            snapshotter=self.snapshotter, snapshot_key=self.id)
        if spec is not None:
            container.spec.CopyFrom(spec_any(spec))
        c.call(c.containers.Create, containers_pb2.CreateContainerRequest(container=container))

    def set_spec(self, spec: dict[str, Any] | bytes) -> None:
        c = self.client
        container = c.call(c.containers.Get, containers_pb2.GetContainerRequest(id=self.id)).container
        container.spec.CopyFrom(spec_any(spec))
        c.call(c.containers.Update, containers_pb2.UpdateContainerRequest(container=container))

    def create_task(self, stdout: str = "") -> int:
        c = self.client
        request = tasks_pb2.CreateTaskRequest(container_id=self.id, rootfs=self.mounts, stdout=stdout)
        return c.call(c.tasks.Create, request).pid

    def run(self, stdout: str = "") -> int:
        """Create, start and wait for the task, delete it; return its exit status."""
        c = self.client
        self.create_task(stdout)
        c.call(c.tasks.Start, tasks_pb2.StartRequest(container_id=self.id))
        status = c.call(c.tasks.Wait, tasks_pb2.WaitRequest(container_id=self.id)).exit_status
        c.call(c.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=self.id))
        return status

    def remove(self) -> None:
        """Delete the task (killed first), the container and its snapshot; missing ones are fine."""
        c = self.client
        with contextlib.suppress(errors.CtrpyError):
            c.call(c.tasks.Kill, tasks_pb2.KillRequest(container_id=self.id, signal=9, all=True))
            c.call(c.tasks.Wait, tasks_pb2.WaitRequest(container_id=self.id))
        with contextlib.suppress(errors.NotFound):
            c.call(c.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=self.id))
        with contextlib.suppress(errors.NotFound):
            c.call(c.containers.Delete, containers_pb2.DeleteContainerRequest(id=self.id))
        with contextlib.suppress(errors.NotFound):
            c.call(c.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=self.id))


def fifo_free_output(directory: str | os.PathLike[str], name: str) -> str:
    """A regular file the task's stdout is appended to (read it after the task exited)."""
    path = os.path.join(os.fspath(directory), name)
    with open(path, "wb"):
        pass
    return path
