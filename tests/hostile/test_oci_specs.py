"""Invalid OCI specs through Containers.Create and Tasks.Create, from a Python client.

A spec that is not a usable JSON object (no spec, bad JSON, not an object, no root, no process)
is refused by ctrpyd before any bundle is written or runc called; a spec that runc would accept
but must not run (the host's ``/proc`` bind-mounted over the container's) is refused as well;
a spec that only runc can judge gets runc's error back, clearly. After each: no shim, no bundle,
nothing mounted, and once the spec is fixed the same container runs.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctrpy.errors import CtrpyError, InvalidArgument
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.hostile import probes
from tests.hostile.specs import Runner, fifo_free_output, runtime_spec
from tests.support.ctrpyd import Daemon


@pytest.fixture(scope="module")
def hostile_daemon(module_daemon: Daemon) -> Daemon:
    """One ctrpyd for the module: each test asserts that it left no shim, bundle, mount or task."""
    return module_daemon


@pytest.fixture(scope="module")
def image(hostile_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox, imported and unpacked; returns the chain id of its top layer."""
    tar = tmp_path_factory.mktemp("image") / "busybox.tar"
    info = write_oci_layout_tar(busybox_image(), tar)
    result = hostile_daemon.ctr("images", "import", str(tar))
    assert result.returncode == 0, result.stderr
    return info.chain_ids[-1]


@pytest.fixture
def cgroup_ns() -> Iterator[str]:
    name = f"ctrpy-spec-{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        probes.remove_cgroups(name)


def good_spec(cgroup_ns: str, container_id: str) -> dict[str, Any]:
    return runtime_spec(["/bin/sh", "-c", "echo fixed"], f"/{cgroup_ns}/{container_id}")


def without(spec: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != key}


def host_proc_bind(spec: dict[str, Any], destination: str = "/proc") -> dict[str, Any]:
    changed = json.loads(json.dumps(spec))
    changed["mounts"].append({"destination": destination, "type": "bind", "source": "/proc",
                              "options": ["rbind", "rw"]})
    return changed


def host_proc_typed(spec: dict[str, Any]) -> dict[str, Any]:
    changed = json.loads(json.dumps(spec))
    changed["mounts"].append({"destination": "/proc", "type": "none", "source": "/proc", "options": ["bind"]})
    return changed


# Specs ctrpyd itself refuses, before a bundle or a shim exists: (spec maker, message).
REFUSED_BY_CTRPYD = {
    "bad JSON": (lambda s: b'{"ociVersion": "1.0.2", "root": ', "spec is not JSON"),
    "not an object": (lambda s: b'["root", "process"]', "not a JSON object"),
    "null": (lambda s: b"null", "not a JSON object"),
    "missing root": (lambda s: without(s, "root"), "no root.path"),
    "empty root path": (lambda s: {**s, "root": {"path": ""}}, "no root.path"),
    "missing process": (lambda s: without(s, "process"), "no process"),
    "mounts not a list": (lambda s: {**s, "mounts": {"destination": "/proc"}}, "mounts must be a list"),
    "host /proc bound over /proc": (host_proc_bind, "/proc must be a new proc filesystem"),
    "host /proc bound over //proc/.": (lambda s: host_proc_bind(s, "//proc/."), "/proc must be a new proc filesystem"),
    "host /proc bound, typed none": (host_proc_typed, "/proc must be a new proc filesystem"),
}


def assert_clean(daemon: Daemon) -> None:
    assert probes.lingering_shims(daemon) == {}
    assert probes.bundles(daemon) == []
    assert probes.state_mounts(daemon) == []
    assert probes.tasks(daemon) == {}


def fix_and_run(runner: Runner, spec: dict[str, Any], directory: Path) -> None:
    """The same container, its spec fixed, runs and says so."""
    runner.set_spec(spec)
    output = fifo_free_output(directory, f"{runner.id}.out")
    assert runner.run(stdout=output) == 0
    assert Path(output).read_text() == "fixed\n"


