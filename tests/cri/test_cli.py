"""``ctrpy cri ...`` against a real ctrpyd: each served verb, as a person and a program read it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.cri.conftest import CriDaemon, Images

CTRPY = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "ctrpy")


def ctrpy(daemon: CriDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CTRPY, "--address", str(daemon.daemon.address), "--timeout", "120", "cri", *args],
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                          env={**os.environ, "CONTAINER_RUNTIME_ENDPOINT": ""})


def test_version_and_info(cri_daemon: CriDaemon) -> None:
    version = ctrpy(cri_daemon, "version")
    assert version.returncode == 0, version.stderr
    assert "RuntimeName:  ctrpy" in version.stdout and "RuntimeApiVersion:  v1" in version.stdout
    info = ctrpy(cri_daemon, "info")
    assert info.returncode == 0, info.stderr
    answer = json.loads(info.stdout)
    types = {c["type"]: c.get("status", False) for c in answer["status"]["conditions"]}
    assert types == {"RuntimeReady": True, "NetworkReady": False}
    assert answer["config"]["cni_conf_dir"] == str(cri_daemon.cni_conf_dir)


def test_pull_images_inspecti_imagefsinfo_rmi(cri_daemon: CriDaemon, cri_images: Images) -> None:
    ref = f"{cri_images.host}/library/busybox:1"
    image_id = cri_images.busybox.config_digest
    pulled = ctrpy(cri_daemon, "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == f"Image is up to date for {image_id}"
    try:
        table = ctrpy(cri_daemon, "images")
        assert table.returncode == 0, table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
        row = next(line.split() for line in rows if line.startswith(f"{cri_images.host}/library/busybox "))
        assert row[1] == "1" and row[2] == image_id.removeprefix("sha256:")[:13]
        quiet = ctrpy(cri_daemon, "images", "-q")
        assert image_id in quiet.stdout.split()
        listed = json.loads(ctrpy(cri_daemon, "images", "-o", "json").stdout)
        assert image_id in {image["id"] for image in listed["images"]}
        inspected = ctrpy(cri_daemon, "inspecti", ref)
        assert inspected.returncode == 0, inspected.stderr
        status = json.loads(inspected.stdout)
        assert status["status"]["id"] == image_id and status["status"]["repoTags"] == [ref]
        assert status["info"]["imageSpec"]["config"]["Cmd"] == ["sh"]
        usage = json.loads(ctrpy(cri_daemon, "imagefsinfo").stdout)
        assert usage["status"]["imageFilesystems"][0]["fsId"]["mountpoint"].endswith("/snapshots/overlayfs")
    finally:
        removed = ctrpy(cri_daemon, "rmi", ref)
    assert removed.returncode == 0, removed.stderr
    assert f"Deleted: {ref}" in removed.stdout
    missing = ctrpy(cri_daemon, "inspecti", ref)
    assert missing.returncode == 1 and "no such image" in missing.stderr
    assert ctrpy(cri_daemon, "rmi", ref).returncode == 1


def test_pull_with_creds(cri_daemon: CriDaemon, cri_images: Images) -> None:
    from tests.cri.conftest import USER

    ref = f"{cri_images.private.host}/library/private:1"
    denied = ctrpy(cri_daemon, "pull", ref)
    assert denied.returncode != 0 and denied.stderr.startswith("ctrpy: ")
    pulled = ctrpy(cri_daemon, "pull", "--creds", f"{USER[0]}:{USER[1]}", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert ctrpy(cri_daemon, "rmi", ref).returncode == 0
