"""An image whose symbolic links lead a mount destination to ``/proc``.

runc resolves a mount destination inside the rootfs, following the image's links; a bind of the
host's ``/proc`` at ``/myproc`` in an image where ``/myproc -> /proc`` lands on the container's
``/proc``. ctrpy resolves destinations the same way in the shim, once the rootfs is mounted and
before ``runc create``: such a task is refused with InvalidArgument, through the stock ctr and a
Python client alike, and nothing of it stays (no shim, bundle, mount or task). Binds through
links that end elsewhere still work.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.testimage import Layer, busybox_image, directory, file, symlink, write_oci_layout_tar
from tests.hostile import probes
from tests.hostile.specs import Runner, fifo_free_output, runtime_spec
from tests.support.ctrpyd import Daemon

IMAGE = "test.local/proc-links:1"

# Ways for a destination to reach /proc through the image: (destination, how).
REACHING_PROC = {
    "absolute link": "/myproc",
    "parent links to the root": "/d/proc",
    "parent links, repeated": "/d/d/d/myproc",
    "relative link climbing out": "/x/y/up",
    "relative link climbing past the root": "/x/y/far",
    "link to a link": "/chain",
}


def symlink_image() -> Any:
    base = busybox_image(IMAGE)
    links = Layer((
        symlink("/myproc", "/proc"),
        symlink("/d", "/"),
        directory("/x"),
        directory("/x/y"),
        symlink("/x/y/up", "../../proc"),
        symlink("/x/y/far", "../../../../../../proc"),
        symlink("/chain", "/myproc"),
        symlink("/loop1", "/loop2"),
        symlink("/loop2", "/loop1"),
        directory("/data"),
        symlink("/data-link", "/data"),
        file("/data/image-file", b"from the image\n"),
    ))  # fmt: skip
    return dataclasses.replace(base, layers=(*base.layers, links))


@pytest.fixture(scope="module")
def hostile_daemon(module_daemon: Daemon) -> Daemon:
    """One ctrpyd for the module: each test asserts that it left no shim, bundle, mount or task."""
    return module_daemon


@pytest.fixture(scope="module")
def linked_image(hostile_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, imported and unpacked; returns the chain id of its top layer."""
    tar = tmp_path_factory.mktemp("image") / "links.tar"
    info = write_oci_layout_tar(symlink_image(), tar)
    result = hostile_daemon.ctr("images", "import", str(tar))
    assert result.returncode == 0, result.stderr
    return info.chain_ids[-1]


@pytest.fixture
def cgroup_ns() -> Iterator[str]:
    name = f"ctrpy-links-{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        probes.remove_cgroups(name)


def assert_clean(daemon: Daemon) -> None:
    assert probes.lingering_shims(daemon) == {}
    assert probes.bundles(daemon) == []
    assert probes.state_mounts(daemon) == []
    assert probes.tasks(daemon) == {}


def with_mount(spec: dict[str, Any], mount: dict[str, Any]) -> dict[str, Any]:
    changed = json.loads(json.dumps(spec))
    changed["mounts"].append(mount)
    return changed


def host_proc_at(destination: str) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": "/proc", "options": ["rbind", "rw"]}


@pytest.mark.parametrize("how", sorted(REACHING_PROC))
def test_python_client_bind_reaching_proc_is_refused(hostile_daemon: Daemon, linked_image: str, cgroup_ns: str,
                                                     tmp_path: Path, how: str) -> None:
    destination = REACHING_PROC[how]
    container_id = f"links-{secrets.token_hex(3)}"
    spec = runtime_spec(["/bin/sh", "-c", "echo fixed"], f"/{cgroup_ns}/{container_id}")
    with hostile_daemon.client() as client:
        runner = Runner(client, container_id, linked_image)
        try:
            runner.create_container(with_mount(spec, host_proc_at(destination)))
            with pytest.raises(InvalidArgument) as caught:
                runner.create_task()
            message = caught.value.message
            assert "/proc must be a new proc filesystem, not a bind mount of '/proc'" in message, message
            assert f"resolved through symbolic links from {destination!r}" in message
            assert_clean(hostile_daemon)
            # The same container, without the bind, runs.
            runner.set_spec(spec)
            output = fifo_free_output(tmp_path, "out")
            assert runner.run(stdout=output) == 0
            assert Path(output).read_text() == "fixed\n"
        finally:
            runner.remove()
    assert_clean(hostile_daemon)


def test_ctr_run_bind_through_a_symlink_to_proc_is_refused(hostile_daemon: Daemon, linked_image: str) -> None:
    result = hostile_daemon.ctr(
        "run", "--rm", "--mount", "type=bind,src=/proc,dst=/myproc,options=rbind:rw",
        IMAGE, "links-ctr", "cat", "/proc/1/cmdline",
    )  # fmt: skip
    assert result.returncode != 0
    assert "/proc must be a new proc filesystem" in result.stderr, result.stderr
    assert "invalid argument" in result.stderr
    assert_clean(hostile_daemon)
    # ctr leaves the container record behind when the task fails; it goes like any other.
    hostile_daemon.ctr("containers", "rm", "links-ctr")


def test_a_loop_of_links_is_refused(hostile_daemon: Daemon, linked_image: str, cgroup_ns: str) -> None:
    container_id = f"links-{secrets.token_hex(3)}"
    spec = runtime_spec(["/bin/true"], f"/{cgroup_ns}/{container_id}")
    with hostile_daemon.client() as client:
        runner = Runner(client, container_id, linked_image)
        try:
            runner.create_container(with_mount(spec, {"destination": "/loop1", "type": "tmpfs", "source": "tmpfs"}))
            with pytest.raises(InvalidArgument, match="more than 255 symbolic links"):
                runner.create_task()
            assert_clean(hostile_daemon)
        finally:
            runner.remove()
    assert_clean(hostile_daemon)


def test_legit_binds_through_links_still_work(hostile_daemon: Daemon, linked_image: str, tmp_path: Path) -> None:
    """A bind through a link that ends elsewhere lands where runc puts it, and /proc is the
    container's own."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "note").write_text("from the host\n")
    script = "cat /data/note; cat /proc/1/cmdline | tr '\\0' ' '; echo"
    result = hostile_daemon.ctr(
        "run", "--rm", "--mount", f"type=bind,src={volume},dst=/data-link,options=rbind:ro",
        IMAGE, "links-ok", "sh", "-c", script,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "from the host"
    assert lines[1].startswith("sh -c cat /data/note")
    assert_clean(hostile_daemon)
