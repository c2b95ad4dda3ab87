"""Pods with a user namespace (runc 1.1: mappings and a remapped root filesystem), the
configurations refused, and UpdatePodSandboxResources, through a real ctrpyd, runc and CNI."""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import CtrpyError, InvalidArgument, NotFound
from ctrpy.manager import failpoints
from ctrpy.manager.cri.userns import IdMap, PodUserns, own_new_volumes, remap_tree
from tests.crash.support import mounts_under
from tests.cri_container.support import Pod, import_busybox
from tests.cri_sandbox.support import PodDaemon

LIMIT = 60.0
#: A host range no other test uses for its files: container 0..65535 is host 3000000 on.
HOST_ID = 3000000
LENGTH = 65536


@pytest.fixture(scope="module")
def userns_pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodDaemon]:
    daemon = PodDaemon()
    # runc enters the rootfs from inside the pod's user namespace: every directory above the
    # bundles must be searchable by others, as /run is (a test's temporary base is 0700).
    daemon.base.chmod(0o711)
    try:
        daemon.start()
        import_busybox(daemon, tmp_path_factory.mktemp("image"))
        yield daemon
    finally:
        daemon.reap()


def _mapping(container_id: int = 0, host_id: int = HOST_ID, length: int = LENGTH) -> api.IDMapping:
    return api.IDMapping(container_id=container_id, host_id=host_id, length=length)


def _userns_pod(daemon: PodDaemon, userns: api.UserNamespace, **kwargs: object) -> api.PodSandboxConfig:
    config = daemon.pod(f"userns-{secrets.token_hex(3)}", **kwargs)  # type: ignore[arg-type]
    config.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
    return config


def _pod_mode() -> api.UserNamespace:
    return api.UserNamespace(mode=api.POD, uids=[_mapping()], gids=[_mapping()])


def _wait_exited(pod: Pod, container_id: str) -> api.ContainerStatus:
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        status = pod.exited(container_id)
        if status is not None:
            return status
        time.sleep(0.2)
    raise AssertionError(f"container {container_id} did not exit within {LIMIT} s")


def test_status_advertises_user_namespaces(userns_pods: PodDaemon) -> None:
    with userns_pods.cri() as c:
        response = c.call(c.runtime.Status, api.StatusRequest())
    assert [h.features.user_namespaces for h in response.runtime_handlers if h.name == ""] == [True]


def test_userns_pod_maps_ids_and_root_writes_its_rootfs(userns_pods: PodDaemon, tmp_path: Path) -> None:
    config = _userns_pod(userns_pods, _pod_mode())
    config.log_directory = str(tmp_path / "logs")
    pod = Pod(userns_pods, userns_pods.run(config), config, tmp_path / "logs")
    try:
        info = json.loads(userns_pods.status(pod.id, verbose=True).info["info"])
        pause = int(info["pid"])
        assert info["runtimeSpec"]["linux"]["uidMappings"] == [{"containerID": 0, "hostID": HOST_ID,
                                                                 "size": LENGTH}]
        with open(f"/proc/{pause}/uid_map") as f:
            assert f.read().split() == ["0", str(HOST_ID), str(LENGTH)]
        status = userns_pods.status(pod.id).status
        assert status.network.ip, "the pod got no address from CNI"
        assert status.linux.namespaces.options.userns_options.mode == api.POD

        script = ("cat /proc/self/uid_map /proc/self/gid_map; id -u; readlink /proc/self/ns/user; "
                  "echo data > /written && cat /written; stat -c 'owner=%u' /bin/busybox; "
                  "mkdir -p /var/new/dir && echo mkdir-ok")
        container_id = pod.run("probe", "sh", "-c", script)
        exited = _wait_exited(pod, container_id)
        text = pod.log("probe")
        assert exited.exit_code == 0, text
        assert f" 0 {HOST_ID} {LENGTH}" in " ".join(text.split()), text
        assert os.readlink(f"/proc/{pause}/ns/user") in text, "the container is not in the pod's user namespace"
        assert "data" in text and "owner=0" in text and "mkdir-ok" in text, text
        # On the host the container's files belong to the mapped range.
        spec = json.loads(pod.status(container_id, verbose=True).info["info"])["runtimeSpec"]
        assert {"type": "user", "path": f"/proc/{pause}/ns/user"} in spec["linux"]["namespaces"]
        netns = next(n["path"] for n in spec["linux"]["namespaces"] if n["type"] == "network")
        assert netns in userns_pods.netns_files()
    finally:
        pod.cleanup()
    assert netns not in userns_pods.netns_files()


@pytest.mark.parametrize("point", [
    failpoints.SANDBOX_RUN_AFTER_TASK_CREATE,
    failpoints.SANDBOX_RUN_AFTER_NETNS,
    failpoints.SANDBOX_RUN_AFTER_CNI,
])  # fmt: skip
def test_kill9_during_userns_run_leaves_nothing_after_restart(podd: PodDaemon, point: str) -> None:
    """A user-namespaced pod takes its network after the pause task is created: a kill -9 at
    each of those steps is undone at start-up like any other pod's."""
    podd.base.chmod(0o711)
    podd.failpoints = point
    podd.start()
    config = _userns_pod(podd, _pod_mode())
    with pytest.raises(CtrpyError):
        podd.run(config)
    podd.died(point)
    podd.failpoints = ""
    podd.start()
    assert "half-made sandbox undone" in podd.log()
    assert podd.list() == []
    assert podd.netns_files() == []
    assert podd.net.allocated() == []
    assert podd.ctr("containers", "ls", "-q", namespace="k8s.io").stdout.split() == []
    active = [line for line in podd.ctr("snapshots", "ls", namespace="k8s.io").stdout.splitlines()
              if "Active" in line]
    assert active == []
    assert mounts_under(podd.state) == []
    sandbox_id = podd.run(config)
    assert podd.status(sandbox_id).status.state == api.SANDBOX_READY
    podd.remove_pod(sandbox_id)


