"""The stock ctr running containers through ctrpyd: run, tasks, exec, stdio, events, OOM, leaks."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.support.ctrpyd import Daemon

IMAGE = "docker.io/library/busybox:latest"


@pytest.fixture
def ready(daemon: Daemon) -> Iterator[Daemon]:
    """A daemon with the busybox image imported; every task and container removed afterwards."""
    archive = daemon.base / "busybox.tar"
    write_oci_layout_tar(busybox_image(), archive)
    result = daemon.ctr("images", "import", str(archive))
    assert result.returncode == 0, result.stderr
    try:
        yield daemon
    finally:
        for task in daemon.ctr("tasks", "ls", "-q").stdout.split():
            daemon.ctr("tasks", "rm", "-f", task)
        for container in daemon.ctr("containers", "ls", "-q").stdout.split():
            daemon.ctr("containers", "rm", container)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def status_of(daemon: Daemon, task: str) -> str:
    for line in ok(daemon.ctr("tasks", "ls")).stdout.splitlines()[1:]:
        fields = line.split()
        if fields[0] == task:
            return fields[2]
    return "none"


def test_run_rm_prints_and_propagates_the_exit_code(ready: Daemon) -> None:
    hi = ready.ctr("run", "--rm", IMAGE, "t1", "echo", "hi")
    assert hi.returncode == 0 and hi.stdout == "hi\n", hi.stderr
    seven = ready.ctr("run", "--rm", IMAGE, "t2", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert seven.returncode == 7
    assert seven.stdout == "out\n" and "err" in seven.stderr
    assert ok(ready.ctr("containers", "ls", "-q")).stdout == ""
    assert ok(ready.ctr("snapshots", "ls")).stdout.count("Active") == 0


def test_detached_task_lifecycle(ready: Daemon) -> None:
    ok(ready.ctr("run", "-d", IMAGE, "d1", "sleep", "1000"))
    assert status_of(ready, "d1") == "RUNNING"
    assert len(_leftovers(ready)["shims"]) == 1  # type: ignore[arg-type] # the detector sees a live shim
    ps = ok(ready.ctr("tasks", "ps", "d1")).stdout.splitlines()
    assert ps[0].split() == ["PID", "INFO"] and len(ps) == 2
    exec_result = ready.ctr("tasks", "exec", "--exec-id", "e1", "d1", "sh", "-c", "echo in-exec; exit 3")
    assert exec_result.returncode == 3 and exec_result.stdout == "in-exec\n"
    ok(ready.ctr("tasks", "pause", "d1"))
    assert status_of(ready, "d1") == "PAUSED"
    ok(ready.ctr("tasks", "resume", "d1"))
    assert status_of(ready, "d1") == "RUNNING"
    metrics = ok(ready.ctr("tasks", "metrics", "d1")).stdout
    assert re.search(r"memory.usage_in_bytes\s+\d+", metrics), metrics
    assert re.search(r"pids.current\s+1\b", metrics), metrics
    refused = ready.ctr("tasks", "rm", "d1")
    assert refused.returncode == 1 and "must be stopped" in refused.stderr
    ok(ready.ctr("tasks", "kill", "-s", "9", "d1"))
    deadline = time.monotonic() + 30
    while status_of(ready, "d1") != "STOPPED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status_of(ready, "d1") == "STOPPED"
    ok(ready.ctr("tasks", "rm", "d1"))
    assert status_of(ready, "d1") == "none"
    ok(ready.ctr("containers", "rm", "d1"))


def test_kill_all_and_rm_force(ready: Daemon) -> None:
    ok(ready.ctr("run", "-d", IMAGE, "k1", "sh", "-c", "sleep 1000 & sleep 1000"))
    ok(ready.ctr("tasks", "kill", "-s", "9", "--all", "k1"))
    deadline = time.monotonic() + 30
    while status_of(ready, "k1") != "STOPPED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status_of(ready, "k1") == "STOPPED"
    ok(ready.ctr("run", "-d", IMAGE, "k2", "sleep", "1000"))
    ok(ready.ctr("tasks", "rm", "-f", "k2"))
    assert status_of(ready, "k2") == "none"


def test_containers_create_then_tasks_start_and_attach(ready: Daemon) -> None:
    ok(ready.ctr("containers", "create", IMAGE, "c1", "--", "sh", "-c", "echo started; exit 5"))
    started = ready.ctr("tasks", "start", "c1")
    assert started.returncode == 5 and started.stdout == "started\n"
    ok(ready.ctr("containers", "create", IMAGE, "c2", "--", "sh", "-c", "sleep 1; echo attached; exit 4"))
    ok(ready.ctr("tasks", "start", "-d", "c2"))
    attached = ready.ctr("tasks", "attach", "c2")
    assert attached.returncode == 4 and "attached" in attached.stdout
    assert status_of(ready, "c2") == "none"  # attach deletes the task when it exits


def test_piped_stdin_reaches_the_container_and_closeio_ends_it(ready: Daemon) -> None:
    # A pipe that delivers after a moment (a file redirect races inside ctr itself: G18).
    feeder = subprocess.Popen(["sh", "-c", "sleep 1; printf 'line one\\nline two\\n'"], stdout=subprocess.PIPE)
    try:
        result = subprocess.run(
            [*ready.ctr_command(), "run", "--rm", IMAGE, "p1", "cat"],
            stdin=feeder.stdout, capture_output=True, text=True, timeout=60,
        )
    finally:
        feeder.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line one\nline two\n"


def test_run_with_a_terminal_echoes_input(ready: Daemon) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: ctr with the pty as its terminal
        os.execv(ready.ctr_command()[0], [*ready.ctr_command(), "run", "-t", "--rm", IMAGE, "tty1", "sh"])
    output = b""
    try:
        def read_until(marker: bytes, limit: float = 30) -> None:
            nonlocal output
            deadline = time.monotonic() + limit
            while marker not in output and time.monotonic() < deadline:
                ready_fds, _, _ = select.select([fd], [], [], 0.5)
                if ready_fds:
                    try:
                        output += os.read(fd, 4096)
                    except OSError:
                        break
            assert marker in output, output

        time.sleep(1)
        os.write(fd, b"echo tty-$((40+2))\n")
        read_until(b"tty-42")
        os.write(fd, b"tty\n")
        read_until(b"/dev/pts/")
        os.write(fd, b"exit 6\n")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 6
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_events_show_the_task_topics_in_order(ready: Daemon) -> None:
    events = subprocess.Popen([*ready.ctr_command(), "events"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        ok(ready.ctr("run", "--rm", IMAGE, "ev1", "true"))
        time.sleep(1)
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=30)
    topics = [line.split()[5] for line in out.splitlines() if " /tasks/" in line]
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], out
    assert "/containers/create" in out and "/containers/delete" in out and "/snapshot/remove" in out


def test_memory_limit_kill_is_137_with_an_oom_event(ready: Daemon) -> None:
    events = subprocess.Popen([*ready.ctr_command(), "events"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        result = ready.ctr(
            "run", "--rm", "--memory-limit", str(16 << 20), IMAGE, "oom1",
            "sh", "-c", "x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived",
        )  # fmt: skip
        time.sleep(1)
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=30)
    assert result.returncode == 137, (result.stdout, result.stderr)
    topics = [line.split()[5] for line in out.splitlines() if " /tasks/" in line]
    assert topics.index("/tasks/oom") < topics.index("/tasks/exit"), out


def _leftovers(daemon: Daemon) -> dict[str, object]:
    assert daemon.process is not None
    state = str(daemon.state)
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(state)]
    bundles = list((daemon.state / "tasks").glob("*/*")) if (daemon.state / "tasks").exists() else []
    children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children").read_text().split()
    shims = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_shim_of(p, state)]
    zombies = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _state(p) == "Z" and _ppid(p) == daemon.process.pid]
    cgroups = [p for p in Path("/sys/fs/cgroup/memory/default").glob("*")] if Path("/sys/fs/cgroup/memory/default").exists() else []
    return {
        "mounts": mounts, "bundles": bundles, "shims": shims, "zombies": zombies,
        "fds": len(os.listdir(f"/proc/{daemon.process.pid}/fd")), "children": len(children),
        "cgroups": [p.name for p in cgroups if p.is_dir() and p.name.startswith("leak")],
    }  # fmt: skip


def _is_shim_of(proc: Path, state: str) -> bool:
    """A shim of this daemon: named ctrpy-shim, its command line naming the daemon's state dir
    (spawned shims name it directly; forked ones carry the template's command line)."""
    try:
        comm = (proc / "comm").read_text().strip()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return comm == "ctrpy-shim" and state.encode() in cmdline


def _state(proc: Path) -> str:
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_a_hundred_runs_leave_nothing_behind(ready: Daemon) -> None:
    ok(ready.ctr("run", "--rm", IMAGE, "leak-warmup", "true"))
    before = _leftovers(ready)
    for number in range(100):
        ok(ready.ctr("run", "--rm", IMAGE, f"leak{number}", "true"))
    time.sleep(1)
    after = _leftovers(ready)
    shims = {str(p): (p / "cmdline").read_bytes() for p in after["shims"]}  # type: ignore[attr-defined]
    assert after["mounts"] == [] and after["bundles"] == [] and shims == {}
    assert after["zombies"] == [] and after["cgroups"] == []
    assert after["children"] == before["children"]  # the template only
    assert int(after["fds"]) <= int(before["fds"]) + 3, (before, after)  # type: ignore[call-overload]
