"""Recursive read-only mounts and SupplementalGroupsPolicy through the CRI, for real.

One ctrpyd with the CRI on serves the module (a :class:`PodDaemon`) with a busybox image whose
/etc/passwd and /etc/group are the spec tests' (alice, uid 1000, is also in group 50000) and
whose USER is alice. Each test makes a host-network pod of its own (no CNI needed) and its
containers with CreateContainer, StartContainer and ExecSync, as the kubelet and critest do.

What is checked: Status advertises ``recursive_read_only_mounts`` on the default handler exactly
when this host can make them (runc's ``rro`` and a kernel with mount_setattr) and
``supplemental_groups_policy``; a recursive read-only bind of a host directory holding a
submount refuses writes under the submount too, where a plain read-only bind does not; the
invalid combinations (no ``readonly``, a propagation other than PRIVATE) are InvalidArgument
and leave the host alone; Merge adds the image's /etc/group memberships of the user, Strict
does not, both in what ``id -G`` prints and in ContainerStatus.user.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager.cri.containerspec import host_facts
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from ctrpy.testimage.model import Image, Layer, file
from tests.cri_container.support import Pod, log_lines
from tests.cri_sandbox.support import PodDaemon
from tests.cri_spec.support import GROUP, PASSWD
from tests.support.polling import wait_until

IMAGE = "docker.io/library/busybox:cri-features"
ALICE = 1000
EXTRA_GROUP = 50000  # alice's membership in the image's /etc/group
CONFIGURED = 1234  # the pod's supplemental group in these tests


def features_image() -> Image:
    base = busybox_image(IMAGE)
    users = Layer((file("/etc/group", GROUP.encode()), file("/etc/passwd", PASSWD.encode())))
    return Image(IMAGE, (*base.layers, users), user="alice")


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodDaemon]:
    daemon = PodDaemon()
    try:
        daemon.start()
        tar = tmp_path_factory.mktemp("image") / "image.tar"
        write_oci_layout_tar(features_image(), tar)
        result = daemon.ctr("images", "import", str(tar), namespace="k8s.io")
        assert result.returncode == 0, result.stderr
        yield daemon
    finally:
        daemon.reap()


@pytest.fixture
def pod(pods: PodDaemon, tmp_path: Path) -> Iterator[Pod]:
    name = f"features-{secrets.token_hex(3)}"
    config = pods.pod(name, host_network=True)
    log_dir = tmp_path / "logs"
    config.log_directory = str(log_dir)
    made = Pod(pods, pods.run(config), config, log_dir)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[Path]:
    """A host directory with a tmpfs mounted at ``sub`` (critest's layout for these specs)."""
    top = tmp_path / f"rro-{secrets.token_hex(3)}"
    (top / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ctrpy-rro-test", str(top / "sub")], check=True)
    try:
        yield top
    finally:
        subprocess.run(["umount", "-l", str(top / "sub")], check=False)


def _sleeper(pod: Pod, name: str, mounts: list[api.Mount] | None = None, *, root: bool = False) -> api.ContainerConfig:
    """A container that sleeps, as the image's user (alice) or as root."""
    config = pod.container_config(name, "sleep", "600", image=IMAGE)
    config.mounts.extend(mounts or [])
    if root:
        config.linux.security_context.run_as_user.value = 0
    return config


def _exec(pod: Pod, container_id: str, script: str) -> api.ExecSyncResponse:
    return pod.exec_sync(container_id, "sh", "-c", script, timeout=60)


def test_status_advertises_both_features(pods: PodDaemon) -> None:
    with pods.cri() as c:
        status = c.status()
    handlers = {h.name: h.features for h in status.runtime_handlers}
    assert handlers[""].recursive_read_only_mounts == host_facts().rro
    assert handlers[""].user_namespaces
    assert status.features.supplemental_groups_policy


def test_recursive_read_only_bind_covers_the_submount(pod: Pod, host_dir: Path) -> None:
    if not host_facts().rro:
        pytest.skip("this host cannot make recursive read-only mounts (runc without rro or kernel < 5.12)")
    plain = pod.create(_sleeper(pod, "ro", [api.Mount(container_path="/m", host_path=str(host_dir),
                                                      readonly=True)], root=True))
    recursive = pod.create(_sleeper(pod, "rro", [api.Mount(container_path="/m", host_path=str(host_dir),
                                                           readonly=True, recursive_read_only=True)], root=True))
    for container_id in (plain, recursive):
        pod.start(container_id)
    # A plain read-only bind: the bind itself refuses writes, the tmpfs below it does not.
    top = _exec(pod, plain, "touch /m/top")
    assert top.exit_code != 0 and b"Read-only file system" in top.stderr
    assert _exec(pod, plain, "touch /m/sub/from-ro").exit_code == 0
    assert (host_dir / "sub" / "from-ro").exists()
    # Recursive: the submount is read-only too (critest's check, word for word).
    sub = _exec(pod, recursive, "touch /m/sub/from-rro")
    assert sub.exit_code != 0 and b"Read-only file system" in sub.stderr, sub
    assert _exec(pod, recursive, "touch /m/top").exit_code != 0
    assert _exec(pod, recursive, 'touch /m/sub/foo 2>&1 | grep -q "Read-only file system"').exit_code == 0
    assert not (host_dir / "sub" / "from-rro").exists()
    mounts = {m.container_path: m for m in pod.status(recursive).status.mounts}
    assert mounts["/m"].readonly and mounts["/m"].recursive_read_only


@pytest.mark.parametrize(("readonly", "propagation"), [
    (False, api.PROPAGATION_PRIVATE),
    (True, api.PROPAGATION_HOST_TO_CONTAINER),
    (True, api.PROPAGATION_BIDIRECTIONAL),
], ids=["read-write", "host-to-container", "bidirectional"])  # fmt: skip
def test_invalid_recursive_read_only_is_refused(pod: Pod, tmp_path: Path, readonly: bool, propagation: int) -> None:
    missing = tmp_path / "not-made"
    mount = api.Mount(container_path="/m", host_path=str(missing), readonly=readonly, recursive_read_only=True,
                      propagation=propagation)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="recursive read-only"):
        pod.create(_sleeper(pod, "bad", [mount]))
    assert not missing.exists()  # refused before the host path was made
    assert pod.list(api.ContainerFilter(pod_sandbox_id=pod.id)) == []


def _groups_container(pod: Pod, name: str, policy: int | None) -> str:
    """A container that prints ``id -G`` first and then sleeps, run as uid 1000 with the
    configured group (critest's SupplementalGroupsPolicy specs); ``policy`` None leaves the
    field unset (Merge, its default)."""
    config = pod.container_config(name, "sh", "-c", "id -G; sleep 600", image=IMAGE)
    context = config.linux.security_context
    context.run_as_user.value = ALICE
    context.supplemental_groups.append(CONFIGURED)
    if policy is not None:
        context.supplemental_groups_policy = policy  # type: ignore[assignment]
    container_id = pod.create(config)
    pod.start(container_id)
    return container_id


def _user(pod: Pod, container_id: str) -> tuple[int, int, list[int]]:
    linux = pod.status(container_id).status.user.linux
    return linux.uid, linux.gid, sorted(linux.supplemental_groups)


@pytest.mark.parametrize(("policy", "groups"), [
    (None, [ALICE, CONFIGURED, EXTRA_GROUP]),
    (api.Merge, [ALICE, CONFIGURED, EXTRA_GROUP]),
    (api.Strict, [ALICE, CONFIGURED]),
], ids=["default", "merge", "strict"])  # fmt: skip
def test_supplemental_groups_policy(pod: Pod, policy: int | None, groups: list[int]) -> None:
    container_id = _groups_container(pod, "groups", policy)
    expected = " ".join(str(g) for g in groups)
    first = wait_until(lambda: log_lines(pod.log("groups")), "the container's id -G", timeout=60)
    assert first[0] == expected
    execed = _exec(pod, container_id, "id -G")
    assert execed.exit_code == 0 and execed.stdout.decode() == expected + "\n"
    assert _user(pod, container_id) == (ALICE, ALICE, groups)


def test_image_user_groups_are_reported(pod: Pod) -> None:
    """No run_as_user: the image's USER (alice) runs, with its /etc/group membership."""
    container_id = pod.create(_sleeper(pod, "image-user"))
    pod.start(container_id)
    assert _exec(pod, container_id, "id -u; id -G").stdout.decode().split("\n")[:2] == ["1000", "1000 50000"]
    assert _user(pod, container_id) == (ALICE, ALICE, [ALICE, EXTRA_GROUP])
