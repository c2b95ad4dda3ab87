"""Mounts, devices and image volumes in a CRI container's spec.

Everything but the propagation checks works on plain directories; those make a tmpfs of their
own, mark it shared or slave, and unmount it afterwards whatever happens.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import FailedPrecondition, InvalidArgument
from ctrpy.manager.cri import crimounts
from ctrpy.manager.cri.containerspec import HostFacts, container_spec
from tests.cri_spec.support import FACTS, container, image, make_rootfs, sandbox


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


def build(tmp_path: Path, rootfs: Path, config: api.ContainerConfig, img: Any = None,
          facts: HostFacts = FACTS, **kwargs: Any) -> dict[str, Any]:
    box = sandbox(tmp_path / "sb", **kwargs.pop("linux", {}))
    return container_spec("ctr-1", config, box, img or image(), str(rootfs), facts=facts, **kwargs)


def by_destination(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for m in spec["mounts"]:
        assert m["destination"] not in found, f"duplicate mount {m['destination']}"
        found[m["destination"]] = m
    return found


def with_mounts(*mounts: api.Mount, **fields: Any) -> api.ContainerConfig:
    return container(mounts=list(mounts), **fields)


def test_sandbox_files_and_shm(tmp_path: Path, rootfs: Path) -> None:
    spec = build(tmp_path, rootfs, container())
    mounts = by_destination(spec)
    assert mounts["/etc/hosts"] == {"destination": "/etc/hosts", "type": "bind",
                                    "source": str(tmp_path / "sb" / "files" / "hosts"),
                                    "options": ["rbind", "rprivate", "rw"]}
    assert mounts["/etc/hostname"]["source"].endswith("hostname")
    assert mounts["/etc/resolv.conf"]["source"].endswith("resolv.conf")
    assert mounts["/dev/shm"]["source"] == str(tmp_path / "sb" / "shm")
    assert mounts["/dev/shm"]["type"] == "bind"
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup" and "ro" in mounts["/sys/fs/cgroup"]["options"]
    assert "/run" not in mounts
    order = [m["destination"] for m in spec["mounts"]]
    assert order[:6] == ["/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]


def test_missing_hostname_file_is_not_mounted(tmp_path: Path, rootfs: Path) -> None:
    box = sandbox(tmp_path / "sb")
    os.unlink(box.files["hostname"])
    spec = container_spec("ctr-1", container(), box, image(), str(rootfs), facts=FACTS)
    assert "/etc/hostname" not in by_destination(spec)


def test_cri_mount_overrides_sandbox_file_and_defaults(tmp_path: Path, rootfs: Path) -> None:
    hosts = tmp_path / "my-hosts"
    hosts.write_text("1.2.3.4 x\n")
    dev = tmp_path / "devdir"
    config = with_mounts(api.Mount(container_path="/etc/hosts", host_path=str(hosts), readonly=True),
                         api.Mount(container_path="/dev", host_path=str(dev)))
    mounts = by_destination(build(tmp_path, rootfs, config))
    assert mounts["/etc/hosts"]["source"] == str(hosts)
    assert mounts["/etc/hosts"]["options"] == ["rbind", "rprivate", "ro"]
    # A supplied /dev replaces the default /dev and every default mount below it (not the pod's shm).
    assert mounts["/dev"]["source"] == str(dev) and dev.is_dir()
    assert "/dev/pts" not in mounts and "/dev/mqueue" not in mounts
    assert mounts["/dev/shm"]["type"] == "bind"


def test_mounts_sorted_by_depth_and_missing_paths_created(tmp_path: Path, rootfs: Path) -> None:
    deep, top = tmp_path / "a" / "deep", tmp_path / "top"
    config = with_mounts(api.Mount(container_path="/x/y/z", host_path=str(deep)),
                         api.Mount(container_path="/x", host_path=str(top)))
    spec = build(tmp_path, rootfs, config)
    order = [m["destination"] for m in spec["mounts"]]
    assert order.index("/x") < order.index("/x/y/z")
    assert deep.is_dir() and top.is_dir() and (deep.stat().st_mode & 0o777) == 0o755


def test_symlinked_host_path_is_resolved(tmp_path: Path, rootfs: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    config = with_mounts(api.Mount(container_path="/data", host_path=str(tmp_path / "link")))
    assert by_destination(build(tmp_path, rootfs, config))["/data"]["source"] == str(real)


def test_recursive_read_only(tmp_path: Path, rootfs: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    ok = api.Mount(container_path="/r", host_path=str(source), readonly=True, recursive_read_only=True)
    assert by_destination(build(tmp_path, rootfs, with_mounts(ok)))["/r"]["options"] == ["rbind", "rprivate", "rro"]
    with pytest.raises(InvalidArgument, match="needs readonly"):
        build(tmp_path, rootfs, with_mounts(api.Mount(container_path="/r", host_path=str(source),
                                                      recursive_read_only=True)))
    no_rro = HostFacts(**{**FACTS.__dict__, "rro": False})
    with pytest.raises(InvalidArgument, match="not supported by this runtime"):
        build(tmp_path, rootfs, with_mounts(ok), facts=no_rro)


def test_unsupported_mount_kinds_are_refused(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="image volumes"):
        build(tmp_path, rootfs, with_mounts(api.Mount(container_path="/i", image=api.ImageSpec(image="busybox"))))
    with pytest.raises(InvalidArgument, match="must be absolute"):
        build(tmp_path, rootfs, with_mounts(api.Mount(container_path="rel", host_path=str(tmp_path))))


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of the test's own (private at first); unmounted afterwards."""
    target = tmp_path / "mnt"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ctrpy-spec-test", str(target)], check=True)
    subprocess.run(["mount", "--make-private", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_propagation_needs_the_right_kind_of_host_mount(tmp_path: Path, rootfs: Path, tmpfs: Path) -> None:
    (tmpfs / "sub").mkdir()

    def mount(propagation: int) -> api.ContainerConfig:
        return with_mounts(api.Mount(container_path="/p", host_path=str(tmpfs / "sub"), propagation=propagation))  # type: ignore[arg-type]

    with pytest.raises(FailedPrecondition, match="neither shared nor slave"):
        build(tmp_path, rootfs, mount(api.PROPAGATION_HOST_TO_CONTAINER))
    with pytest.raises(FailedPrecondition, match="not shared"):
        build(tmp_path, rootfs, mount(api.PROPAGATION_BIDIRECTIONAL))
    subprocess.run(["mount", "--make-shared", str(tmpfs)], check=True)
    assert any(f.startswith("shared:") for f in crimounts.mount_propagation(str(tmpfs / "sub")))
    spec = build(tmp_path, rootfs, mount(api.PROPAGATION_HOST_TO_CONTAINER))
    assert by_destination(spec)["/p"]["options"] == ["rbind", "rslave", "rw"]
    assert spec["linux"]["rootfsPropagation"] == "rslave"
    spec = build(tmp_path, rootfs, mount(api.PROPAGATION_BIDIRECTIONAL))
    assert by_destination(spec)["/p"]["options"] == ["rbind", "rshared", "rw"]
    assert spec["linux"]["rootfsPropagation"] == "rshared"
    private = build(tmp_path, rootfs, mount(api.PROPAGATION_PRIVATE))
    assert "rootfsPropagation" not in private["linux"]


def test_the_device_cgroup_is_deny_all_as_containerd_leaves_it(tmp_path: Path, rootfs: Path) -> None:
    """No allow rules of our own for the standard devices: runc adds its defaults (null,
    zero, tty, ptmx...) itself, and containerd's CRI spec has the deny-all rule alone."""
    spec = build(tmp_path, rootfs, container())
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_devices(tmp_path: Path, rootfs: Path) -> None:
    null = os.stat("/dev/null")
    config = container(devices=[api.Device(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")])
    spec = build(tmp_path, rootfs, config)
    assert {"path": "/dev/mynull", "type": "c", "major": os.major(null.st_rdev), "minor": os.minor(null.st_rdev),
            "fileMode": 0o666, "uid": 0, "gid": 0} in spec["linux"]["devices"]
    rules = spec["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert rules[-1] == {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}
    with pytest.raises(InvalidArgument, match="invalid permissions"):
        build(tmp_path, rootfs, container(devices=[api.Device(container_path="/dev/x", host_path="/dev/null",
                                                              permissions="rwx")]))
    with pytest.raises(InvalidArgument, match="no such device"):
        build(tmp_path, rootfs, container(devices=[api.Device(container_path="/dev/x", host_path="/dev/nope")]))
    with pytest.raises(InvalidArgument, match="not a device"):
        build(tmp_path, rootfs, container(devices=[api.Device(container_path="/dev/x", host_path="/etc/hostname")]))


def test_image_volumes_are_copied_once_into_the_volumes_dir(tmp_path: Path, rootfs: Path) -> None:
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    os.chown(rootfs / "data" / "seed.txt", 33, 50000)
    img = image(Volumes={"/data": {}, "/empty": {}, "/etc/hosts": {}})
    spec = build(tmp_path, rootfs, container(), img, volumes_dir=str(volumes))
    mounts = by_destination(spec)
    assert mounts["/etc/hosts"]["source"].endswith("hosts")  # the pod's file wins over a volume
    data = Path(mounts["/data"]["source"])
    assert data.parent == volumes and (data / "seed.txt").read_text() == "from the image\n"
    assert ((data / "seed.txt").stat().st_uid, (data / "seed.txt").stat().st_gid) == (33, 50000)
    assert Path(mounts["/empty"]["source"]).is_dir()
    (data / "seed.txt").write_text("changed\n")
    again = by_destination(build(tmp_path, rootfs, container(), img, volumes_dir=str(volumes)))
    assert again["/data"]["source"] == str(data) and (data / "seed.txt").read_text() == "changed\n"
    covered = with_mounts(api.Mount(container_path="/data", host_path=str(tmp_path / "mine")))
    assert by_destination(build(tmp_path, rootfs, covered, img, volumes_dir=str(volumes)))["/data"]["source"] == \
        str(tmp_path / "mine")
    assert "/data" not in by_destination(build(tmp_path, rootfs, container(), img))
