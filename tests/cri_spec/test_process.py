"""The process part of a CRI container's spec: args, env, working dir, tty, user and groups,
namespaces, resources, cgroups path and annotations (no kernel needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import FailedPrecondition, InvalidArgument, NotFound
from ctrpy.manager.cri.containerspec import container_args, container_spec
from tests.cri_spec.support import FACTS, container, image, make_rootfs, sandbox


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


def build(tmp_path: Path, rootfs: Path, config: api.ContainerConfig, img: Any = None, **kwargs: Any) -> dict[str, Any]:
    box = kwargs.pop("box", None) or sandbox(tmp_path / "sandbox")
    return container_spec("ctr-1", config, box, img or image(), str(rootfs), facts=FACTS, **kwargs)


@pytest.mark.parametrize(("command", "args", "entrypoint", "cmd", "expected"), [
    ([], [], ["/ep"], ["c1", "c2"], ["/ep", "c1", "c2"]),
    ([], ["a1"], ["/ep"], ["c1"], ["/ep", "a1"]),
    (["/cmd"], [], ["/ep"], ["c1"], ["/cmd"]),
    (["/cmd"], ["a1"], ["/ep"], ["c1"], ["/cmd", "a1"]),
    ([], [], [""], ["c1"], ["c1"]),
    ([], [], [], ["c1"], ["c1"]),
    ([], ["a1"], [], ["c1"], ["a1"]),
])  # fmt: skip
def test_args_follow_kubelets_override_rules(command: list[str], args: list[str], entrypoint: list[str],
                                             cmd: list[str], expected: list[str]) -> None:
    config = api.ContainerConfig(command=command, args=args)
    assert container_args(config, image(Entrypoint=entrypoint, Cmd=cmd)) == expected


def test_no_command_at_all_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no command specified"):
        container_args(api.ContainerConfig(), image(Cmd=None))


def test_env_image_then_config_with_hostname_and_term(tmp_path: Path, rootfs: Path) -> None:
    config = container(envs=[api.KeyValue(key="FROM_IMAGE", value=b"2"), api.KeyValue(key="NEW", value=b"x=y")],
                       tty=True)
    process = build(tmp_path, rootfs, config)["process"]
    assert process["env"] == ["PATH=/usr/bin:/bin", "TERM=xterm", "HOSTNAME=pod-host", "FROM_IMAGE=2", "NEW=x=y"]
    assert process["terminal"] is True
    assert process["args"] == ["sh"]


def test_env_default_path_and_node_hostname(tmp_path: Path, rootfs: Path) -> None:
    box = sandbox(tmp_path / "sb")
    box.config.hostname = ""
    process = build(tmp_path, rootfs, container(), image(Env=None), box=box)["process"]
    assert process["env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "HOSTNAME=node-1"]
    assert "terminal" not in process


@pytest.mark.parametrize(("config_dir", "image_dir", "expected"), [
    ("/work", "/img", "/work"), ("", "/img", "/img"), ("", "", "/")])  # fmt: skip
def test_working_dir(tmp_path: Path, rootfs: Path, config_dir: str, image_dir: str, expected: str) -> None:
    spec = build(tmp_path, rootfs, container(working_dir=config_dir), image(WorkingDir=image_dir))
    assert spec["process"]["cwd"] == expected


def test_defaults_without_security_context(tmp_path: Path, rootfs: Path) -> None:
    spec = build(tmp_path, rootfs, container())
    process, linux = spec["process"], spec["linux"]
    assert process["user"] == {"uid": 0, "gid": 0, "additionalGids": [0, 50]}
    assert process["noNewPrivileges"] is False
    assert "rlimits" not in process
    assert len(process["capabilities"]["bounding"]) == 14
    assert "seccomp" not in linux
    assert "/run" not in [m["destination"] for m in spec["mounts"]]
    assert linux["maskedPaths"][0] == "/proc/acpi" and "/proc/sys" in linux["readonlyPaths"]
    assert "readonly" not in spec["root"]
    assert "oomScoreAdj" not in process


def security(**fields: Any) -> api.ContainerConfig:
    config = container()
    context = config.linux.security_context
    for key, value in fields.items():
        if key in ("run_as_user", "run_as_group"):
            getattr(context, key).value = value
        elif key == "supplemental_groups":
            context.supplemental_groups.extend(value)
        else:
            setattr(context, key, value)
    return config


@pytest.mark.parametrize(("fields", "image_user", "expected"), [
    ({"run_as_user": 1000}, "", (1000, 1000, [1000, 50000])),
    ({"run_as_user": 1000, "run_as_group": 7}, "", (1000, 7, [7, 50000])),
    ({"run_as_user": 4242}, "", (4242, 0, [0])),
    ({"run_as_username": "www-data"}, "", (33, 33, [33, 50000])),
    ({"run_as_username": "www-data", "run_as_group": 1000}, "", (33, 1000, [1000, 50000])),
    ({}, "www-data", (33, 33, [33, 50000])),
    ({}, "1003:1004", (1003, 1004, [1004])),
    ({}, "www-data:1004", (33, 1004, [1004, 50000])),
    ({}, "alice:extra", (1000, 50000, [50000])),
    ({"run_as_user": 0}, "www-data", (0, 0, [0, 50])),
    ({"run_as_user": 1000, "supplemental_groups": [5, 50000, 6]}, "", (1000, 1000, [1000, 50000, 5, 6])),
    ({"run_as_user": 1000, "supplemental_groups": [5], "supplemental_groups_policy": api.Strict}, "",
     (1000, 1000, [1000, 5])),
])  # fmt: skip
def test_user_and_groups_from_the_containers_own_files(tmp_path: Path, rootfs: Path, fields: dict[str, Any],
                                                       image_user: str, expected: tuple[int, int, list[int]]) -> None:
    spec = build(tmp_path, rootfs, security(**fields), image(User=image_user))
    user = spec["process"]["user"]
    assert (user["uid"], user["gid"], user["additionalGids"]) == expected


def test_unknown_user_name_is_not_found(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(NotFound):
        build(tmp_path, rootfs, security(run_as_username="mallory"))
    with pytest.raises(NotFound):
        build(tmp_path, rootfs, container(), image(User="www-data:nogroup-here"))


def test_group_without_user_is_refused(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="without user"):
        build(tmp_path, rootfs, security(run_as_group=5))


def test_host_passwd_is_never_read(tmp_path: Path) -> None:
    empty = tmp_path / "empty-root"
    empty.mkdir()
    with pytest.raises(NotFound):
        build(tmp_path, empty, security(run_as_username="root"))
    spec = build(tmp_path, empty, security(run_as_user=5))
    assert spec["process"]["user"] == {"uid": 5, "gid": 0, "additionalGids": [0]}


def test_namespaces_join_the_pod(tmp_path: Path, rootfs: Path) -> None:
    box = sandbox(tmp_path / "sb", pause_pid=4321)
    spec = build(tmp_path, rootfs, container(), box=box)
    assert spec["linux"]["namespaces"] == [  # in containerd's order
        {"type": "pid", "path": "/proc/4321/ns/pid"},
        {"type": "ipc", "path": "/proc/4321/ns/ipc"},
        {"type": "uts", "path": "/proc/4321/ns/uts"},
        {"type": "mount"},
        {"type": "network", "path": "/run/netns/cni-test"},
    ]
    assert "hostname" not in spec


def test_host_namespaces_are_left_out(tmp_path: Path, rootfs: Path) -> None:
    box = sandbox(tmp_path / "sb", pause_pid=4321, netns="", network=api.NODE, ipc=api.NODE, pid=api.NODE)
    config = container()
    config.linux.security_context.namespace_options.pid = api.NODE
    config.linux.security_context.namespace_options.ipc = api.NODE
    spec = build(tmp_path, rootfs, config, box=box)
    assert spec["linux"]["namespaces"] == [{"type": "mount"}]
    shm = [m for m in spec["mounts"] if m["destination"] == "/dev/shm"]
    assert shm[0]["source"] == "/dev/shm"


def test_container_and_target_pid_namespaces(tmp_path: Path, rootfs: Path) -> None:
    config = container()
    options = config.linux.security_context.namespace_options
    options.pid = api.CONTAINER
    spec = build(tmp_path, rootfs, config)
    assert {"type": "pid"} in spec["linux"]["namespaces"]
    options.pid = api.TARGET
    options.target_id = "other"
    with pytest.raises(FailedPrecondition):
        build(tmp_path, rootfs, config)
    spec = build(tmp_path, rootfs, config, target_pid=999)
    assert {"type": "pid", "path": "/proc/999/ns/pid"} in spec["linux"]["namespaces"]


def test_user_namespace_is_the_pods(tmp_path: Path, rootfs: Path) -> None:
    """A container joins its pod's user namespace with the pod's mappings; a user namespace
    option other than the pod's is refused, not ignored."""
    config = container()
    config.linux.security_context.namespace_options.userns_options.mode = api.POD
    with pytest.raises(InvalidArgument):  # POD without mappings, in a pod without a namespace
        build(tmp_path, rootfs, config)
    config.linux.security_context.namespace_options.userns_options.mode = api.NODE
    spec = build(tmp_path, rootfs, config)
    assert "user" not in [n["type"] for n in spec["linux"]["namespaces"]]

    box = sandbox(tmp_path / "userns-sandbox", pause_pid=4242)
    mapping = api.IDMapping(container_id=0, host_id=100000, length=65536)
    box.config.linux.security_context.namespace_options.userns_options.CopyFrom(
        api.UserNamespace(mode=api.POD, uids=[mapping], gids=[mapping]))
    with pytest.raises(InvalidArgument, match="differs from the sandbox"):
        build(tmp_path, rootfs, config, box=box)  # NODE in a pod with a user namespace
    config.linux.security_context.namespace_options.ClearField("userns_options")
    spec = build(tmp_path, rootfs, config, box=box)
    assert spec["linux"]["namespaces"][0] == {"type": "user", "path": "/proc/4242/ns/user"}
    assert spec["linux"]["uidMappings"] == spec["linux"]["gidMappings"] == [
        {"containerID": 0, "hostID": 100000, "size": 65536}]


