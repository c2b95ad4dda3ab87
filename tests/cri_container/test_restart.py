"""CRI containers across ctrpyd restarts: kill -9 and a clean stop keep every container in its
state; one whose task died while ctrpyd was down is EXITED with its exit code."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager import failpoints
from tests.crash.support import alive
from tests.cri_container.support import (
    assert_only_the_pod_left,
    crash_in_create,
    import_busybox,
    log_lines,
    make_pod,
)
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_containers_survive_a_restart(podd: PodDaemon, tmp_path: Path, how: str) -> None:
    pod = make_pod(podd, tmp_path)
    running = pod.run("running", "sh", "-c", "echo one; sleep 600; echo never")
    exited = pod.run("exited", "sh", "-c", "exit 5")
    created = pod.create(pod.container_config("created", "sleep", "600"))
    doomed = pod.run("doomed", "sh", "-c", "trap 'exit 9' TERM; echo up; while true; do sleep 0.1; done")
    wait_until(lambda: pod.exited(exited), "exited to exit")
    wait_until(lambda: "up" in log_lines(pod.log("doomed")), "doomed to start")
    doomed_pid = int(json.loads(pod.status(doomed, verbose=True).info["info"])["pid"])
    before = {c: pod.status(c).status for c in (running, exited, created, doomed)}

    if how == "kill":
        podd.kill()
    else:
        podd.stop()
    os.kill(doomed_pid, signal.SIGTERM)  # its task ends while ctrpyd is down
    wait_until(lambda: not alive(doomed_pid), "doomed to exit")
    podd.start()

    assert pod.state(running) == api.CONTAINER_RUNNING
    assert pod.status(running).status.started_at == before[running].started_at
    status = pod.status(exited).status
    assert status.state == api.CONTAINER_EXITED and status.exit_code == 5
    assert status.finished_at == before[exited].finished_at
    assert pod.state(created) == api.CONTAINER_CREATED
    status = wait_until(lambda: pod.exited(doomed), "doomed's exit")
    assert status.exit_code == 9 and status.reason == "Error"
    # Still managed: exec, start, stop and logs work as before.
    assert pod.exec_sync(running, "echo", "hi").stdout == b"hi\n"
    pod.start(created)
    assert pod.state(created) == api.CONTAINER_RUNNING
    pod.stop(running, timeout=5)
    assert pod.state(running) == api.CONTAINER_EXITED
    assert log_lines(pod.log("running")) == ["one"]
    with pytest.raises(errors.AlreadyExists):  # the name is still reserved
        pod.create(pod.container_config("running", "true"))
    pod.cleanup()
    assert [c for c in pod.list() if c.pod_sandbox_id == pod.id] == []


def test_kill9_during_create_leaves_nothing_after_restart(crashd: PodDaemon, tmp_path: Path) -> None:
    pod, config = crash_in_create(crashd, tmp_path, "crashy")
    crashd.start()
    assert_only_the_pod_left(crashd, pod)
    assert list((crashd.root / "cri" / "containers").glob("*")) == []
    container_id = pod.create(config)  # the name is free again
    pod.start(container_id)
    assert pod.state(container_id) == api.CONTAINER_RUNNING
    pod.cleanup()


def test_kill9_during_start_leaves_a_created_container(crashd: PodDaemon, tmp_path: Path) -> None:
    point = failpoints.CRI_CONTAINER_START_AFTER_TASK_CREATE
    crashd.failpoints = point
    crashd.start()
    import_busybox(crashd, tmp_path)
    pod = make_pod(crashd, tmp_path)
    container_id = pod.create(pod.container_config("crashy", "sh", "-c", "echo started; sleep 600"))
    with pytest.raises(errors.CtrpyError):
        pod.start(container_id)
    crashd.died(point)
    crashd.failpoints = ""
    crashd.start()
    assert pod.state(container_id) == api.CONTAINER_CREATED
    assert list((crashd.state / "tasks").glob(f"k8s.io/{container_id}")) == []  # the half-made task is gone
    pod.start(container_id)
    wait_until(lambda: log_lines(pod.log("crashy")) == ["started"], "the container to run")
    pod.cleanup()


@pytest.mark.parametrize("shim", ["alive", "killed"])
def test_oom_kill_while_ctrpyd_is_down_is_reported_after_restart(podd: PodDaemon, tmp_path: Path,
                                                                 shim: str) -> None:
    """The kernel's OOM killer ends a container while ctrpyd is not running: after the restart
    its status says OOMKilled (as containerd's does), not Error. Also when the shim died too, so
    that its queued OOM event is lost and only what it wrote in the bundle is left."""
    pod = make_pod(podd, tmp_path)
    # Waits for the go-ahead (a file the test puts into its root), then grows a string until the
    # 16 MiB limit has the kernel kill it.
    script = "while [ ! -e /tmp/go ]; do sleep 0.1; done; x=a; while true; do x=$x$x$x$x; done"
    hog = pod.run("hog", "sh", "-c", script, memory_limit_in_bytes=16 * 1024 * 1024)
    pid = int(json.loads(pod.status(hog, verbose=True).info["info"])["pid"])
    podd.kill()
    Path(f"/proc/{pid}/root/tmp/go").write_text("")
    wait_until(lambda: not alive(pid), "the OOM kill", timeout=60)
    bundle = podd.state / "tasks" / "k8s.io" / hog
    wait_until(lambda: (bundle / "exit").exists(), "the shim to record the exit")
    assert (bundle / "oom").exists()
    if shim == "killed":
        shim_pid = int((bundle / "shim.pid").read_text())
        os.kill(shim_pid, signal.SIGKILL)
        wait_until(lambda: not alive(shim_pid), "the shim to die")
    podd.start()
    status = wait_until(lambda: pod.exited(hog), "the recorded exit")
    assert (status.reason, status.exit_code) == ("OOMKilled", 137)
    pod.cleanup()
