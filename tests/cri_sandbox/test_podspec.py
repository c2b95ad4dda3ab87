"""The pause container's spec and the pod's files, without a daemon."""

from __future__ import annotations

from pathlib import Path

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager.cri import podspec
from tests.cri_sandbox.support import pod_config

PAUSE_CONFIG = {"config": {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/",
                           "Env": ["PATH=/usr/bin:/bin"]}}


def _spec(config: api.PodSandboxConfig, **kwargs: str) -> dict:  # type: ignore[type-arg]
    values = {"netns": "/run/x/netns/cni-1", "shm": "/run/x/shm", **kwargs}
    return podspec.sandbox_spec("abc", config, PAUSE_CONFIG, namespace="k8s.io", image="pause:1",
                                netns=values["netns"], files={"resolv.conf": "/r/resolv.conf"}, shm=values["shm"])


def test_default_pod() -> None:
    spec = _spec(pod_config("p", hostname="h1", cgroup_parent="kubepods/pod1"))
    assert spec["process"]["args"] == ["/pause"]
    assert spec["process"]["user"] == {"uid": 65535, "gid": 65535}
    assert spec["process"]["oomScoreAdj"] == 0
    assert spec["hostname"] == "h1"
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod1/abc"
    namespaces = {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}
    assert namespaces == {"pid": None, "ipc": None, "uts": None, "mount": None, "network": "/run/x/netns/cni-1"}
    mounts = {m["destination"]: m["source"] for m in spec["mounts"]}
    assert mounts["/dev/shm"] == "/run/x/shm" and mounts["/etc/resolv.conf"] == "/r/resolv.conf"
    assert "/run" not in mounts
    assert spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-id"] == "abc"
    assert spec["linux"]["resources"]["cpu"] == {"shares": 2}
    # As containerd's sandboxContainerSpec: read-only root, no rlimits, deny-all device cgroup.
    assert spec["root"]["readonly"] is True
    assert "rlimits" not in spec["process"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_host_namespaces_and_run_as_and_resources() -> None:
    config = pod_config("p", host_network=True)
    options = config.linux.security_context.namespace_options
    options.pid = api.NODE
    options.ipc = api.NODE
    config.linux.security_context.run_as_user.value = 7
    config.linux.resources.cpu_quota = 50000
    config.linux.resources.memory_limit_in_bytes = 1 << 20
    spec = _spec(config, netns="")
    assert {n["type"] for n in spec["linux"]["namespaces"]} == {"mount"}
    assert "hostname" not in spec  # the host's UTS namespace keeps the host's name
    assert spec["process"]["user"] == {"uid": 7, "gid": 0}
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert shm["source"] == "/dev/shm"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-cpu-quota"] == "50000"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-memory"] == str(1 << 20)


def test_files(tmp_path: Path) -> None:
    dns = api.DNSConfig(servers=["1.2.3.4", "5.6.7.8"], searches=["a.b"], options=["ndots:2", "edns0"])
    paths = podspec.write_files(str(tmp_path), pod_config("p", hostname="h2", dns=dns))
    assert Path(paths["hostname"]).read_text() == "h2\n"
    assert Path(paths["resolv.conf"]).read_text() == (
        "search a.b\nnameserver 1.2.3.4\nnameserver 5.6.7.8\noptions ndots:2 edns0\n")
    assert podspec.resolv_content(api.DNSConfig()) is None  # empty: the host's file is copied