def test_resources(tmp_path: Path, rootfs: Path) -> None:
    config = container()
    resources = config.linux.resources
    resources.cpu_period, resources.cpu_quota, resources.cpu_shares = 100000, 50000, 512
    resources.cpuset_cpus, resources.cpuset_mems = "0", "0"
    resources.memory_limit_in_bytes = 64 << 20
    resources.oom_score_adj = -997
    resources.hugepage_limits.add(page_size="2MB", limit=4 << 20)
    resources.unified["memory.high"] = "max"
    spec = build(tmp_path, rootfs, config)
    out = spec["linux"]["resources"]
    assert out["cpu"] == {"period": 100000, "quota": 50000, "shares": 512, "cpus": "0", "mems": "0"}
    assert out["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    assert out["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]
    assert "unified" not in out  # cgroup v1 in FACTS
    assert spec["process"]["oomScoreAdj"] == 0
    resources.memory_swap_limit_in_bytes = 128 << 20
    resources.oom_score_adj = 999
    spec = container_spec("ctr-1", config, sandbox(tmp_path / "sb"), image(), str(rootfs),
                          facts=FACTS.__class__(**{**FACTS.__dict__, "hugetlb": False, "cgroup_v2": True}))
    out = spec["linux"]["resources"]
    assert out["memory"]["swap"] == 128 << 20 and "hugepageLimits" not in out
    assert out["unified"] == {"memory.high": "max"}
    assert spec["process"]["oomScoreAdj"] == 999
    assert {"type": "cgroup"} in spec["linux"]["namespaces"]


