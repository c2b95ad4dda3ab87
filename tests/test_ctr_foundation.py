"""The stock ctr against a real ctrpyd: the commands of the foundation issue."""

from __future__ import annotations

import re

from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from tests.support.ctrpyd import Daemon


def test_version_prints_server_version_and_uuid(daemon: Daemon) -> None:
    result = daemon.ctr("version")
    assert result.returncode == 0, result.stderr
    server = result.stdout.split("Server:")[1]
    assert "Version:  0.1.0" in server
    assert re.search(r"UUID: [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", server)


def test_plugins_ls_lists_loaded_services(daemon: Daemon) -> None:
    result = daemon.ctr("plugins", "ls")
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split()[:2]): line.split()[-1] for line in result.stdout.splitlines()[1:]}
    for service in ("namespaces", "containers", "images", "leases", "version", "introspection", "events"):
        assert rows[("io.containerd.grpc.v1", service)] == "ok"
    assert rows[("io.containerd.metadata.v1", "sqlite")] == "ok"


def test_namespaces_create_label_ls_rm(daemon: Daemon) -> None:
    assert daemon.ctr("namespaces", "create", "foo", "a=b").returncode == 0
    duplicate = daemon.ctr("namespaces", "create", "foo")
    assert duplicate.returncode == 1
    assert 'namespace "foo": already exists' in duplicate.stderr
    assert daemon.ctr("namespaces", "label", "foo", "c=d").returncode == 0
    listing = daemon.ctr("namespaces", "ls")
    assert listing.returncode == 0
    assert re.search(r"^foo\s+a=b,c=d\s*$", listing.stdout, re.M), listing.stdout
    # Clearing a label: an empty value.
    assert daemon.ctr("namespaces", "label", "foo", "a=").returncode == 0
    assert re.search(r"^foo\s+c=d\s*$", daemon.ctr("namespaces", "ls").stdout, re.M)
    removed = daemon.ctr("namespaces", "rm", "foo")
    assert removed.returncode == 0 and removed.stdout.strip() == "foo"
    assert "foo" not in daemon.ctr("namespaces", "ls", "-q").stdout.split()


def test_namespaces_rm_missing_exits_zero(daemon: Daemon) -> None:
    result = daemon.ctr("namespaces", "rm", "nothere")
    assert result.returncode == 0, result.stderr


def test_namespaces_get_missing_answers_empty_labels(daemon: Daemon) -> None:
    """containerd's Go client (dockerd, nerdctl) reads a namespace's labels before creating
    it; containerd answers a missing one with its name and no labels, and creates nothing."""
    with daemon.client() as client:
        for name in ("moby", "bad/name"):
            got = client.call(client.namespaces.Get, namespace_pb2.GetNamespaceRequest(name=name))
            assert got.namespace.name == name and dict(got.namespace.labels) == {}
    assert daemon.ctr("namespaces", "ls", "-q").stdout.split() == []


def test_namespaces_rm_non_empty_is_failed_precondition(daemon: Daemon) -> None:
    # A lease alone does not keep a namespace (containerd deletes it with the namespace)...
    assert daemon.ctr("leases", "create", "--id", "hold", namespace="gone").returncode == 0
    assert daemon.ctr("namespaces", "rm", "gone").returncode == 0
    # ... a snapshot does.
    assert daemon.ctr("snapshots", "prepare", "k1", namespace="busy").returncode == 0
    result = daemon.ctr("namespaces", "rm", "busy")
    assert result.returncode == 1
    assert 'namespace "busy" must be empty, but it still has snapshots' in result.stderr
    assert "failed precondition" in result.stderr
    assert "busy" in daemon.ctr("namespaces", "ls", "-q").stdout.split()


def test_leases_create_ls_rm(daemon: Daemon) -> None:
    created = daemon.ctr("leases", "create", "--id", "l1", "--expires", "1h")
    assert created.returncode == 0, created.stderr
    random_lease = daemon.ctr("leases", "create")
    assert random_lease.returncode == 0
    random_id = random_lease.stdout.strip()
    listing = daemon.ctr("leases", "ls")
    assert re.search(r"^l1\s+\S+\s+containerd.io/gc.expire=\S+Z\s*$", listing.stdout, re.M), listing.stdout
    assert random_id in listing.stdout
    assert daemon.ctr("leases", "ls", "-q", "id==l1").stdout.split() == ["l1"]
    assert daemon.ctr("leases", "rm", "l1", random_id).returncode == 0
    assert daemon.ctr("leases", "ls", "-q").stdout.strip() == ""
    missing = daemon.ctr("leases", "rm", "l1")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_containers_and_images_ls_on_an_empty_store(daemon: Daemon) -> None:
    containers = daemon.ctr("containers", "ls")
    assert containers.returncode == 0, containers.stderr
    assert containers.stdout.split() == ["CONTAINER", "IMAGE", "RUNTIME"]
    images = daemon.ctr("images", "ls")
    assert images.returncode == 0, images.stderr
    assert images.stdout.split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
    assert daemon.ctr("images", "ls", "-q").stdout == ""


def test_images_rm_missing_warns_and_exits_zero(daemon: Daemon) -> None:
    result = daemon.ctr("images", "rm", "docker.io/library/nothere:latest")
    assert result.returncode == 0


def test_bad_namespace_header_is_invalid_argument(daemon: Daemon) -> None:
    result = daemon.ctr("leases", "create", "--id", "x", namespace="a/b")
    assert result.returncode == 1
    assert "invalid argument" in result.stderr
    assert daemon.ctr("namespaces", "ls", "-q").stdout.strip() == ""
