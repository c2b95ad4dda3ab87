"""The ctrpy CLI against a real ctrpyd: tables for people, JSON for programs, env defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from tests.support.ctrpyd import Daemon
from tests.test_containers_service import make_container


def ctrpy(daemon: Daemon, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ctrpy.cli.main", "--address", str(daemon.address), *args]
    if env is not None:
        command = [sys.executable, "-m", "ctrpy.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_version(daemon: Daemon) -> None:
    result = ctrpy(daemon, "version")
    assert result.returncode == 0, result.stderr
    assert "Server:" in result.stdout and "UUID:" in result.stdout
    data = json.loads(ctrpy(daemon, "--format", "json", "version").stdout)
    assert data["server"]["version"] == "0.1.0"


def test_namespaces_round_trip_and_env_defaults(daemon: Daemon) -> None:
    assert ctrpy(daemon, "namespaces", "create", "web", "team=a").returncode == 0
    assert ctrpy(daemon, "namespaces", "label", "web", "tier=1", "team=").returncode == 0
    table = ctrpy(daemon, "namespaces", "ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "LABELS"]
    assert table[1].split() == ["web", "tier=1"]
    env = {"CTRPY_ADDRESS": str(daemon.address), "CTRPY_NAMESPACE": "web"}
    assert ctrpy(daemon, "leases", "create", "--id", "l1", env=env).returncode == 0
    leases = json.loads(ctrpy(daemon, "--format", "json", "-n", "web", "leases", "ls").stdout)
    assert leases[0]["id"] == "l1" and "containerd.io/gc.expire" in leases[0]["labels"]
    # A lease does not keep its namespace: containerd deletes it with the namespace.
    assert ctrpy(daemon, "namespaces", "rm", "web", "missing").returncode == 0
    assert json.loads(ctrpy(daemon, "--format", "json", "-n", "web", "leases", "ls").stdout) == []


def test_containers_ls_info_label_rm(daemon: Daemon) -> None:
    with daemon.client() as client:
        client.call(client.containers.Create, containers_pb2.CreateContainerRequest(container=make_container("c1")))
    rows = ctrpy(daemon, "containers", "ls").stdout.splitlines()
    assert rows[1].split() == ["c1", "docker.io/library/busybox:latest", "io.containerd.runc.v2"]
    listed = json.loads(ctrpy(daemon, "--format", "json", "containers", "ls").stdout)
    assert listed[0]["id"] == "c1" and listed[0]["runtime"]["options"]["type_url"] == "containerd.runc.v1.Options"
    info = json.loads(ctrpy(daemon, "containers", "info", "c1").stdout)
    assert info["spec"]["process"]["args"] == ["sh"]  # the spec is shown decoded
    assert ctrpy(daemon, "containers", "label", "c1", "a=b").stdout.strip() == "a=b"
    assert ctrpy(daemon, "containers", "rm", "c1").returncode == 0
    missing = ctrpy(daemon, "containers", "rm", "c1")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_images_ls_empty_and_rm_missing(daemon: Daemon) -> None:
    assert ctrpy(daemon, "images", "ls").stdout.split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
    assert ctrpy(daemon, "images", "rm", "nothere:1").returncode == 0


def test_bad_input_is_reported_without_a_traceback(daemon: Daemon) -> None:
    result = ctrpy(daemon, "namespaces", "create", "a/b")
    assert result.returncode == 1
    assert result.stderr.startswith("ctrpy: identifier") and "Traceback" not in result.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "ctrpy.cli.main", "--address", str(daemon.base / "none.sock"), "--timeout", "2", "version"],
        capture_output=True, text=True, timeout=60,
    )
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
