"""CRI container specs run for real: built by ``container_spec``, run by ctrpyd and runc.

One ctrpyd serves the module, with a busybox image whose /etc/passwd and /etc/group know
www-data and alice. A "pause" process made with unshare(1) (new ipc, uts, net and pid
namespaces) stands in for the pod's sandbox. Each test creates a container through the
containerd API with the generated spec (the rootfs snapshot is prepared first and mounted to
resolve users, as CreateContainer will do), runs it to completion and reads what it printed.
Teardown kills what is left by pid, unmounts the test's mounts, removes the cgroups.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.client import Client
from ctrpy.manager.cri.containerspec import ImageInfo, SandboxInfo, container_spec, host_facts
from ctrpy.manager.cri.security import ALL_CAPABILITIES
from ctrpy.oci.container import mounted_snapshot
from ctrpy.oci.defaults import DEFAULT_CAPABILITIES
from ctrpy.oci.layout import SPEC_URL, spec_json
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from ctrpy.testimage.model import Image, Layer, directory, file, symlink
from tests.cri_spec.support import GROUP, PASSWD, pod_config, sandbox_files
from tests.hostile import probes
from tests.support.ctrpyd import Daemon

NAMESPACE = "k8s.io"
SNAPSHOTTER = "overlayfs"
IMAGE = "docker.io/library/busybox:cri-spec"
LIMIT = 120.0


def spec_image() -> Image:
    """busybox plus a layer with the test users, an unshare applet and a few files to mask."""
    base = busybox_image(IMAGE)
    extra = (
        directory("/data"),
        directory("/data/ro"),
        file("/data/secret.txt", b"secret\n"),
        file("/etc/group", GROUP.encode()),
        file("/etc/passwd", PASSWD.encode()),
        directory("/mnt"),
        directory("/mnt/host"),
        symlink("/bin/unshare", "/bin/busybox"),
    )
    return Image(IMAGE, (*base.layers, Layer(extra)))


def capability_mask(names: list[str] | tuple[str, ...]) -> int:
    return sum(1 << ALL_CAPABILITIES.index(n) for n in names)


@dataclass
class Env:
    daemon: Daemon
    client: Client
    chain_id: str
    pause: int
    cgroup: str
    work: Path

    def sandbox(self, **linux: Any) -> SandboxInfo:
        shm = self.work / "shm"
        shm.mkdir(exist_ok=True)
        return SandboxInfo(id="sandbox-e2e", config=pod_config(cgroup_parent=f"/{self.cgroup}", **linux),
                           pid=self.pause, netns="", files=sandbox_files(self.work / "files"), shm=str(shm))


def _child_of(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.02)
    raise RuntimeError("the pause stand-in did not fork")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("cri-spec")
    daemon = Daemon()
    cgroup = f"ctrpy-crispec-{secrets.token_hex(3)}"
    pause = subprocess.Popen(["unshare", "--ipc", "--uts", "--net", "--pid", "--fork", "--kill-child",
                              "/bin/busybox", "sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        daemon.start()
        info = write_oci_layout_tar(spec_image(), work / "image.tar")
        result = daemon.ctr("images", "import", str(work / "image.tar"), namespace=NAMESPACE)
        assert result.returncode == 0, result.stderr
        with daemon.client(NAMESPACE, timeout=LIMIT) as client:
            yield Env(daemon, client, info.chain_ids[-1], _child_of(pause.pid), cgroup, work)
    finally:
        pause.send_signal(signal.SIGKILL)
        pause.wait(timeout=30)
        probes.kill_leftovers(daemon)
        daemon.cleanup()
        probes.remove_cgroups(cgroup)


def run(env: Env, name: str, script: str, config: api.ContainerConfig | None = None,
        box: SandboxInfo | None = None, *, image_user: str = "") -> str:
    """Run ``sh -c script`` in a container made from the generated spec; return its output."""
    c = env.client
    cid = f"{name}-{secrets.token_hex(3)}"
    config = config or api.ContainerConfig()
    config.metadata.name = name
    config.command[:] = ["sh", "-c", script]
    prepared = c.call(c.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
        snapshotter=SNAPSHOTTER, key=cid, parent=env.chain_id))
    output = env.work / f"{cid}.out"
    output.write_bytes(b"")
    try:
        with mounted_snapshot(c, SNAPSHOTTER, cid) as root:
            spec = container_spec(cid, config, box or env.sandbox(), ImageInfo(IMAGE, {"config": {"Cmd": ["sh"], "User": image_user}}),
                                  root, namespace=NAMESPACE)
        container = containers_pb2.Container(
            id=cid, image=IMAGE, runtime=containers_pb2.Container.Runtime(name="io.containerd.runc.v2"),
            snapshotter=SNAPSHOTTER, snapshot_key=cid, spec=any_pb2.Any(type_url=SPEC_URL, value=spec_json(spec)))
        c.call(c.containers.Create, containers_pb2.CreateContainerRequest(container=container))
        c.call(c.tasks.Create, tasks_pb2.CreateTaskRequest(container_id=cid, rootfs=prepared.mounts,
                                                           stdout=str(output), stderr=str(output)))
        c.call(c.tasks.Start, tasks_pb2.StartRequest(container_id=cid))
        c.call(c.tasks.Wait, tasks_pb2.WaitRequest(container_id=cid))
        return output.read_text()
    finally:
        _remove(c, cid)


def _remove(c: Client, cid: str) -> None:
    from ctrpy import errors

    with contextlib.suppress(errors.CtrpyError):
        c.call(c.tasks.Kill, tasks_pb2.KillRequest(container_id=cid, signal=9, all=True))
        c.call(c.tasks.Wait, tasks_pb2.WaitRequest(container_id=cid))
    for call, request in (
        (c.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=cid)),
        (c.containers.Delete, containers_pb2.DeleteContainerRequest(id=cid)),
        (c.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=cid)),
    ):
        with contextlib.suppress(errors.NotFound, errors.FailedPrecondition):
            c.call(call, request)  # type: ignore[arg-type]


def status_fields(output: str) -> dict[str, str]:
    fields = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("CapEff", "CapBnd", "CapPrm", "NoNewPrivs", "Seccomp"):
            fields[key] = value.strip()
    return fields


STATUS = "grep -E '^(Cap(Eff|Bnd|Prm)|NoNewPrivs|Seccomp):' /proc/self/status"


def test_run_as_user_group_and_supplemental_groups(env: Env) -> None:
    config = api.ContainerConfig()
    context = config.linux.security_context
    context.run_as_username = "www-data"
    context.run_as_group.value = 1000
    context.supplemental_groups.extend([4242])
    out = run(env, "user", "id -u; id -g; id -G", config).split("\n")
    assert out[0] == "33" and out[1] == "1000"
    assert sorted(int(g) for g in out[2].split()) == [1000, 4242, 50000]
    context.supplemental_groups_policy = api.Strict
    out = run(env, "strict", "id -G", config).split()
    assert sorted(int(g) for g in out) == [1000, 4242]


def test_default_capabilities_and_no_filter(env: Env) -> None:
    fields = status_fields(run(env, "caps", STATUS))
    default = capability_mask(DEFAULT_CAPABILITIES)
    assert int(fields["CapEff"], 16) == default and int(fields["CapBnd"], 16) == default
    assert fields["NoNewPrivs"] == "0" and fields["Seccomp"] == "0"


def test_capabilities_no_new_privs_and_runtime_default_seccomp(env: Env) -> None:
    config = api.ContainerConfig()
    context = config.linux.security_context
    context.capabilities.drop_capabilities.extend(["ALL"])
    context.capabilities.add_capabilities.extend(["NET_ADMIN", "KILL"])
    context.no_new_privs = True
    context.seccomp.profile_type = api.SecurityProfile.RuntimeDefault
    out = run(env, "seccomp", f"{STATUS}; unshare -U true; echo unshare=$?", config)
    fields = status_fields(out)
    assert int(fields["CapEff"], 16) == capability_mask(["CAP_NET_ADMIN", "CAP_KILL"])
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
    assert "unshare=1" in out and "Operation not permitted" in out
    # The same call without the filter works: it is the profile that refused it.
    control = run(env, "unconfined", "unshare -U true; echo unshare=$?")
    if "unshare=0" not in control:
        pytest.skip(f"this kernel refuses user namespaces in containers anyway: {control.strip()}")


def test_localhost_seccomp_profile(env: Env) -> None:
    profile = env.work / "no-mkdir.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], '
                       '"action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}')
    config = api.ContainerConfig()
    config.linux.security_context.seccomp_profile_path = f"localhost/{profile}"
    out = run(env, "localhost", "mkdir /tmp/d; echo mkdir=$?", config)
    assert "mkdir=1" in out and "Operation not permitted" in out


def test_readonly_rootfs_and_masked_paths(env: Env) -> None:
    config = api.ContainerConfig()
    context = config.linux.security_context
    context.readonly_rootfs = True
    context.masked_paths.extend(["/proc/kcore", "/data/secret.txt"])
    context.readonly_paths.extend(["/data/ro"])
    script = ("touch /x; echo root=$?; cat /data/secret.txt | wc -c; head -c 16 /proc/kcore | wc -c; "
              "touch /dev/shm/ok; echo shm=$?; echo hi > /etc/hosts; echo hosts=$?")
    out = run(env, "readonly", script, config)
    lines = out.split("\n")
    assert "root=1" in out and "Read-only file system" in out
    numbers = [line.strip() for line in lines if line.strip().isdigit()]
    assert numbers == ["0", "0"], out
    assert "shm=0" in out and "hosts=1" in out


def test_privileged_container(env: Env) -> None:
    config = api.ContainerConfig()
    config.linux.security_context.privileged = True
    config.linux.security_context.seccomp.profile_type = api.SecurityProfile.RuntimeDefault
    script = f"{STATUS}; grep ' /sys ' /proc/mounts; ls /dev/loop-control >/dev/null && echo devices=yes"
    out = run(env, "privileged", script, config, env.sandbox(privileged=True))
    fields = status_fields(out)
    assert int(fields["CapEff"], 16) == capability_mask(host_facts().capabilities)
    assert fields["Seccomp"] == "0"
    sysfs = [line for line in out.splitlines() if " /sys " in line]
    assert sysfs and " rw," in sysfs[0]
    if os.path.exists("/dev/loop-control"):
        assert "devices=yes" in out


def test_namespaces_joined_from_the_pod_and_resources(env: Env) -> None:
    config = api.ContainerConfig()
    config.linux.resources.memory_limit_in_bytes = 64 << 20
    config.linux.resources.oom_score_adj = -500
    script = ("for n in ipc uts net pid; do readlink /proc/self/ns/$n; done; cat /proc/self/oom_score_adj; "
              "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max")
    out = run(env, "namespaces", script, config).split()
    expected = [os.readlink(f"/proc/{env.pause}/ns/{n}") for n in ("ipc", "uts", "net", "pid")]
    assert out[:4] == expected
    assert out[4] == "0"  # clamped: this kernel refuses negative values here
    assert int(out[5]) == 64 << 20


@pytest.fixture
def shared_tmpfs(env: Env) -> Iterator[Path]:
    target = env.work / f"prop-{secrets.token_hex(3)}"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ctrpy-crispec", str(target)], check=True)
    subprocess.run(["mount", "--make-shared", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-R", "-l", str(target)], check=False)


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + LIMIT
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _propagation_run(env: Env, host: Path, propagation: int, script: str, **context: Any) -> tuple[Any, Any]:
    import threading

    config = api.ContainerConfig(mounts=[api.Mount(container_path="/mnt/host", host_path=str(host),
                                                   propagation=propagation)])  # type: ignore[arg-type]
    box = env.sandbox(privileged=bool(context.get("privileged")))
    if context.get("privileged"):
        config.linux.security_context.privileged = True
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.setdefault("out", run(env, "prop", script, config, box)))
    thread.start()
    return thread, result


@pytest.mark.parametrize(("propagation", "seen"), [
    (api.PROPAGATION_HOST_TO_CONTAINER, "mounted-after-start"),  # the host's later mount reaches it
    (api.PROPAGATION_PRIVATE, "missing"),  # a private mount does not see it
], ids=["host_to_container", "private"])  # fmt: skip
def test_a_host_mount_made_after_the_start(env: Env, shared_tmpfs: Path, propagation: int, seen: str) -> None:
    (shared_tmpfs / "sub").mkdir()
    script = ("touch /mnt/host/ready; while [ ! -e /mnt/host/go ]; do sleep 0.05; done; "
              "cat /mnt/host/sub/marker 2>/dev/null || echo missing")
    thread, result = _propagation_run(env, shared_tmpfs, propagation, script)
    try:
        _wait_for(shared_tmpfs / "ready")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ctrpy-crispec-sub", str(shared_tmpfs / "sub")],
                       check=True)
        (shared_tmpfs / "sub" / "marker").write_text("mounted-after-start\n")
        (shared_tmpfs / "go").touch()
    finally:
        thread.join(LIMIT)
    assert result.get("out", "").strip() == seen, result


def test_bidirectional_propagation(env: Env, shared_tmpfs: Path) -> None:
    (shared_tmpfs / "sub").mkdir()
    script = ("mount -t tmpfs -o size=1m from-container /mnt/host/sub && echo made > /mnt/host/sub/inside; "
              "touch /mnt/host/ready; while [ ! -e /mnt/host/go ]; do sleep 0.05; done; echo done")
    thread, result = _propagation_run(env, shared_tmpfs, api.PROPAGATION_BIDIRECTIONAL, script, privileged=True)
    try:
        _wait_for(shared_tmpfs / "ready")
        seen = (shared_tmpfs / "sub" / "inside").read_text() if (shared_tmpfs / "sub" / "inside").exists() else ""
        mounted = os.path.ismount(shared_tmpfs / "sub")
        (shared_tmpfs / "go").touch()
    finally:
        thread.join(LIMIT)
    assert result.get("out", "").strip() == "done", result
    assert mounted and seen == "made\n"


def test_image_user_by_name(env: Env) -> None:
    out = run(env, "imageuser", "id -u; id -g; id -G", image_user="alice").split("\n")
    assert out[0] == "1000" and out[1] == "1000"
    assert sorted(int(g) for g in out[2].split()) == [1000, 50000]


def test_device_mapped_into_the_container(env: Env) -> None:
    config = api.ContainerConfig(devices=[api.Device(container_path="/dev/mynull", host_path="/dev/null",
                                                     permissions="rw")])
    out = run(env, "device", "echo x > /dev/mynull && echo written; ls -l /dev/mynull", config)
    assert "written" in out and out.splitlines()[-1].startswith("c")


@pytest.fixture
def nested_tmpfs(env: Env) -> Iterator[Path]:
    """A private tmpfs with another tmpfs mounted at ``sub`` inside it."""
    target = env.work / f"nested-{secrets.token_hex(3)}"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ctrpy-crispec", str(target)], check=True)
    try:
        subprocess.run(["mount", "--make-private", str(target)], check=True)
        (target / "sub").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ctrpy-crispec-sub", str(target / "sub")], check=True)
        yield target
    finally:
        subprocess.run(["umount", "-R", "-l", str(target)], check=False)


def test_readonly_and_recursive_readonly_mounts(env: Env, nested_tmpfs: Path) -> None:
    script = "touch /m/top; echo top=$?; touch /m/sub/x; echo sub=$?"
    plain = api.ContainerConfig(mounts=[api.Mount(container_path="/m", host_path=str(nested_tmpfs), readonly=True)])
    out = run(env, "ro", script, plain)
    assert "top=1" in out and "sub=0" in out, out  # ro covers the bind itself, not what is below it
    recursive = api.ContainerConfig(mounts=[api.Mount(container_path="/m", host_path=str(nested_tmpfs),
                                                      readonly=True, recursive_read_only=True)])
    out = run(env, "rro", script, recursive)
    assert "top=1" in out and "sub=1" in out, out


def test_runtime_default_allowlist_runs_ordinary_programs(env: Env) -> None:
    """Under the RuntimeDefault allowlist a shell, ls, cat, sleep and an HTTP exchange over
    loopback work; unshare, mount and sethostname are refused without CAP_SYS_ADMIN and allowed
    with it (the profile lists them for that capability)."""
    ordinary = (
        "ls /data >/dev/null && echo ls=ok; cat /data/secret.txt; sleep 0.1 && echo sleep=ok; "
        "busybox ip link set lo up; busybox httpd -f -p 127.0.0.1:8080 -h /data & "
        "for i in 1 2 3 4 5 6 7 8 9 10; do busybox wget -q -O - http://127.0.0.1:8080/secret.txt && break; "
        "sleep 0.2; done; echo wget=$?; kill $!; "
        "unshare -U true; echo unshare=$?; hostname h; echo hostname=$?; "
        "mount -t tmpfs t /mnt; echo mount=$?; grep Seccomp: /proc/self/status"
    )
    plain = api.ContainerConfig()
    plain.linux.security_context.seccomp.profile_type = api.SecurityProfile.RuntimeDefault
    plain.linux.security_context.capabilities.add_capabilities.extend(["NET_ADMIN"])
    out = run(env, "allowlist", ordinary, plain)
    assert "ls=ok" in out and "sleep=ok" in out and out.count("secret") == 2, out
    assert "wget=0" in out and "Seccomp:\t2" in out, out
    assert "unshare=1" in out and "hostname=1" in out and "mount=1" in out, out
    admin = api.ContainerConfig()
    admin.linux.security_context.seccomp.profile_type = api.SecurityProfile.RuntimeDefault
    admin.linux.security_context.capabilities.add_capabilities.extend(["SYS_ADMIN"])
    out = run(env, "allowlist-admin", "hostname h; echo hostname=$?; mount -t tmpfs t /mnt; echo mount=$?", admin)
    assert "hostname=0" in out and "mount=0" in out, out
