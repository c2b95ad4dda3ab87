"""ExecSync: output, exit code, and a timeout that is enforced even when an orphaned child
keeps the output pipe open."""

from __future__ import annotations

import time

import pytest

from ctrpy import errors
from tests.cri_container.support import Pod


def test_exec_sync_output_and_exit_code(pod: Pod) -> None:
    container_id = pod.run("box", "sleep", "600")
    result = pod.exec_sync(container_id, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert result.stdout == b"out\n" and result.stderr == b"err\n" and result.exit_code == 7
    assert pod.exec_sync(container_id, "true").exit_code == 0
    big = pod.exec_sync(container_id, "sh", "-c", "head -c 300000 /dev/zero")
    assert big.stdout == b"\0" * 300000


def test_exec_sync_timeout_kills_and_returns(pod: Pod) -> None:
    container_id = pod.run("box", "sleep", "600")
    begun = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded):
        pod.exec_sync(container_id, "sh", "-c", "sleep 300", timeout=1, call_timeout=60)
    assert time.monotonic() - begun < 30  # liveness bound, generous under load
    # The killed command left nothing behind: only the container's own process runs.
    ps = pod.exec_sync(container_id, "ps", "-o", "args").stdout.decode()
    assert "sleep 300" not in ps


def test_exec_sync_returns_while_an_orphan_holds_the_pipe(pod: Pod) -> None:
    container_id = pod.run("box", "sleep", "600")
    begun = time.monotonic()
    # The shell exits at once; its background child keeps stdout open for 5 minutes.
    result = pod.exec_sync(container_id, "sh", "-c", "sleep 300 & echo started", timeout=30, call_timeout=60)
    assert result.exit_code == 0 and result.stdout == b"started\n"
    assert time.monotonic() - begun < 30
    # A timeout with an orphan that double-forked away from the command still returns.
    with pytest.raises(errors.DeadlineExceeded):
        pod.exec_sync(container_id, "sh", "-c", "(setsid sleep 300 &); sleep 300", timeout=1, call_timeout=60)
    assert time.monotonic() - begun < 60


def test_exec_sync_in_a_container_that_is_not_running(pod: Pod) -> None:
    container_id = pod.create(pod.container_config("idle", "sleep", "600"))
    with pytest.raises(errors.FailedPrecondition):
        pod.exec_sync(container_id, "true")
