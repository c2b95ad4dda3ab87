"""``ctrpy images pull --local``: the client does the registry work and writes through the API,
so it works against ctrpyd and containerd 1.6 alike (which has no Transfer service)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ctrpy.images import snapshots, store
from tests.support.containerd import reference_containerd
from tests.support.ctrpyd import Daemon

from .conftest import CTRPY, Filled, ctrpy


def test_local_pull_into_ctrpyd(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    ref = f"{filled.host}/library/busybox:1"
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--local", "--plain-http", ref)
    assert result.returncode == 0, result.stderr
    with ctrpyd.client(namespace) as client:
        assert store.get(client, ref).target.digest == filled.busybox.manifest_digest
        snapshots.stat(client, "overlayfs", filled.busybox.chain_ids[-1])
    check = ctrpyd.ctr("images", "check", namespace=namespace)
    assert "complete" in check.stdout, check.stdout + check.stderr


def test_local_pull_into_containerd_16(tmp_path: Path, filled: Filled) -> None:
    ref = f"{filled.host}/library/busybox:1"
    with reference_containerd(tmp_path / "ctrd") as containerd:
        env_args = ["--address", containerd.address, "--namespace", containerd.namespace]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([CTRPY, *env_args, *args], capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)

        server_side = run("images", "pull", "--plain-http", ref)
        assert server_side.returncode != 0
        assert "--local" in server_side.stderr  # containerd 1.6 has no Transfer service: a hint
        local = run("images", "pull", "--local", "--plain-http", ref)
        assert local.returncode == 0, local.stderr
        listed = containerd.ctr("images", "ls", "-q")
        assert ref in listed.stdout
        check = containerd.ctr("images", "check")
        assert "complete" in check.stdout and filled.busybox.manifest_digest[:15] not in check.stderr
        snaps = containerd.ctr("snapshots", "ls")
        assert filled.busybox.chain_ids[-1] in snaps.stdout
