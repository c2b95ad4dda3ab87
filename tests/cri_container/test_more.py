"""ListContainers and StreamContainers filters, OOMKilled, UpdateContainerResources,
ReopenContainerLog, the image's STOPSIGNAL, name reservation, and a removed pod's containers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from tests.crash.support import cgroup_dirs
from tests.cri_container.support import Pod, log_lines, make_pod
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until


def test_list_filters_and_stream(pod: Pod) -> None:
    running = pod.run("a", "sleep", "600", labels={"tier": "front"})
    created = pod.create(pod.container_config("b", "sleep", "600", labels={"tier": "back"}))
    ids = {c.id for c in pod.list(api.ContainerFilter(pod_sandbox_id=pod.id))}
    assert ids == {running, created}
    assert [c.id for c in pod.list(api.ContainerFilter(id=running[:12]))] == [running]
    state = api.ContainerFilter(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING), pod_sandbox_id=pod.id)
    assert [c.id for c in pod.list(state)] == [running]
    assert [c.id for c in pod.list(api.ContainerFilter(label_selector={"tier": "back"}))] == [created]
    item = next(c for c in pod.list() if c.id == running)
    assert item.pod_sandbox_id == pod.id and item.state == api.CONTAINER_RUNNING and item.image_ref
    with pod.cri() as c:
        streamed = [x.id for batch in c.stream(c.runtime.StreamContainers, api.StreamContainersRequest(
            filter=api.ContainerFilter(pod_sandbox_id=pod.id))) for x in batch.containers]
    assert sorted(streamed) == sorted([running, created])


def test_oom_killed(pod: Pod) -> None:
    # 16 MiB limit; the shell's string grows until the kernel's OOM killer ends it.
    script = "x=a; while true; do x=$x$x$x$x; done"
    container_id = pod.run("hog", "sh", "-c", script, memory_limit_in_bytes=16 * 1024 * 1024)
    status = wait_until(lambda: pod.exited(container_id), "the OOM kill", timeout=60)
    assert status.reason == "OOMKilled" and status.exit_code == 137


def test_update_resources_and_reopen_log(pod: Pod) -> None:
    container_id = pod.run("box", "sh", "-c", "while true; do echo tick; sleep 0.2; done",
                           memory_limit_in_bytes=32 * 1024 * 1024)
    with pod.cri() as c:
        c.call(c.runtime.UpdateContainerResources, api.UpdateContainerResourcesRequest(
            container_id=container_id, linux=api.LinuxContainerResources(memory_limit_in_bytes=64 * 1024 * 1024,
                                                                         cpu_shares=512)))
    limits = [d / "memory.limit_in_bytes" for d in cgroup_dirs(f"{pod.daemon.cgroup_parent}/{container_id}")
              if (d / "memory.limit_in_bytes").exists()]
    assert limits and int(limits[0].read_text()) == 64 * 1024 * 1024
    assert pod.status(container_id).status.resources.linux.memory_limit_in_bytes == 64 * 1024 * 1024

    log = pod.log_dir / "box.log"
    wait_until(lambda: "tick" in log_lines(pod.log("box")), "ticks")
    os.rename(log, pod.log_dir / "box.log.1")
    with pod.cri() as c:
        c.call(c.runtime.ReopenContainerLog, api.ReopenContainerLogRequest(container_id=container_id))
    wait_until(lambda: "tick" in log_lines(pod.log("box")), "ticks in the new file")
    pod.stop(container_id)
    with pod.cri() as c, pytest.raises(errors.FailedPrecondition):
        c.call(c.runtime.ReopenContainerLog, api.ReopenContainerLogRequest(container_id=container_id))


def test_stop_signal_and_timeout(pod: Pod) -> None:
    # SIGTERM is trapped and ignored: StopContainer must fall back to SIGKILL after the timeout.
    stubborn = pod.run("stubborn", "sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done")
    wait_until(lambda: "ready" in log_lines(pod.log("stubborn")), "the trap")
    pod.stop(stubborn, timeout=1)
    assert pod.status(stubborn).status.exit_code == 137
    # The config's stop signal (cri-api's stop_signal) is sent instead of SIGTERM.
    config = pod.container_config("usr1", "sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.1; done")
    config.stop_signal = api.SIGUSR1
    polite = pod.create(config)
    pod.start(polite)
    wait_until(lambda: os.path.exists(f"/proc/{_pid(pod, polite)}"), "the container")
    pod.stop(polite, timeout=30)
    assert pod.status(polite).status.exit_code == 42


def _pid(pod: Pod, container_id: str) -> int:
    import json

    return int(json.loads(pod.status(container_id, verbose=True).info["info"])["pid"])


def test_name_is_reserved_and_needs_a_ready_pod(pod: Pod) -> None:
    config = pod.container_config("same", "sleep", "600")
    pod.create(config)
    with pytest.raises(errors.AlreadyExists):
        pod.create(config)
    config.metadata.attempt = 1
    pod.create(config)
    bad = pod.container_config("noimage", "true", image="docker.io/library/nothing:here")
    with pytest.raises(errors.NotFound):
        pod.create(bad)


def test_removing_a_pod_removes_its_containers(pods: PodDaemon, tmp_path: Path) -> None:
    pod = make_pod(pods, tmp_path)
    running = pod.run("a", "sleep", "600")
    created = pod.create(pod.container_config("b", "sleep", "600"))
    pods.stop_pod(pod.id)
    assert pod.state(running) == api.CONTAINER_EXITED
    with pod.cri() as c, pytest.raises(errors.FailedPrecondition):
        c.call(c.runtime.StartContainer, api.StartContainerRequest(container_id=created))
    pods.remove_pod(pod.id)
    wait_until(lambda: not [c for c in pod.list() if c.id in (running, created)], "the containers to go")
    listed = pods.ctr("containers", "ls", namespace="k8s.io").stdout
    assert running not in listed and created not in listed
