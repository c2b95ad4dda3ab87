"""Pods across ctrpyd restarts: kill -9 and a clean stop keep every pod with its state and IP,
and a kill -9 at each step of RunPodSandbox leaves nothing behind once ctrpyd is back."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager import failpoints
from tests.crash.support import alive, cgroup_dirs, mounts_under
from tests.cri_net.conftest import Listener, connect
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until


def _netns_of(pods: PodDaemon, sandbox_id: str) -> str:
    import json

    spec = json.loads(pods.status(sandbox_id, verbose=True).info["info"])["runtimeSpec"]
    return str(next(n["path"] for n in spec["linux"]["namespaces"] if n["type"] == "network"))


def _states(pods: PodDaemon) -> dict[str, int]:
    return {i.id: i.state for i in pods.list()}


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_pods_survive_a_restart(podd: PodDaemon, how: str) -> None:
    podd.start()
    ready = podd.run(podd.pod("ready"))
    stopped = podd.run(podd.pod("stopped"))
    hostnet = podd.run(podd.pod("hostnet", host_network=True))
    podd.stop_pod(stopped)
    ip = podd.status(ready).status.network.ip
    listener = Listener(_netns_of(podd, ready), 8080)
    try:
        if how == "kill":
            podd.kill()
        else:
            podd.stop()
        podd.start()
        assert _states(podd) == {ready: api.SANDBOX_READY, stopped: api.SANDBOX_NOTREADY,
                                 hostnet: api.SANDBOX_READY}
        assert podd.status(ready).status.network.ip == ip
        assert podd.net.allocated() == [ip]
        assert connect(ip, 8080) == b"pong"
    finally:
        listener.stop()
    for sandbox_id in (ready, stopped, hostnet):
        podd.stop_pod(sandbox_id)
        podd.remove_pod(sandbox_id)
    assert podd.list() == [] and podd.net.allocated() == [] and podd.netns_files() == []


def test_a_pause_that_died_while_ctrpyd_was_down_is_notready(podd: PodDaemon) -> None:
    import json

    podd.start()
    sandbox_id = podd.run(podd.pod("gone"))
    pid = int(json.loads(podd.status(sandbox_id, verbose=True).info["info"])["pid"])
    podd.kill()
    from tests.crash.support import kill_and_wait

    kill_and_wait(pid)
    podd.start()
    wait_until(lambda: podd.status(sandbox_id).status.state == api.SANDBOX_NOTREADY, "the pod to be NOTREADY")
    podd.remove_pod(sandbox_id)
    assert podd.net.allocated() == [] and podd.netns_files() == []


@pytest.mark.parametrize("point", [
    failpoints.SANDBOX_RUN_AFTER_RECORD,
    failpoints.SANDBOX_RUN_AFTER_NETNS,
    failpoints.SANDBOX_RUN_AFTER_CNI,
    failpoints.SANDBOX_RUN_AFTER_SNAPSHOT,
    failpoints.SANDBOX_RUN_AFTER_TASK_CREATE,
])  # fmt: skip
def test_kill9_during_run_leaves_nothing_after_restart(podd: PodDaemon, point: str) -> None:
    podd.failpoints = point
    podd.start()
    config = podd.pod("crashy", uid="uid-crashy")
    with pytest.raises(errors.CtrpyError):
        podd.run(config)
    podd.died(point)
    podd.failpoints = ""
    podd.start()
    assert "half-made sandbox undone" in podd.log()

    assert podd.list() == []
    assert podd.netns_files() == []
    assert podd.net.allocated() == []  # the IPAM freed what ADD took
    assert podd.ctr("containers", "ls", "-q", namespace="k8s.io").stdout.split() == []
    active = [line for line in podd.ctr("snapshots", "ls", namespace="k8s.io").stdout.splitlines()
              if "Active" in line]
    assert active == []
    assert mounts_under(podd.state) == []
    assert list((podd.state / "tasks").glob("k8s.io/*")) == []
    assert _processes_in_cgroups(podd.cgroup_parent) == []  # no pause process left
    assert list((podd.root / "cri" / "sandboxes").glob("*")) == []
    assert not list((podd.root / "cni" / "results").glob("*"))

    sandbox_id = podd.run(config)  # the name is free again
    assert podd.status(sandbox_id).status.state == api.SANDBOX_READY
    podd.remove_pod(sandbox_id)


def _processes_in_cgroups(relative: str) -> list[int]:
    """Live pids in the cgroups at ``relative`` and below, in every hierarchy."""
    found = []
    for top in cgroup_dirs(relative):
        for directory, _, _ in os.walk(top):
            with contextlib.suppress(OSError):
                found += [int(p) for p in Path(directory, "cgroup.procs").read_text().split() if alive(int(p))]
    return found


def test_after_a_reboot_the_pod_is_notready_and_stop_frees_its_address(podd: PodDaemon) -> None:
    """A simulated reboot (every process and mount under the state dir gone, the state dir
    wiped; the root, the CNI cache and the IPAM's data stay): the pod comes back NOTREADY with
    its IP, and StopPodSandbox still runs CNI DEL, so the address is freed."""
    import shutil

    from ctrpy import mount as mounts
    from tests.crash.support import kill_and_wait, remove_cgroups

    podd.start()
    sandbox_id = podd.run(podd.pod("rebooted"))
    ip = podd.status(sandbox_id).status.network.ip
    assert podd.stop() == 0
    for pid in podd.shims():
        kill_and_wait(pid)
    remove_cgroups(podd.cgroup_parent)  # the pause process goes with its cgroup
    mounts.unmount_recursive(podd.state)
    shutil.rmtree(podd.state)
    podd.start()

    status = podd.status(sandbox_id).status
    assert status.state == api.SANDBOX_NOTREADY and status.network.ip == ip
    assert podd.net.allocated() == [ip]
    podd.stop_pod(sandbox_id)
    assert podd.net.allocated() == []
    podd.remove_pod(sandbox_id)
    assert podd.list() == []


def test_a_failed_run_is_undone_and_the_name_is_free(podd: PodDaemon) -> None:
    podd.start()
    good = podd.net.write_conflist()
    podd.net.write_conflist(extra=[{"type": "ctrpy-no-such-plugin"}])  # same file, now broken
    config = podd.pod("fails", uid="uid-fails")
    with pytest.raises(errors.CtrpyError, match="ctrpy-no-such-plugin"):
        podd.run(config)
    assert podd.list() == [] and podd.netns_files() == [] and podd.net.allocated() == []
    assert podd.ctr("containers", "ls", "-q", namespace="k8s.io").stdout.split() == []
    assert list((podd.root / "cri" / "sandboxes").glob("*")) == []
    podd.net.write_conflist()
    assert good.exists()
    sandbox_id = podd.run(config)
    assert podd.status(sandbox_id).status.state == api.SANDBOX_READY
    podd.remove_pod(sandbox_id)


def test_a_sandbox_container_whose_record_was_lost_is_removed_at_start(podd: PodDaemon) -> None:
    """Start-up finds pause containers by their kind label (a key with dots and a dash, which a
    filter must quote) and removes the ones no record names, with their task and snapshot."""
    podd.start()
    kept = podd.run(podd.pod("kept"))
    lost = podd.run(podd.pod("lost"))
    podd.kill()
    (podd.root / "cri" / "sandboxes" / f"{lost}.json").unlink()
    podd.start()
    assert [pod.id for pod in podd.list()] == [kept]
    listed = podd.ctr("containers", "ls", "-q", namespace="k8s.io")
    assert listed.stdout.split() == [kept], listed.stderr
    assert "sandbox reconcile failed" not in podd.log()
    podd.stop_pod(kept)
    podd.remove_pod(kept)
    assert podd.net.allocated() == [] and podd.netns_files() == []  # the lost pod's IP went too