def test_a_container_without_a_spec_is_refused(hostile_daemon: Daemon, image: str, cgroup_ns: str,
                                               tmp_path: Path) -> None:
    """containerd's rule: Containers.Create wants a spec; nothing is recorded without one."""
    container_id = f"spec-{secrets.token_hex(3)}"
    with hostile_daemon.client() as client:
        runner = Runner(client, container_id, image)
        try:
            with pytest.raises(InvalidArgument, match="spec must not be nil"):
                runner.create_container(None)
            assert hostile_daemon.ctr("containers", "ls", "-q").stdout.split() == []
            runner.remove()
            runner.create_container(good_spec(cgroup_ns, container_id))
            output = fifo_free_output(tmp_path, "out")
            assert runner.run(stdout=output) == 0
        finally:
            runner.remove()
    assert_clean(hostile_daemon)


@pytest.mark.parametrize("case", sorted(REFUSED_BY_CTRPYD))
def test_refused_before_runc(hostile_daemon: Daemon, image: str, cgroup_ns: str, tmp_path: Path, case: str) -> None:
    make, message = REFUSED_BY_CTRPYD[case]
    container_id = f"spec-{secrets.token_hex(3)}"
    spec = good_spec(cgroup_ns, container_id)
    with hostile_daemon.client() as client:
        runner = Runner(client, container_id, image)
        try:
            runner.create_container(make(spec))
            with pytest.raises(InvalidArgument, match=message):
                runner.create_task()
            assert_clean(hostile_daemon)
            fix_and_run(runner, spec, tmp_path)
        finally:
            runner.remove()
    assert_clean(hostile_daemon)


# Specs only runc can judge: its error must come back, saying what runc said.
REFUSED_BY_RUNC = {
    "no such binary": (lambda s: {**s, "process": {**s["process"], "args": ["/nonexistent"]}},
                       "/nonexistent"),
    "no args": (lambda s: {**s, "process": {**s["process"], "args": []}}, "args must not be empty"),
    "bad namespace": (lambda s: {**s, "linux": {**s["linux"], "namespaces": [{"type": "bogus"}]}}, "bogus"),
    "bad mount type": (lambda s: {**s, "mounts": [*s["mounts"], {"destination": "/x", "type": "nosuchfs",
                                                                 "source": "none"}]}, "no such device"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_BY_RUNC))
def test_runc_errors_come_back_clearly(hostile_daemon: Daemon, image: str, cgroup_ns: str, tmp_path: Path,
                                       case: str) -> None:
    make, message = REFUSED_BY_RUNC[case]
    container_id = f"spec-{secrets.token_hex(3)}"
    spec = good_spec(cgroup_ns, container_id)
    with hostile_daemon.client() as client:
        runner = Runner(client, container_id, image)
        try:
            runner.create_container(make(spec))
            with pytest.raises(CtrpyError) as caught:
                runner.create_task()
            assert message in caught.value.message, caught.value.message
            assert "runc" in caught.value.message or "OCI runtime" in caught.value.message
            assert_clean(hostile_daemon)
            fix_and_run(runner, spec, tmp_path)
        finally:
            runner.remove()
    assert_clean(hostile_daemon)


def test_the_host_proc_never_reaches_a_container(hostile_daemon: Daemon, image: str, cgroup_ns: str,
                                                 tmp_path: Path) -> None:
    """The container's /proc is its own: PID 1 there is the container's process, not the
    host's init, even when the client asked for the host's /proc (refused) and then ran the
    ordinary spec."""
    container_id = f"spec-{secrets.token_hex(3)}"
    spec = runtime_spec(["/bin/sh", "-c", "cat /proc/1/cmdline; echo"], f"/{cgroup_ns}/{container_id}")
    with hostile_daemon.client() as client:
        runner = Runner(client, container_id, image)
        try:
            runner.create_container(host_proc_bind(spec))
            with pytest.raises(InvalidArgument):
                runner.create_task()
            runner.set_spec(spec)
            output = fifo_free_output(tmp_path, "proc.out")
            assert runner.run(stdout=output) == 0
            host_init = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            seen = Path(output).read_text().replace("\0", " ").strip()
            assert seen.startswith("/bin/sh -c cat /proc/1/cmdline")
            assert seen != host_init
        finally:
            runner.remove()
    assert_clean(hostile_daemon)

