"""``ctrpy cri create|start|ps|inspect|logs|exec --sync|stats|stop|rm`` against a real ctrpyd."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from google.protobuf import json_format

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from tests.cri_container.support import IMAGE, make_pod
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until

CTRPY = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "ctrpy")


def ctrpy(pods: PodDaemon, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([CTRPY, "--address", str(pods.address), "--timeout", "120", "cri", *args],
                            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                            env={**os.environ, "CONTAINER_RUNTIME_ENDPOINT": ""})
    assert result.returncode == code, (args, result.stdout, result.stderr)
    return result


def test_create_start_ps_inspect_logs_exec_stats_stop_rm(pods: PodDaemon, tmp_path: Path) -> None:
    pod = make_pod(pods, tmp_path)
    try:
        pod_config = tmp_path / "pod-config.json"
        pod_config.write_text(json_format.MessageToJson(pod.config))
        config = api.ContainerConfig(metadata=api.ContainerMetadata(name="cli-box"), image=api.ImageSpec(image=IMAGE),
                                     command=["sh", "-c", "echo from-cli; exec sleep 600"], log_path="cli-box.log",
                                     labels={"via": "cli"})
        container_config = tmp_path / "container-config.json"
        container_config.write_text(json_format.MessageToJson(config))

        container_id = ctrpy(pods, "create", pod.id, str(container_config), str(pod_config)).stdout.strip()
        assert len(container_id) == 64
        assert ctrpy(pods, "ps", "-q", "--label", "via=cli").stdout.split() == []  # created: not running
        assert ctrpy(pods, "ps", "-a", "-q", "--label", "via=cli").stdout.split() == [container_id]
        assert ctrpy(pods, "start", container_id).stdout.strip() == container_id
        table = ctrpy(pods, "ps", "--pod", pod.id).stdout.splitlines()
        assert table[0].split()[:2] == ["CONTAINER", "IMAGE"]
        assert "CONTAINER_RUNNING" in table[1] and "cli-box" in table[1] and table[1].startswith(container_id[:13])

        inspected = json.loads(ctrpy(pods, "inspect", container_id[:12]).stdout)
        assert inspected["status"]["id"] == container_id and inspected["info"]["sandboxID"] == pod.id
        wait_until(lambda: ctrpy(pods, "logs", container_id).stdout == "from-cli\n", "the log")
        result = ctrpy(pods, "exec", "-s", container_id, "sh", "-c", "echo hi; exit 3", code=3)
        assert result.stdout == "hi\n"
        stats = ctrpy(pods, "stats", "--pod", pod.id).stdout.splitlines()
        assert stats[0].split()[:2] == ["CONTAINER", "NAME"] and "cli-box" in stats[1]
        assert ctrpy(pods, "stop", "-t", "1", container_id).stdout.strip() == container_id
        assert ctrpy(pods, "ps", "-a", "-q", "--state", "exited", "--pod", pod.id).stdout.split() == [container_id]
        assert ctrpy(pods, "rm", container_id).stdout.strip() == container_id
        assert ctrpy(pods, "ps", "-a", "-q", "--pod", pod.id).stdout.split() == []
    finally:
        pod.cleanup()
