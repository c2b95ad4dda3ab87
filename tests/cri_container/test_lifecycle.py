"""CreateContainer ... RemoveContainer through the generated CRI client against a real ctrpyd,
real runc and real CNI: states, exit codes and reasons, logs, listing, idempotence, and the
container as ``ctr -n k8s.io`` shows it."""

from __future__ import annotations

import json
from pathlib import Path

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from tests.cri_container.support import IMAGE, Pod, log_lines
from tests.support.polling import wait_until


def test_create_start_status_stop_remove(pod: Pod) -> None:
    config = pod.container_config("web", "sh", "-c", "echo hello; echo oops >&2; exec sleep 600",
                                  labels={"app": "web"})
    container_id = pod.create(config)
    status = pod.status(container_id).status
    assert status.state == api.CONTAINER_CREATED
    assert status.metadata.name == "web" and status.labels == {"app": "web"}
    assert status.annotations == {"note": "web"}
    assert status.created_at > 0 and status.started_at == 0
    assert status.image.image == IMAGE and status.image_ref.startswith("sha256:")
    assert status.log_path == str(pod.log_dir / "web.log")

    # ctr sees a containerd container with the CRI's labels, and no task yet.
    listed = pod.daemon.ctr("containers", "ls", namespace="k8s.io").stdout
    assert container_id in listed
    info = json.loads(pod.daemon.ctr("containers", "info", container_id, namespace="k8s.io").stdout)
    assert info["Labels"]["io.cri-containerd.kind"] == "container" and info["Labels"]["app"] == "web"
    assert info["Image"] == IMAGE

    pod.start(container_id)
    assert pod.state(container_id) == api.CONTAINER_RUNNING
    assert pod.status(container_id).status.started_at >= status.created_at
    wait_until(lambda: "hello" in log_lines(pod.log("web")) and "oops" in log_lines(pod.log("web")), "the log")
    assert " stdout F hello" in pod.log("web") and " stderr F oops" in pod.log("web")
    verbose = json.loads(pod.status(container_id, verbose=True).info["info"])
    assert verbose["sandboxID"] == pod.id and verbose["pid"] > 0
    assert verbose["runtimeSpec"]["process"]["args"][0] == "sh"

    pod.stop(container_id, timeout=10)
    status = pod.status(container_id).status
    assert status.state == api.CONTAINER_EXITED
    assert status.exit_code == 128 + 15 and status.reason == "Error"  # sleep dies of SIGTERM
    assert status.finished_at >= status.started_at
    pod.stop(container_id)  # again: fine

    pod.remove(container_id)
    assert [c.id for c in pod.list() if c.id == container_id] == []
    pod.remove(container_id)  # again: fine
    pod.stop(container_id)  # a gone container stops fine too
    with pod.cri() as c:
        try:
            c.call(c.runtime.ContainerStatus, api.ContainerStatusRequest(container_id=container_id))
            raise AssertionError("status of a removed container")
        except errors.NotFound:
            pass
    assert container_id not in pod.daemon.ctr("containers", "ls", namespace="k8s.io").stdout
    pod.made.remove(container_id)


def test_exit_codes_and_reasons(pod: Pod) -> None:
    done = pod.run("done", "sh", "-c", "echo bye")
    failed = pod.run("failed", "sh", "-c", "exit 3")
    status = wait_until(lambda: pod.exited(done), "done to exit")
    assert status.exit_code == 0 and status.reason == "Completed"
    status = wait_until(lambda: pod.exited(failed), "failed to exit")
    assert status.exit_code == 3 and status.reason == "Error"
    assert log_lines(pod.log("done")) == ["bye"]


def test_image_by_id_and_mounts_in_status(pod: Pod, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "hello.txt").write_text("from the host\n")
    first = pod.container_config("first", "true")
    first.linux.security_context.run_as_user.value = 1234
    first_id = pod.create(first)
    status = pod.status(first_id).status
    assert status.user.linux.uid == 1234  # the process's user, from the spec
    image_id = status.image_id
    assert image_id.startswith("sha256:")
    config = pod.container_config("by-id", "sleep", "600", image=image_id)
    config.mounts.append(api.Mount(container_path="/mnt/shared", host_path=str(host), readonly=True))
    container_id = pod.create(config)
    pod.start(container_id)
    status = pod.status(container_id).status
    assert status.image.image == IMAGE and status.image_id == image_id  # the tag, found from the id
    assert [(m.container_path, m.host_path, m.readonly) for m in status.mounts] == [
        ("/mnt/shared", str(host), True)]
    assert pod.exec_sync(container_id, "cat", "/mnt/shared/hello.txt").stdout == b"from the host\n"
    assert pod.exec_sync(container_id, "touch", "/mnt/shared/new").exit_code != 0  # read-only


def test_create_resolves_its_image_afresh_after_ctr_tags_one(pod: Pod) -> None:
    """A missing image is NotFound and leaves nothing (the name is free again); once the stock
    ctr tags it, the next create finds it, though the CRI keeps its list of images between
    calls (ctrpy.manager.cri.images)."""
    pod.create(pod.container_config("first", "true"))  # the CRI's image list is kept from here
    missing = "docker.io/library/tagged-later:1"
    try:
        pod.create(pod.container_config("later", "true", image=missing))
    except errors.NotFound as error:
        assert f'failed to resolve image "{missing}"' in str(error)
    else:
        raise AssertionError("a create with a missing image succeeded")
    assert [c.metadata.name for c in pod.list()] == ["first"]
    tagged = pod.daemon.ctr("images", "tag", IMAGE, missing, namespace="k8s.io")
    assert tagged.returncode == 0, tagged.stderr
    try:
        container_id = pod.create(pod.container_config("later", "true", image=missing))
        assert pod.state(container_id) == api.CONTAINER_CREATED
    finally:
        pod.daemon.ctr("images", "rm", missing, namespace="k8s.io")
