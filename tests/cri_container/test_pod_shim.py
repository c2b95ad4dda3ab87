"""One shim per pod: a CRI pod's containers are tasks of its sandbox's shim (``[cri]
shim_per_pod``, on by default), as containerd's runc v2 shim serves a whole pod.

The shims are counted by the ``shim.pid`` their tasks' bundles name. A pod's shim outlives the
removal of any one of its tasks (the sandbox's included) and exits with the last; ctrpyd finds
every task of it again after kill -9; when the shim itself is killed, every container of the pod
ends, is cleaned up and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.shim.spare import SPARE_PREFIX
from tests.crash.support import alive, mounts_under
from tests.cri_container.support import Pod, busybox_daemon, log_lines, make_pod
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until

NAMESPACE = "k8s.io"


def bundle(daemon: PodDaemon, task_id: str) -> Path:
    return daemon.state / "tasks" / NAMESPACE / task_id


def shim_pid(daemon: PodDaemon, task_id: str) -> int:
    return int((bundle(daemon, task_id) / "shim.pid").read_text())


def task_pid(pod: Pod, container_id: str) -> int:
    return int(json.loads(pod.status(container_id, verbose=True).info["info"])["pid"])


def shim_sockets(daemon: PodDaemon) -> list[str]:
    """The sockets in the shims' directory, but the template's and its spare shim's."""
    return sorted(
        p.name for p in (daemon.state / "s").iterdir()
        if p.name != "template" and not p.name.startswith(SPARE_PREFIX)
    )  # fmt: skip


def two_containers(pod: Pod) -> tuple[str, str]:
    first = pod.run("first", "sh", "-c", "echo one; exec sleep 600")
    second = pod.run("second", "sh", "-c", "echo two; exec sleep 600")
    wait_until(lambda: log_lines(pod.log("first")) == ["one"], "the first container's output")
    wait_until(lambda: log_lines(pod.log("second")) == ["two"], "the second container's output")
    return first, second


def assert_clean(daemon: PodDaemon, shim: int) -> None:
    """The pod is gone: its shim exited, no bundle, socket or mount is left of it."""
    wait_until(lambda: not alive(shim), "the pod's shim to exit")
    assert list((daemon.state / "tasks").glob(f"{NAMESPACE}/*")) == []
    wait_until(lambda: shim_sockets(daemon) == [], "the shim sockets to go")
    assert mounts_under(daemon.state / "tasks") == []


def test_a_pod_runs_in_one_shim(podd: PodDaemon, tmp_path: Path) -> None:
    pod = make_pod(podd, tmp_path)
    first, second = two_containers(pod)
    shims = {shim_pid(podd, task) for task in (pod.id, first, second)}
    assert len(shims) == 1
    (shim,) = shims
    assert alive(shim)
    # Each task keeps what is its own: the bundle, the exec processes, the log, the stats.
    assert pod.exec_sync(first, "echo", "hi").stdout == b"hi\n"
    assert pod.exec_sync(second, "sh", "-c", "echo err >&2; exit 3").exit_code == 3
    assert task_pid(pod, first) != task_pid(pod, second)
    with pod.cri() as c:
        stats = c.call(c.runtime.ContainerStats, api.ContainerStatsRequest(container_id=second)).stats
    assert stats.attributes.id == second

    # Removing one container leaves the other running, in the same shim.
    pod.stop(first)
    pod.remove(first)
    pod.made.remove(first)
    assert not bundle(podd, first).exists()
    assert pod.state(second) == api.CONTAINER_RUNNING
    assert pod.exec_sync(second, "echo", "still").stdout == b"still\n"
    assert alive(shim)
    third = pod.run("third", "sh", "-c", "echo three; exec sleep 600")
    assert shim_pid(podd, third) == shim
    assert pod.exec_sync(third, "echo", "joined").stdout == b"joined\n"

    pod.cleanup()
    assert_clean(podd, shim)


