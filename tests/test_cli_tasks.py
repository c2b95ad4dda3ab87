"""``ctrpy tasks ...`` against real daemons and real runc: the life of a detached container
(ls, ps, exec, pause/resume, metrics, kill, rm), ``containers create`` then ``tasks start``,
and ``tasks attach``.

Every test runs against the reference containerd and against ctrpyd (the ``backend`` fixture).
"""

from __future__ import annotations

import json
import subprocess

from tests.oci.harness import (  # noqa: F401  (fixtures)
    LIMIT,
    Runner,
    backend_fixture,
    busybox_tar_fixture,
    read_until,
    runner_fixture,
    spawn_in_pty,
    wait_stopped,
)


def _table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[1:] if line.strip()]


def _task_pid(runner: Runner, container_id: str) -> int:
    for cells in _table(runner.ctrpy("tasks", "ls").stdout):
        if cells[0] == container_id:
            return int(cells[1])
    raise AssertionError(f"no task {container_id}")


def test_detached_task_life(runner: Runner) -> None:
    runner.ctrpy("run", "-d", *runner.run_flags(), runner.image, "life", "sleep", "1000")
    assert runner.task_status("life") == "RUNNING"
    assert runner.ctrpy("tasks", "ls", "-q").stdout.split() == ["life"]
    pid = _task_pid(runner, "life")
    assert _table(runner.ctrpy("tasks", "ps", "life").stdout) == [[str(pid), "-"]]

    # exec: output and exit status, then the exec is deleted (and its FIFOs removed)
    result = runner.ctrpy("tasks", "exec", "--exec-id", "e1", *runner.io_flags(), "life",
                          "sh", "-c", "echo from-exec; echo to-stderr >&2; exit 3", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "from-exec\n", "to-stderr\n")

    # a detached exec shows up in ps with its exec id
    runner.ctrpy("tasks", "exec", "-d", "--exec-id", "e2", *runner.io_flags(), "life", "sleep", "1000")
    rows = _table(runner.ctrpy("tasks", "ps", "life").stdout)
    assert sorted(row[1] for row in rows) == ["-", "e2"]
    listed = json.loads(runner.ctrpy("--format", "json", "tasks", "ps", "life").stdout)
    assert {entry["exec_id"] for entry in listed} == {"", "e2"}

    runner.ctrpy("tasks", "pause", "life")
    assert runner.task_status("life") == "PAUSED"
    runner.ctrpy("tasks", "resume", "life")
    assert runner.task_status("life") == "RUNNING"

    table = dict(row[:2] for row in _table(runner.ctrpy("tasks", "metrics", "life").stdout.split("\n\n")[1]))
    assert int(table["memory.usage_in_bytes"]) > 0
    assert int(table["pids.current"]) == 2  # sleep, and the exec's sleep
    data = json.loads(runner.ctrpy("--format", "json", "tasks", "metrics", "life").stdout)
    assert data["id"] == "life"
    assert data["type"] == "io.containerd.cgroups.v1.Metrics"
    assert data["data"]["pids"]["current"] == 2
    assert data["data"]["memory"]["usage"]["usage"] > 0

    refused = runner.ctrpy("tasks", "rm", "life", check=False)
    assert refused.returncode == 1
    assert "task must be stopped before deletion: running" in refused.stderr

    runner.ctrpy("tasks", "kill", "-s", "SIGKILL", "life")
    wait_stopped(runner, "life")
    removed = runner.ctrpy("tasks", "rm", "life")
    assert "non-zero exit code 137" in removed.stderr  # a warning only, as ctr's
    assert runner.task_status("life") is None
    runner.ctrpy("containers", "rm", "life")
    assert runner.container_ids() == []
    assert "life" not in runner.snapshot_keys()
    # Only the detached exec's FIFOs are left: like ctr, nothing deletes that process for us.
    left = [sorted(p.name for p in (runner.fifo_dir / d).iterdir()) for d in runner.fifo_entries()]
    assert left == [["e2-stderr", "e2-stdin", "e2-stdout"]]