def test_cgroups_path_and_annotations(tmp_path: Path, rootfs: Path) -> None:
    box = sandbox(tmp_path / "sb", cgroup_parent="kubepods/pod-uid")
    spec = build(tmp_path, rootfs, container(), box=box)
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod-uid/ctr-1"
    assert spec["annotations"] == {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "sandbox-1",
        "io.kubernetes.cri.sandbox-namespace": "ns",
        "io.kubernetes.cri.sandbox-uid": "uid-1",
        "io.kubernetes.cri.sandbox-name": "pod",
        "io.kubernetes.cri.container-name": "c1",
        "io.kubernetes.cri.image-name": "docker.io/library/busybox:latest",
    }
    assert build(tmp_path, rootfs, container())["linux"]["cgroupsPath"] == "/k8s.io/ctr-1"
    assert "sysctl" not in spec["linux"]


def test_sandbox_without_pause_process_is_a_precondition_failure(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(FailedPrecondition):
        build(tmp_path, rootfs, container(), box=sandbox(tmp_path / "sb", pause_pid=0))
    assert os.getpid() > 0


def test_stop_signal() -> None:
    from ctrpy.manager.cri.containerspec import stop_signal

    assert stop_signal(api.ContainerConfig(), image()) == "SIGTERM"
    assert stop_signal(api.ContainerConfig(), image(StopSignal="SIGQUIT")) == "SIGQUIT"
    assert stop_signal(api.ContainerConfig(stop_signal=api.SIGUSR1), image(StopSignal="SIGQUIT")) == "SIGUSR1"
