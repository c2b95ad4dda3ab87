"""What the CRI spec tests share: a root filesystem with users and groups, a sandbox, facts.

The users and groups mirror those critest's images have (www-data 33, a user 1000 whose
/etc/group membership gives it group 50000, nobody) so that the unit and end-to-end tests
resolve the same names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager.cri.containerspec import HostFacts, ImageInfo, SandboxInfo
from ctrpy.manager.cri.security import ALL_CAPABILITIES

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "www-data:x:33:33:www-data:/var/www:/bin/sh\n"
    "alice:x:1000:1000:alice:/home/alice:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = (
    "root:x:0:\n"
    "www-data:x:33:\n"
    "alice:x:1000:alice\n"
    "staff:x:50:root\n"
    "extra:x:50000:alice,www-data\n"
    "nogroup:x:65534:\n"
)

FACTS = HostFacts(hostname="node-1", cgroup_v2=False, hugetlb=True, swap=True, rro=True,
                  capabilities=ALL_CAPABILITIES)


def make_rootfs(path: Path) -> Path:
    """A root filesystem with /etc/passwd and /etc/group (and /data with a file, for volumes)."""
    (path / "etc").mkdir(parents=True, exist_ok=True)
    (path / "etc" / "passwd").write_text(PASSWD)
    (path / "etc" / "group").write_text(GROUP)
    (path / "data").mkdir(exist_ok=True)
    (path / "data" / "seed.txt").write_text("from the image\n")
    return path


def pod_config(**linux: Any) -> api.PodSandboxConfig:
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="pod", namespace="ns", uid="uid-1", attempt=0),
        hostname="pod-host",
    )
    for key, value in linux.items():
        if key == "privileged":
            config.linux.security_context.privileged = value
        elif key == "cgroup_parent":
            config.linux.cgroup_parent = value
        elif key in ("network", "pid", "ipc"):
            setattr(config.linux.security_context.namespace_options, key, value)
        else:
            raise TypeError(key)
    return config


def sandbox_files(directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, content in (("hostname", "pod-host\n"), ("hosts", "127.0.0.1 localhost\n"),
                          ("resolv.conf", "nameserver 127.0.0.53\n")):
        (directory / name).write_text(content)
        files[name] = str(directory / name)
    return files


def sandbox(tmp: Path, pause_pid: int | None = None, netns: str = "/run/netns/cni-test", **linux: Any) -> SandboxInfo:
    shm = tmp / "shm"
    shm.mkdir(parents=True, exist_ok=True)
    return SandboxInfo(id="sandbox-1", config=pod_config(**linux), pid=os.getpid() if pause_pid is None else pause_pid,
                       netns=netns, files=sandbox_files(tmp / "files"), shm=str(shm))


def image(**config: Any) -> ImageInfo:
    run: dict[str, Any] = {"Env": ["PATH=/usr/bin:/bin", "FROM_IMAGE=1"], "Cmd": ["sh"]}
    run.update(config)
    return ImageInfo("docker.io/library/busybox:latest", {"config": run})


def container(*args: str, **fields: Any) -> api.ContainerConfig:
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name="c1"), args=list(args), **fields)
    return config