def test_kill_uses_the_stop_signal_and_reaches_all(runner: Runner) -> None:
    script = 'trap "exit 42" TERM; while true; do sleep 0.1; done'
    runner.ctrpy("run", "-d", *runner.run_flags(), runner.image, "k1", "sh", "-c", script)
    runner.ctrpy("tasks", "kill", "k1")  # no -s: the container's stop signal label, SIGTERM
    wait_stopped(runner, "k1")
    assert "42" in runner.ctrpy("tasks", "rm", "k1").stderr  # exit code 42, from the trap

    runner.ctrpy("run", "-d", *runner.run_flags(), runner.image, "k2", "sh", "-c", "sleep 1000 & sleep 1000")
    runner.ctrpy("tasks", "kill", "-s", "9", "--all", "k2")
    wait_stopped(runner, "k2")
    both = runner.ctrpy("tasks", "kill", "--all", "--exec-id", "x", "k2", check=False)
    assert both.returncode == 1 and "not both" in both.stderr
    bad = runner.ctrpy("tasks", "kill", "-s", "SIGNOPE", "k2", check=False)
    assert bad.returncode == 1 and "invalid signal" in bad.stderr


def test_rm_force_kills_and_deletes(runner: Runner) -> None:
    runner.ctrpy("run", "-d", *runner.run_flags(), runner.image, "f1", "sleep", "1000")
    runner.ctrpy("tasks", "rm", "-f", "f1")
    assert runner.task_status("f1") is None
    assert runner.fifo_entries() == []
    missing = runner.ctrpy("tasks", "rm", "f1", check=False)
    assert missing.returncode == 1


def test_create_then_start(runner: Runner) -> None:
    runner.ctrpy("containers", "create", *runner.create_flags(), runner.image, "c1", "sh", "-c", "echo started; exit 5")
    assert "c1" in runner.container_ids()
    assert runner.task_status("c1") is None
    result = runner.ctrpy("tasks", "start", *runner.io_flags(), "c1", check=False)
    assert (result.returncode, result.stdout) == (5, "started\n")
    assert runner.task_status("c1") is None  # deleted once it exited, as ctr does
    assert "c1" in runner.container_ids()
    assert runner.fifo_entries() == []


def test_create_then_start_detached(runner: Runner) -> None:
    runner.ctrpy("containers", "create", *runner.create_flags(), runner.image, "c2", "sleep", "1000")
    runner.ctrpy("tasks", "start", "-d", *runner.io_flags(), "c2")
    assert runner.task_status("c2") == "RUNNING"


def test_attach_then_task_is_deleted(runner: Runner) -> None:
    script = "read line; echo got-$line; exit 4"
    runner.ctrpy("run", "-d", *runner.run_flags(), runner.image, "a1", "sh", "-c", script)
    assert len(runner.fifo_entries()) == 1  # the detached run left its FIFOs for attach
    attach = runner.popen("tasks", "attach", "a1", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    try:
        out, err = attach.communicate(b"hello\n", timeout=LIMIT)
    finally:
        if attach.poll() is None:
            attach.kill()
            attach.wait()
    assert attach.returncode == 4, err
    assert out == b"got-hello\n"
    assert runner.task_status("a1") is None
    assert runner.fifo_entries() == []


def test_exec_with_a_terminal(runner: Runner) -> None:
    runner.ctrpy("run", "-d", *runner.run_flags(), runner.image, "x1", "sleep", "1000")
    script = "[ -t 0 ] && echo exec-tty; echo ready; read line; exit 6"
    session = spawn_in_pty(runner.command("tasks", "exec", "-t", "--exec-id", "sh1", *runner.io_flags(),
                                          "x1", "sh", "-c", script))
    try:
        out = session.read_until(b"ready")
        session.write(b"\n")
        code, _ = session.finish()
    finally:
        session.close()
    assert b"exec-tty\r\n" in out
    assert code == 6
    assert runner.task_status("x1") == "RUNNING"


def test_errors(runner: Runner) -> None:
    for args in (("tasks", "ps", "ghost"), ("tasks", "pause", "ghost"), ("tasks", "metrics", "ghost"),
                 ("tasks", "exec", "ghost", "true"), ("tasks", "start", "ghost")):
        result = runner.ctrpy(*args, check=False)
        assert result.returncode == 1, args
        assert "not found" in result.stderr, (args, result.stderr)
    runner.ctrpy("containers", "create", *runner.create_flags(), runner.image, "idle", "true")
    result = runner.ctrpy("tasks", "ps", "idle", check=False)  # a container without a task
    assert result.returncode == 1 and "not found" in result.stderr
