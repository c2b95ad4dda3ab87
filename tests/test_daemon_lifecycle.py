"""ctrpyd as a process: restarts, signals, crashes, health, reflection, side-by-side instances."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from ctrpy.errors import InvalidArgument
from tests.support.ctrpyd import Daemon
from tests.test_containers_service import make_container
from tests.test_images_leases_service import make_image


def server_uuid(daemon: Daemon) -> str:
    line = next(line for line in daemon.ctr("version").stdout.splitlines() if "UUID:" in line)
    return line.split()[-1]


def test_restart_keeps_every_record_and_the_uuid(daemon: Daemon) -> None:
    uuid = server_uuid(daemon)
    with daemon.client("keep") as client:
        client.call(client.leases.Create, leases_pb2.CreateRequest(id="l1", labels={"a": "b"}))
        client.call(client.containers.Create, containers_pb2.CreateContainerRequest(container=make_container("c1")))
        client.call(client.images.Create, images_pb2.CreateImageRequest(image=make_image("example.com/i:1")))
    assert daemon.ctr("namespaces", "label", "keep", "x=y").returncode == 0
    daemon.restart()
    assert server_uuid(daemon) == uuid
    with daemon.client("keep") as client:
        assert [lease.id for lease in client.call(client.leases.List, leases_pb2.ListRequest()).leases] == ["l1"]
        container = client.call(client.containers.Get, containers_pb2.GetContainerRequest(id="c1")).container
        assert container.spec == make_container("c1").spec
        assert client.call(client.images.Get, images_pb2.GetImageRequest(name="example.com/i:1")).image.target.size == 528
    assert "x=y" in daemon.ctr("namespaces", "ls").stdout


@pytest.mark.parametrize("bad", ["../x", "", "a" * 77, "a/b", "-lead", "trail.", "a..b", "a b", "ünï"])
def test_bad_identifiers_are_invalid_argument_and_write_nothing(daemon: Daemon, bad: str) -> None:
    with daemon.client() as client:
        with pytest.raises(InvalidArgument):
            client.call(client.containers.Create, containers_pb2.CreateContainerRequest(container=make_container(bad)))
        with pytest.raises(InvalidArgument):
            client.call(client.namespaces.Create, namespace_pb2.CreateNamespaceRequest(
                namespace=namespace_pb2.Namespace(name=bad)))
        assert not client.call(client.containers.List, containers_pb2.ListContainersRequest()).containers
        assert not client.call(client.namespaces.List, namespace_pb2.ListNamespacesRequest()).namespaces
    if bad:
        result = daemon.ctr("namespaces", "create", "--", bad)
        assert result.returncode == 1 and "invalid argument" in result.stderr, result.stderr


def test_identifier_of_76_characters_is_accepted(daemon: Daemon) -> None:
    with daemon.client() as client:
        client.call(client.containers.Create, containers_pb2.CreateContainerRequest(container=make_container("a" * 76)))


def test_kill_during_a_burst_of_writes_leaves_a_consistent_store(daemon: Daemon) -> None:
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer(worker: int) -> None:
        with daemon.client(timeout=5) as client:
            for n in range(100_000):
                if stop.is_set():
                    return
                cid = f"w{worker}-{n}"
                try:
                    client.call(client.containers.Create, containers_pb2.CreateContainerRequest(container=make_container(cid)))
                except Exception:
                    return
                acknowledged.append(cid)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    daemon.kill()
    stop.set()
    for thread in threads:
        thread.join(10)
    assert len(acknowledged) > 20

    db = sqlite3.connect(daemon.root / "meta.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    daemon.start()
    with daemon.client() as client:
        stored = {c.id for c in client.call(client.containers.List, containers_pb2.ListContainersRequest()).containers}
    # Every acknowledged write survived; at most the calls in flight at the kill were added too.
    assert set(acknowledged) <= stored
    assert len(stored - set(acknowledged)) <= 4


def test_sigterm_drains_and_exits_cleanly(daemon: Daemon) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    assert not daemon.address.exists()
    assert not Path(f"{daemon.address}.ttrpc").exists()  # the shims' socket goes too
    daemon.process = None


def test_health_serving_and_reflection_lists_services(daemon: Daemon) -> None:
    with grpc.insecure_channel(f"unix:{daemon.address}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        named = health.Check(health_pb2.HealthCheckRequest(service="containerd.services.containers.v1.Containers"))
        assert named.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "containerd.services.version.v1.Version",
        "containerd.services.namespaces.v1.Namespaces",
        "containerd.services.containers.v1.Containers",
        "containerd.services.images.v1.Images",
        "containerd.services.leases.v1.Leases",
        "containerd.services.events.v1.Events",
        "grpc.health.v1.Health",
    } <= services


def test_socket_is_root_only(daemon: Daemon) -> None:
    for path in (daemon.address, Path(f"{daemon.address}.ttrpc")):  # the gRPC socket, the shims'
        assert path.stat().st_mode & 0o777 == 0o660
        assert path.stat().st_uid == 0


def test_two_daemons_side_by_side_do_not_touch_each_other(daemon: Daemon) -> None:
    other = Daemon()
    try:
        other.start()
        assert daemon.ctr("namespaces", "create", "only-here").returncode == 0
        assert "only-here" not in other.ctr("namespaces", "ls", "-q").stdout
        assert server_uuid(daemon) != server_uuid(other)
    finally:
        other.cleanup()


def test_second_daemon_on_the_same_root_is_refused(daemon: Daemon) -> None:
    clash = subprocess.run(
        [sys.executable, "-m", "ctrpy.manager.main", "--root", str(daemon.root), "--state", str(daemon.base / "s2"),
         "--address", str(daemon.base / "other.sock")],
        capture_output=True, text=True, timeout=30,
    )
    assert clash.returncode == 1 and "in use by another ctrpyd" in clash.stderr
    clash = subprocess.run(
        [sys.executable, "-m", "ctrpy.manager.main", "--root", str(daemon.base / "r2"), "--state", str(daemon.base / "s2"),
         "--address", str(daemon.address)],
        capture_output=True, text=True, timeout=30,
    )
    assert clash.returncode == 1 and "in use by a running server" in clash.stderr


def test_beside_a_real_containerd(daemon: Daemon, tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    from tests.support.containerd import reference_containerd

    with reference_containerd(Path(tmp_path)) as containerd:
        containerd.ctr("namespaces", "create", "theirs")
        assert daemon.ctr("namespaces", "create", "ours").returncode == 0
        assert "theirs" not in daemon.ctr("namespaces", "ls", "-q").stdout
        assert "ours" not in containerd.ctr("namespaces", "ls", "-q").stdout
