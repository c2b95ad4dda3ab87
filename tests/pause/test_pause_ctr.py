"""The pause image in a real ctrpyd: imported at first use, run by the stock ctr as a container.

The container runs pause as PID 1 of its PID namespace (as user 65535, from the image config); a
busybox container joins that namespace (``ctr run --with-ns pid:...``) and leaves orphans behind,
which the kernel hands to pause, which must reap them; ``ctr tasks kill`` (SIGTERM) ends it with
status 0; SIGHUP does not.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from ctrpy.images import store as image_store
from ctrpy.manager.cri.pause import PauseImages, ensure_pause_image_sync
from ctrpy.pause.image import pause_archive
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.pause.procs import children, signal_set, stat_fields, status
from tests.support.ctrpyd import Daemon
from tests.support.polling import wait_until

NAMESPACE = "k8s.io"
NAME = "registry.k8s.io/pause:3.10"  # the [cri] sandbox_image default, under which ctrpyd has its own
BUSYBOX = "docker.io/library/busybox:latest"


@pytest.fixture
def k8s(daemon: Daemon) -> Iterator[Daemon]:
    """The daemon; every task and container of the k8s.io namespace removed afterwards."""
    try:
        yield daemon
    finally:
        for task in daemon.ctr("tasks", "ls", "-q", namespace=NAMESPACE).stdout.split():
            daemon.ctr("tasks", "rm", "-f", task, namespace=NAMESPACE)
        for container in daemon.ctr("containers", "ls", "-q", namespace=NAMESPACE).stdout.split():
            daemon.ctr("containers", "rm", container, namespace=NAMESPACE)


def ctr(daemon: Daemon, *args: str) -> str:
    result = daemon.ctr(*args, namespace=NAMESPACE)
    assert result.returncode == 0, f"{args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def task(daemon: Daemon, container: str) -> tasks_pb2.GetResponse:
    with daemon.client(NAMESPACE) as client:
        response: tasks_pb2.GetResponse = client.call(client.tasks.Get,
                                                      tasks_pb2.GetRequest(container_id=container))
        return response


def running_pid(daemon: Daemon, container: str) -> int:
    """The host pid of a task once it runs with its handlers installed."""
    def ready() -> int:
        process = task(daemon, container).process
        caught = {signal.SIGTERM, signal.SIGCHLD} <= signal_set(process.pid, "SigCgt") if process.pid else False
        return process.pid if process.status == 2 and caught else 0  # 2: RUNNING
    return wait_until(ready, f"{container} to run with its handlers set")


def stopped_status(daemon: Daemon, container: str) -> int:
    def stopped() -> int | None:
        process = task(daemon, container).process
        return process.exit_status if process.status == 3 else None  # 3: STOPPED
    return wait_until(lambda: (code := stopped()) is not None and (code,), f"{container} to stop")[0]


def test_first_use_imports_later_uses_find_it(k8s: Daemon) -> None:
    first = ensure_pause_image_sync(k8s.address, NAMESPACE, NAME)
    _, info = pause_archive(NAME)
    assert first.imported and first.config_digest == info.config_digest
    assert first.manifest_digest == info.manifest_digest and first.chain_id == info.chain_ids[-1]
    again = ensure_pause_image_sync(k8s.address, NAMESPACE, NAME)
    assert not again.imported and again.config_digest == first.config_digest
    listed = ctr(k8s, "images", "ls")
    assert NAME in listed and first.manifest_digest in listed
    assert ctr(k8s, "images", "check").count("complete") == 1
    # Removed, or the name pointed elsewhere: the next sandbox imports it again.
    ctr(k8s, "images", "rm", "--sync", NAME)
    assert ensure_pause_image_sync(k8s.address, NAMESPACE, NAME).imported
    archive = k8s.base / "busybox.tar"
    write_oci_layout_tar(busybox_image(NAME), archive)
    ctr(k8s, "images", "import", str(archive))
    replaced = ensure_pause_image_sync(k8s.address, NAMESPACE, NAME)
    assert replaced.imported
    with k8s.client(NAMESPACE) as client:
        assert image_store.get(client, NAME).target.digest == info.manifest_digest


def test_concurrent_first_uses_import_once(k8s: Daemon) -> None:
    provider = PauseImages(k8s.address)

    async def both() -> list[bool]:
        results = await asyncio.gather(provider.ensure(NAMESPACE, NAME), provider.ensure(NAMESPACE, NAME))
        return [result.imported for result in results]

    assert sorted(asyncio.run(both())) == [False, True]


def test_runs_as_pid1_reaps_orphans_of_its_namespace_and_stops_on_sigterm(k8s: Daemon) -> None:
    ensure_pause_image_sync(k8s.address, NAMESPACE, NAME)
    ctr(k8s, "run", "-d", NAME, "sandbox")
    pid = running_pid(k8s, "sandbox")
    info = status(pid)
    assert info["NSpid"].split()[-1] == "1", info  # PID 1 in its own namespace
    assert info["Uid"].split()[0] == "65535" and info["Gid"].split()[0] == "65535", info
    assert signal.SIGHUP in signal_set(pid, "SigIgn")

    # A second container in the sandbox's PID namespace; each sub-shell leaves an orphan sleep.
    archive = k8s.base / "busybox.tar"
    write_oci_layout_tar(busybox_image(), archive)
    ctr(k8s, "images", "import", str(archive))
    ctr(k8s, "run", "-d", "--with-ns", f"pid:/proc/{pid}/ns/pid", BUSYBOX, "app",
        "sh", "-c", "(sleep 1000 &); (sleep 1000 &); exec sleep 1000")
    orphans = wait_until(lambda: (kids := children(pid)) and len(kids) == 2 and kids,
                         "two orphans reparented to pause")
    for orphan in orphans:
        os.kill(orphan, signal.SIGKILL)
    wait_until(lambda: all(stat_fields(orphan) is None for orphan in orphans), "pause to reap the orphans")

    ctr(k8s, "tasks", "kill", "-s", "SIGHUP", "sandbox")  # ignored
    ctr(k8s, "tasks", "kill", "sandbox")  # SIGTERM, ctr's default
    assert stopped_status(k8s, "sandbox") == 0
    ctr(k8s, "tasks", "rm", "sandbox")  # ctr exits with the task's status: 0
