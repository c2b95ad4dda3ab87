"""``ctrpy cri runp|pods|inspectp|stopp|rmp`` against a real ctrpyd, as crictl's users type them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from google.protobuf import json_format

from tests.cri_sandbox.support import PodDaemon

CTRPY = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "ctrpy")


def ctrpy(pods: PodDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([CTRPY, "--address", str(pods.address), "--timeout", "120", "cri", *args],
                            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                            env={**os.environ, "CONTAINER_RUNTIME_ENDPOINT": ""})
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def test_runp_pods_inspectp_stopp_rmp(pods: PodDaemon, tmp_path: Path) -> None:
    config = pods.pod("cli-pod", namespace="team", labels={"app": "cli"}, hostname="cli-host")
    path = tmp_path / "pod-config.json"
    path.write_text(json_format.MessageToJson(config))
    sandbox_id = ctrpy(pods, "runp", str(path)).stdout.strip()
    assert len(sandbox_id) == 64

    table = ctrpy(pods, "pods", "--label", "app=cli").stdout.splitlines()
    assert table[0].split()[:3] == ["POD", "ID", "CREATED"]
    row = next(line for line in table[1:] if line.startswith(sandbox_id[:13]))
    assert "SANDBOX_READY" in row and "cli-pod" in row and "team" in row
    assert ctrpy(pods, "pods", "-q", "--id", sandbox_id[:10]).stdout.split() == [sandbox_id]
    assert ctrpy(pods, "pods", "-q", "--state", "notready", "--label", "app=cli").stdout.split() == []

    inspected = json.loads(ctrpy(pods, "inspectp", sandbox_id[:12]).stdout)
    assert inspected["status"]["id"] == sandbox_id
    assert inspected["status"]["metadata"]["name"] == "cli-pod"
    assert inspected["info"]["config"]["hostname"] == "cli-host"
    assert inspected["status"]["network"]["ip"]

    assert ctrpy(pods, "stopp", sandbox_id).stdout.strip() == f"Stopped sandbox {sandbox_id}"
    assert ctrpy(pods, "pods", "-q", "--state", "notready", "--label", "app=cli").stdout.split() == [sandbox_id]
    assert ctrpy(pods, "rmp", sandbox_id).stdout.strip() == f"Removed sandbox {sandbox_id}"
    assert ctrpy(pods, "pods", "-q", "--label", "app=cli").stdout.split() == []
    listed = json.loads(ctrpy(pods, "pods", "-o", "json").stdout)
    assert sandbox_id not in [item["id"] for item in listed["items"]]
