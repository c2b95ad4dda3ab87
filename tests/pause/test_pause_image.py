"""The pause image archive: its content and config, stable ids, and the command line."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ctrpy.pause.elf import host_arch, pause_executable
from ctrpy.pause.image import DEFAULT_NAME, pause_archive, write_pause_archive
from ctrpy.testimage import read_member
from tests.pause.procs import signal_set
from tests.support.containerd import reference_containerd
from tests.support.polling import wait_until

# Image ids (config digests) of registry.k8s.io/pause:3.9 and 3.10 for amd64 as containerd and
# crictl show them: ours must differ (critest counts the tags that point at pause:3.9's id).
UPSTREAM_PAUSE_IDS = ("sha256:e6f1816883972d4be47bd48879a08919b96afcd344132622e4d444987919323c",
                      "sha256:873ed75102791e5b0b8a7fcd41606c92fcec98d56d05ead4ac5131650004c136")


def blob(archive: Path, digest: str) -> bytes:
    return read_member(archive, "blobs/sha256/" + digest.split(":", 1)[1])


def test_one_layer_holding_only_pause_and_a_pause_like_config(tmp_path: Path) -> None:
    archive = tmp_path / "pause.tar"
    info = write_pause_archive(archive, "registry.k8s.io/pause:3.10")
    index = json.loads(read_member(archive, "index.json"))
    entry = index["manifests"][0]
    assert entry["annotations"]["io.containerd.image.name"] == "registry.k8s.io/pause:3.10"
    assert entry["platform"] == {"architecture": host_arch(), "os": "linux"}
    manifest = json.loads(blob(archive, info.manifest_digest or ""))
    assert len(manifest["layers"]) == 1
    config = json.loads(blob(archive, info.config_digest))
    assert config["architecture"] == host_arch() and config["os"] == "linux"
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["User"] == "65535:65535"
    assert "Cmd" not in config["config"]
    layer = blob(archive, manifest["layers"][0]["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = tar.getmembers()
        assert [(m.name, m.isfile(), m.mode, m.uid, m.gid) for m in members] == [("pause", True, 0o755, 0, 0)]
        extracted = tar.extractfile(members[0])
        assert extracted is not None and extracted.read() == pause_executable()


def test_ids_are_stable_do_not_depend_on_the_name_and_are_not_upstreams(tmp_path: Path) -> None:
    first, info = pause_archive()
    second, again = pause_archive()
    assert first == second
    _, renamed = pause_archive("registry.k8s.io/pause:3.10")
    assert info.config_digest == again.config_digest == renamed.config_digest
    assert info.manifest_digest == renamed.manifest_digest
    assert info.config_digest not in UPSTREAM_PAUSE_IDS
    # The other architecture has its own, equally stable, ids.
    other = "arm64" if host_arch() == "amd64" else "amd64"
    assert pause_archive(arch=other)[1].config_digest == pause_archive(arch=other)[1].config_digest
    assert pause_archive(arch=other)[1].config_digest != info.config_digest


def test_command_line_writes_the_same_archive(tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    result = subprocess.run([sys.executable, "-m", "ctrpy.pause", str(out)], capture_output=True, text=True,
                            timeout=60, check=True)
    printed = json.loads(result.stdout)
    assert printed["name"] == DEFAULT_NAME
    assert out.read_bytes() == pause_archive()[0]
    bad = subprocess.run([sys.executable, "-m", "ctrpy.pause", str(tmp_path / "no" / "dir.tar")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("pause: ")


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="no pause program"):
        pause_archive(arch="riscv64")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("runc"),
                    reason="needs root, containerd and runc")
def test_containerd_imports_and_runs_it_too(tmp_path: Path) -> None:
    """The reference: containerd's own ctr import and run accept the image, and SIGTERM gives 0."""
    archive = tmp_path / "pause.tar"
    info = write_pause_archive(archive)
    with reference_containerd(tmp_path / "d") as ctrd:
        ctrd.ctr("images", "import", str(archive))
        listed = ctrd.ctr("images", "ls").stdout
        assert DEFAULT_NAME in listed and (info.manifest_digest or "?") in listed
        ctrd.ctr("run", "-d", *ctrd.run_flags(), DEFAULT_NAME, "p1")

        def running_pid() -> int:
            for line in ctrd.ctr("tasks", "ls").stdout.splitlines()[1:]:
                name, pid, state = line.split()[:3]
                if name == "p1" and state == "RUNNING" and signal.SIGTERM in signal_set(int(pid), "SigCgt"):
                    return int(pid)
            return 0

        wait_until(running_pid, "pause to run in containerd with its handlers set")
        ctrd.ctr("tasks", "kill", "p1")
        wait_until(lambda: "STOPPED" in ctrd.ctr("tasks", "ls").stdout, "pause to stop")
        assert ctrd.ctr("tasks", "rm", "p1", check=False).returncode == 0  # ctr exits with the status
