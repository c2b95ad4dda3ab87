"""Spec generation without a daemon: defaults, options, image configs and the JSON layout."""

from __future__ import annotations

import json

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.images import mediatypes
from ctrpy.mount import Mount
from ctrpy.oci import ContainerConfig, build_spec, parse_mount_flag, parse_run_config, replace_or_append_env
from ctrpy.oci.container import readonly_mounts, runtime_options
from ctrpy.oci.defaults import DEFAULT_PATH_ENV, default_spec
from ctrpy.oci.image import RunConfig, stop_signal
from ctrpy.oci.layout import process_json, spec_json
from ctrpy.oci.users import Identity

ROOT = Identity(0, 0, (0,))


def test_replace_or_append_env() -> None:
    assert replace_or_append_env(["A=1", "B=2"], ["B=3", "C=4"]) == ["A=1", "B=3", "C=4"]
    assert replace_or_append_env(["A=1", "B=2"], ["A"]) == ["B=2"]  # a bare name unsets
    assert replace_or_append_env(["A=1"], ["A", "A=5"]) == ["A=5"]
    assert replace_or_append_env([], ["X=1", "X=2", "Y"]) == ["X=1", "X=2"]  # as containerd: appended as they come
    assert replace_or_append_env(["E=a=b"], ["E=c=d"]) == ["E=c=d"]


def test_parse_mount_flag() -> None:
    m = parse_mount_flag("type=bind,src=/a,dst=/b,options=rbind:ro")
    assert m.to_json() == {"destination": "/b", "type": "bind", "source": "/a", "options": ["rbind", "ro"]}
    quoted = parse_mount_flag('type=bind,"source=/with,comma",destination=/c')
    assert quoted.source == "/with,comma"
    for bad, message in (("type=bind,src=/a", "destination"), ("type=bind,dst=/b,what=1", "not supported"),
                         ("type=bind,dst", "expected key=val")):
        with pytest.raises(InvalidArgument, match=message):
            parse_mount_flag(bad)


def test_default_spec_shape() -> None:
    spec = default_spec("ns", "id1")
    assert spec["linux"]["cgroupsPath"] == "/ns/id1"
    assert [ns["type"] for ns in spec["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert len(spec["process"]["capabilities"]["bounding"]) == 14
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/run"]


def _build(config: ContainerConfig, run: RunConfig | None = None, who: Identity = ROOT) -> dict:  # type: ignore[type-arg]
    return build_spec("ns", config, run or RunConfig(env=(DEFAULT_PATH_ENV,), cmd=("sh",)), who)


def test_image_config_then_flags() -> None:
    run = RunConfig(env=("PATH=/bin", "LANG=C"), entrypoint=("/init",), cmd=("serve",), working_dir="/srv")
    spec = _build(ContainerConfig("img", "c1"), run)
    assert spec["process"]["args"] == ["/init", "serve"]
    assert spec["process"]["cwd"] == "/srv"
    assert spec["process"]["env"] == ["PATH=/bin", "LANG=C"]
    spec = _build(ContainerConfig("img", "c1", args=("echo", "hi"), env=("LANG=en", "X=1"), cwd="/tmp", tty=True),
                  run)
    assert spec["process"]["args"] == ["echo", "hi"]  # the entrypoint goes too, as with ctr
    assert spec["process"]["env"] == ["PATH=/bin", "LANG=en", "X=1", "TERM=xterm"]
    assert spec["process"]["cwd"] == "/tmp"
    assert spec["process"]["terminal"] is True


def test_resources_and_host_network() -> None:
    spec = _build(ContainerConfig("img", "c1", memory_limit=1 << 24, cpus=1.5, cpu_shares=1024, net_host=True))
    resources = spec["linux"]["resources"]
    assert resources["memory"] == {"limit": 1 << 24}
    assert resources["cpu"] == {"quota": 150000, "period": 100000, "shares": 1024}
    assert "network" not in [ns["type"] for ns in spec["linux"]["namespaces"]]
    assert [m["destination"] for m in spec["mounts"]][-2:] == ["/etc/hosts", "/etc/resolv.conf"]
    assert spec["process"]["env"][-1].startswith("HOSTNAME=")


def test_user_from_identity() -> None:
    spec = _build(ContainerConfig("img", "c1"), who=Identity(1000, 50, (50, 10)))
    assert spec["process"]["user"] == {"uid": 1000, "gid": 50, "additionalGids": [50, 10]}


def test_json_layout_follows_go_order() -> None:
    spec = _build(ContainerConfig("img", "c1", tty=True, memory_limit=5, cpus=1.0))
    data = json.loads(spec_json(spec))
    assert list(data) == ["ociVersion", "process", "root", "mounts", "linux"]
    assert list(data["process"])[:5] == ["terminal", "user", "args", "env", "cwd"]
    assert list(data["linux"]["resources"]) == ["devices", "memory", "cpu"]
    assert list(data["linux"]["resources"]["devices"][1]) == ["allow", "type", "major", "minor", "access"]
    assert json.loads(process_json(spec["process"])) == spec["process"]


def test_parse_run_config() -> None:
    doc = {"config": {"Env": ["A=1"], "Cmd": ["sh"], "Entrypoint": None, "User": "app", "WorkingDir": "/w",
                      "Labels": {"k": "v"}, "StopSignal": "SIGQUIT"}, "rootfs": {"type": "layers", "diff_ids": []}}
    run = parse_run_config(json.dumps(doc).encode(), mediatypes.OCI_CONFIG)
    assert (run.env, run.cmd, run.entrypoint, run.user, run.working_dir) == (("A=1",), ("sh",), (), "app", "/w")
    assert dict(run.labels) == {"k": "v"}
    assert stop_signal(run) == "SIGQUIT"
    assert stop_signal(parse_run_config(b"{}", mediatypes.DOCKER_CONFIG)) == "SIGTERM"
    with pytest.raises(InvalidArgument, match="unknown image config media type"):
        parse_run_config(b"{}", "application/json")
    with pytest.raises(InvalidArgument, match="Cmd"):
        parse_run_config(b'{"config": {"Cmd": "sh"}}', mediatypes.OCI_CONFIG)


def test_runtime_options() -> None:
    empty = runtime_options(ContainerConfig("img", "c1"))
    assert empty is not None and (empty.type_url, empty.value) == ("containerd.runc.v1.Options", b"")
    assert runtime_options(ContainerConfig("img", "c1", runtime="io.example.other")) is None
    with pytest.raises(InvalidArgument):
        runtime_options(ContainerConfig("img", "c1", runtime="io.example.other", runc_root="/x"))


def test_readonly_mounts() -> None:
    overlay = Mount("overlay", "overlay", "", ("lowerdir=/a", "upperdir=/b", "workdir=/c"))
    assert readonly_mounts([overlay])[0].options[-1] == "ro"
    bind = Mount("bind", "/x", "", ("rw", "rbind"))
    assert readonly_mounts([bind])[0].options == ("rbind", "ro")
