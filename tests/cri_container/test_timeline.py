"""``ctrpy cri timeline CONTAINER|POD``: the CRI calls' steps and the task's timeline, by id or prefix."""

from __future__ import annotations

import json

import pytest

from ctrpy.cli.main import main
from tests.cri_container.support import Pod
from tests.cri_sandbox.support import PodDaemon


def cri_timeline(pods: PodDaemon, capsys: pytest.CaptureFixture[str], object_id: str) -> dict[str, object]:
    capsys.readouterr()
    code = main(["--address", str(pods.address), "--format", "json", "cri", "timeline", object_id])
    out = capsys.readouterr().out
    assert code == 0, out
    answer: dict[str, object] = json.loads(out)
    return answer


def test_container_and_pod_timelines(pods: PodDaemon, pod: Pod, capsys: pytest.CaptureFixture[str]) -> None:
    container_id = pod.run("timed", "sleep", "600")
    answer = cri_timeline(pods, capsys, container_id[:12])
    assert answer["id"] == container_id
    calls = answer["calls"]
    assert isinstance(calls, list)
    assert [call["call"] for call in calls] == ["CreateContainer", "StartContainer"]
    for call in calls:
        # Sequential steps add up to the call (the rest is the call's own bookkeeping).
        assert sum(s["ms"] for s in call["steps"] if not s["beside"]) <= call["total_ms"] + 0.01
    task = answer["task"]
    assert isinstance(task, dict)
    names = [row["step"] for row in task["steps"]]
    assert "bundle" in names and "runc create" in names and "runc start" in names, names

    pod_answer = cri_timeline(pods, capsys, pod.id)
    assert [call["call"] for call in pod_answer["calls"]] == ["RunPodSandbox"]  # type: ignore[union-attr]
    assert pod_answer["task"] is not None  # the sandbox's pause container

    assert main(["--address", str(pods.address), "cri", "timeline", container_id]) == 0
    text = capsys.readouterr().out
    assert f"StartContainer {container_id}" in text and "runc start" in text
    assert main(["--address", str(pods.address), "cri", "timeline", "no-such-id"]) == 1
