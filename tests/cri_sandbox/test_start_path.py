"""RunPodSandbox's faster start path: CNI ADD beside the pause container's creation, the pause
image checked in-process once it was found in place, and the creation's steps written without
fsync. What these must keep: a sysctl naming the pod's interface still finds it, a pause image
removed between pods is brought back, and a failed ADD undoes the pause task made beside it."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager.config import CriConfig
from ctrpy.manager.cri.sandboxes import _sysctls_need_interfaces
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until


def _netns(pods: PodDaemon, sandbox_id: str) -> str:
    import json

    spec: dict[str, Any] = json.loads(pods.status(sandbox_id, verbose=True).info["info"])["runtimeSpec"]
    return str(next(n["path"] for n in spec["linux"]["namespaces"] if n["type"] == "network"))


def _cleanup(pods: PodDaemon, sandbox_id: str) -> None:
    pods.stop_pod(sandbox_id)
    pods.remove_pod(sandbox_id)


@pytest.mark.parametrize(("sysctls", "wanted"), [
    ({}, False),
    ({"net.ipv4.ping_group_range": "0 1"}, False),
    ({"net.ipv4.conf.all.accept_local": "1"}, False),
    ({"net.ipv6.conf.default.accept_ra": "0"}, False),
    ({"kernel.shm_rmid_forced": "1"}, False),
    ({"net.ipv4.conf.eth0.accept_local": "1"}, True),
    ({"net/ipv4/neigh/eth0/retrans_time_ms": "500"}, True),
])  # fmt: skip
def test_which_sysctls_wait_for_the_network(sysctls: dict[str, str], wanted: bool) -> None:
    config = api.PodSandboxConfig()
    config.linux.sysctls.update(sysctls)
    assert _sysctls_need_interfaces(config) is wanted


def test_a_sysctl_of_the_pod_interface_is_set(pods: PodDaemon) -> None:
    """runc writes it when it creates the pause container: eth0 must exist by then, so this pod
    waits for its CNI ADD instead of running it beside the creation."""
    config = pods.pod("ifsysctl")
    config.linux.sysctls["net.ipv4.conf.eth0.accept_local"] = "1"
    sandbox_id = pods.run(config)
    try:
        assert pods.status(sandbox_id).status.state == api.SANDBOX_READY
        inside = subprocess.run(
            ["nsenter", f"--net={_netns(pods, sandbox_id)}", "cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert inside == "1"
    finally:
        _cleanup(pods, sandbox_id)


def test_a_pause_image_removed_between_pods_is_imported_again(pods: PodDaemon) -> None:
    name = CriConfig().sandbox_image
    first = pods.run(pods.pod("before-rm"))
    _cleanup(pods, first)
    removed = pods.ctr("images", "rm", name, namespace="k8s.io")
    assert removed.returncode == 0, removed.stderr
    second = pods.run(pods.pod("after-rm"))
    try:
        assert pods.status(second).status.state == api.SANDBOX_READY
        listed = pods.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()
        assert name in listed
    finally:
        _cleanup(pods, second)


def test_a_failed_add_undoes_the_pause_task_made_beside_it(podd: PodDaemon) -> None:
    """The plugin chain fails while the pause container, its snapshot and its shim are being
    made: the error is the plugin's, and neither the task nor its shim nor the address stay."""
    podd.start()
    podd.net.write_conflist(extra=[{"type": "ctrpy-no-such-plugin"}])
    with pytest.raises(errors.CtrpyError, match="ctrpy-no-such-plugin"):
        podd.run(podd.pod("broken", uid="uid-broken"))
    assert podd.list() == [] and podd.netns_files() == [] and podd.net.allocated() == []
    assert podd.ctr("containers", "ls", "-q", namespace="k8s.io").stdout.split() == []
    assert podd.ctr("tasks", "ls", "-q", namespace="k8s.io").stdout.split() == []
    assert list((podd.state / "tasks").glob("k8s.io/*")) == []
    wait_until(lambda: len(podd.shims()) == 1, "every shim but the template to exit")