def test_deleting_the_sandbox_task_leaves_the_containers_running(podd: PodDaemon, tmp_path: Path) -> None:
    """The pause container's task goes (through the containerd API, which the kubelet never
    does): the shim keeps serving the pod's containers, and exits with the last of them."""
    pod = make_pod(podd, tmp_path)
    config = pod.container_config("only", "sh", "-c", "echo up; exec sleep 600")
    # A PID namespace of its own: in the pod's, the pause process's death would end it.
    config.linux.security_context.namespace_options.pid = api.CONTAINER
    only = pod.create(config)
    pod.start(only)
    wait_until(lambda: log_lines(pod.log("only")) == ["up"], "the container's output")
    shim = shim_pid(podd, only)
    assert shim_pid(podd, pod.id) == shim
    podd.ctr("tasks", "kill", "--signal", "SIGKILL", pod.id, namespace=NAMESPACE)
    wait_until(lambda: podd.ctr("tasks", "delete", pod.id, namespace=NAMESPACE).returncode == 0,
               "the sandbox's task to be deleted")
    assert not bundle(podd, pod.id).exists()
    assert alive(shim)
    assert pod.state(only) == api.CONTAINER_RUNNING
    assert pod.exec_sync(only, "echo", "alone").stdout == b"alone\n"
    pod.stop(only)
    assert pod.exited(only) is not None
    pod.cleanup()
    assert_clean(podd, shim)


def test_kill9_of_ctrpyd_finds_every_task_of_the_pod(podd: PodDaemon, tmp_path: Path) -> None:
    pod = make_pod(podd, tmp_path)
    first, second = two_containers(pod)
    shim = shim_pid(podd, pod.id)
    pids = {c: task_pid(pod, c) for c in (first, second)}
    podd.kill()
    podd.start()
    for container_id, pid in pids.items():
        assert pod.state(container_id) == api.CONTAINER_RUNNING
        assert task_pid(pod, container_id) == pid
    assert podd.status(pod.id).status.state == api.SANDBOX_READY
    assert pod.exec_sync(first, "echo", "back").stdout == b"back\n"
    assert pod.exec_sync(second, "sh", "-c", "echo $0 again").stdout == b"sh again\n"
    # A container made after the restart joins the pod's shim again.
    third = pod.run("third", "true")
    assert shim_pid(podd, third) == shim
    wait_until(lambda: pod.exited(third), "the third container to exit")
    pod.cleanup()
    assert_clean(podd, shim)


def test_kill9_of_the_pod_shim_ends_every_container(podd: PodDaemon, tmp_path: Path) -> None:
    pod = make_pod(podd, tmp_path)
    first, second = two_containers(pod)
    shim = shim_pid(podd, pod.id)
    pids = [task_pid(pod, c) for c in (first, second)]
    os.kill(shim, signal.SIGKILL)
    for container_id in (first, second):
        status = wait_until(lambda c=container_id: pod.exited(c), "the container to be EXITED")
        assert status.exit_code != 0
    wait_until(lambda: podd.status(pod.id).status.state == api.SANDBOX_NOTREADY, "the pod to be NOTREADY")
    wait_until(lambda: not any(alive(pid) for pid in pids), "the containers' processes to end")
    # Cleaned up at once: only the tombstones (exit statuses) are left until the pod goes.
    wait_until(lambda: mounts_under(podd.state / "tasks") == [], "the rootfs mounts to go")
    pod.cleanup()
    assert_clean(podd, shim)


@pytest.fixture
def per_container(tmp_path: Path) -> Iterator[PodDaemon]:
    def configure(daemon: PodDaemon) -> None:
        config = Path(daemon.extra_args[1])
        config.write_text(config.read_text() + "shim_per_pod = false\n")  # [cri] is the last table

    with busybox_daemon(tmp_path, configure) as daemon:
        yield daemon


def test_shim_per_pod_false_gives_each_container_its_shim(per_container: PodDaemon, tmp_path: Path) -> None:
    pod = make_pod(per_container, tmp_path)
    first, second = two_containers(pod)
    shims = [shim_pid(per_container, task) for task in (pod.id, first, second)]
    assert len(set(shims)) == 3
    pod.cleanup()
    for shim in shims:
        wait_until(lambda s=shim: not alive(s), "the shims to exit")