@pytest.mark.parametrize(("userns", "needle"), [
    (api.UserNamespace(mode=api.TARGET), "unsupported user namespace mode"),
    (api.UserNamespace(mode=api.CONTAINER), "unsupported user namespace mode"),
    (api.UserNamespace(mode=api.POD, uids=[_mapping(), _mapping(host_id=HOST_ID * 2)], gids=[_mapping()]),
     "only one mapping line"),
    (api.UserNamespace(mode=api.POD, uids=[_mapping(container_id=1)], gids=[_mapping(container_id=1)]),
     "container id 0 is not mapped"),
    (api.UserNamespace(mode=api.POD, uids=[_mapping(length=0)], gids=[_mapping()]), "invalid mapping length"),
    (api.UserNamespace(mode=api.POD, uids=[_mapping()]), "without UID and GID mappings"),
    (api.UserNamespace(mode=api.NODE, uids=[_mapping()], gids=[_mapping()]), "with mappings"),
], ids=["target", "container", "two-lines", "zero-unmapped", "zero-length", "no-gids", "node-with-mappings"])
def test_invalid_userns_refused(userns_pods: PodDaemon, userns: api.UserNamespace, needle: str) -> None:
    config = _userns_pod(userns_pods, userns)
    with pytest.raises(InvalidArgument) as caught:
        userns_pods.run(config)
    assert needle in caught.value.message
    assert not [p for p in userns_pods.list() if p.metadata.name == config.metadata.name]


def test_userns_with_host_network_refused(userns_pods: PodDaemon) -> None:
    config = _userns_pod(userns_pods, _pod_mode(), host_network=True)
    with pytest.raises(InvalidArgument) as caught:
        userns_pods.run(config)
    assert "host's network" in caught.value.message


def test_update_pod_sandbox_resources(userns_pods: PodDaemon) -> None:
    resources = api.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 << 20)
    with userns_pods.cri() as c, pytest.raises(NotFound):
        c.call(c.runtime.UpdatePodSandboxResources, api.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id="f" * 64, resources=resources))
    sandbox_id = userns_pods.run(userns_pods.pod(f"resize-{secrets.token_hex(3)}"))
    try:
        with userns_pods.cri() as c:
            c.call(c.runtime.UpdatePodSandboxResources, api.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id=sandbox_id, overhead=api.LinuxContainerResources(cpu_shares=2),
                resources=resources))
        assert userns_pods.status(sandbox_id).status.state == api.SANDBOX_READY
    finally:
        userns_pods.stop_pod(sandbox_id)
        userns_pods.remove_pod(sandbox_id)


def test_remap_tree_shifts_owners_once(tmp_path: Path) -> None:
    """Owners shift into the range, hard links once, set-id bits survive, symlinks are not
    followed, ids outside the mapping stay."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    tool = root / "bin" / "tool"
    tool.write_bytes(b"x")
    os.chmod(tool, 0o4755)
    os.link(tool, root / "bin" / "tool2")
    outside = root / "outside"
    outside.write_bytes(b"y")
    os.chown(outside, 70000, 70000)
    host_file = tmp_path / "host"
    host_file.write_bytes(b"z")
    (root / "link").symlink_to(host_file)
    os.chown(root / "bin", 5, 6)
    userns = PodUserns(IdMap(0, HOST_ID, LENGTH), IdMap(0, HOST_ID + 100, LENGTH))
    remap_tree(str(root), userns)
    st = os.stat(tool)
    assert (st.st_uid, st.st_gid) == (HOST_ID, HOST_ID + 100)
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert (os.stat(root / "bin").st_uid, os.stat(root / "bin").st_gid) == (HOST_ID + 5, HOST_ID + 106)
    assert os.stat(outside).st_uid == 70000
    assert os.lstat(root / "link").st_uid == HOST_ID
    assert os.stat(host_file).st_uid == 0


def test_new_empty_image_volumes_belong_to_the_pods_root(tmp_path: Path) -> None:
    volumes = tmp_path / "volumes"
    (volumes / "empty").mkdir(parents=True)
    (volumes / "copied").mkdir()
    (volumes / "copied" / "f").write_bytes(b"x")
    userns = PodUserns(IdMap(0, HOST_ID, LENGTH), IdMap(0, HOST_ID, LENGTH))
    own_new_volumes(str(volumes), userns)
    assert os.stat(volumes / "empty").st_uid == HOST_ID
    assert os.stat(volumes / "copied").st_uid == 0  # copied from the rootfs: its owners stand
    own_new_volumes(str(tmp_path / "none"), userns)  # no volumes at all
