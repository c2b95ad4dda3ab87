"""runc failing or stalling, through the fault-injection wrapper ``tests/faults/runc-fault``.

Each container names the wrapper as its runtime binary (``ctr run --runc-binary``) and a rules
file by annotation, which the test rewrites to change what runc does next. A failure reaches
the client with runc's message and leaves nothing behind; a stalled runc stalls only its own
container; ctrpyd killed while runc is stalled finds the container again, in whatever state the
shim got it to.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.crash.support import IMAGE, RUNC_FAULT, CrashDaemon, exit_when, ok, wait_until
from tests.crash.test_restart import start_task

INJECTED = "ctrpy.test: injected {} failure"


class Faulty:
    """Containers of one daemon that run through runc-fault, each with its own rules file."""

    def __init__(self, daemon: CrashDaemon) -> None:
        self.d = daemon
        self.log = daemon.base / "runc-calls.jsonl"

    def rules(self, container_id: str, text: str = "") -> Path:
        path = self.d.base / f"faults-{container_id}"
        path.write_text(text)
        return path

    def args(self, container_id: str) -> list[str]:
        return [
            "--runc-binary", str(RUNC_FAULT),
            "--annotation", f"ctrpy.test/fault-file={self.rules_path(container_id)}",
            "--annotation", f"ctrpy.test/fault-log={self.log}",
        ]  # fmt: skip

    def rules_path(self, container_id: str) -> Path:
        return self.d.base / f"faults-{container_id}"

    def run(self, container_id: str, rules: str, *argv: str) -> subprocess.CompletedProcess[str]:
        self.rules(container_id, rules)
        return self.d.ctr("run", "-d", *self.args(container_id), IMAGE, container_id, *argv)

    def spawn_run(self, container_id: str, rules: str, *argv: str) -> subprocess.Popen[str]:
        self.rules(container_id, rules)
        return self.d.spawn("run", "-d", *self.args(container_id), IMAGE, container_id, *argv)

    def calls(self, command: str, container_id: str) -> list[dict[str, object]]:
        """The wrapper's record of the runc calls it got (before any delay)."""
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [c for c in lines if c["command"] == command and c["id"] == container_id]


def _clean(d: CrashDaemon, container_id: str) -> None:
    """No bundle, mount, cgroup or runc state left for ``container_id``; only the template runs."""
    assert not d.bundle(container_id).exists()
    assert [m for m in d.leftover_mounts() if f"/{container_id}/" in m] == []
    assert d.cgroups_of(container_id) == []
    assert not (d.state / "runc" / d.namespace / container_id).exists()
    wait_until(lambda: len(d.shims()) == 1, "the container's shim to exit")


def _run_to_the_end(d: CrashDaemon, container_id: str) -> None:
    """Start the container's task with ctr, kill it, remove task and container."""
    ok(d.ctr("tasks", "start", "-d", container_id))
    assert d.status(container_id) == "RUNNING"
    d.ok("tasks", "kill", "-s", "KILL", container_id)
    assert d.wait_exit(container_id) == 137
    d.ok("tasks", "rm", container_id)
    d.ok("containers", "rm", container_id)
    _clean(d, container_id)


def test_wrapper_passes_through_without_rules(ready: CrashDaemon) -> None:
    f = Faulty(ready)
    ok(f.run("c1", "", "sleep", "1000"))
    assert ready.status("c1") == "RUNNING"
    assert [c["rules"] for c in f.calls("create", "c1")] == [[]]
    ready.ok("tasks", "kill", "-s", "KILL", "c1")
    assert ready.wait_exit("c1") == 137
    ready.ok("tasks", "rm", "c1")
    ready.ok("containers", "rm", "c1")
    _clean(ready, "c1")


def test_create_fails(ready: CrashDaemon) -> None:
    d, f = ready, Faulty(ready)
    failed = f.run("c1", "create:fail", "sleep", "1000")
    assert failed.returncode != 0
    assert f"OCI runtime create failed: {INJECTED.format('create')}" in failed.stderr
    assert d.tasks() == {}
    assert d.containers() == ["c1"]
    _clean(d, "c1")
    f.rules("c1", "")  # runc works again: the same container starts
    _run_to_the_end(d, "c1")


def test_start_fails(ready: CrashDaemon) -> None:
    d, f = ready, Faulty(ready)
    failed = f.run("c1", "start:fail", "sleep", "1000")
    assert failed.returncode != 0 and INJECTED.format("start") in failed.stderr
    # The task stays created (runc create succeeded); it can be deleted like any created task
    # (ctr wants -f for a created task that has a pid).
    assert d.status("c1") == "CREATED"
    d.ok("tasks", "rm", "-f", "c1")
    _clean(d, "c1")
    f.rules("c1", "")
    _run_to_the_end(d, "c1")


def test_kill_fails(ready: CrashDaemon) -> None:
    d, f = ready, Faulty(ready)
    ok(f.run("c1", "", "sleep", "1000"))
    f.rules("c1", "kill:fail=no-signal-for-you")
    failed = d.ctr("tasks", "kill", "-s", "KILL", "c1")
    assert failed.returncode != 0 and "OCI runtime kill failed: no-signal-for-you" in failed.stderr
    assert d.status("c1") == "RUNNING"
    f.rules("c1", "")
    d.ok("tasks", "kill", "-s", "KILL", "c1")
    assert d.wait_exit("c1") == 137
    d.ok("tasks", "rm", "c1")
    d.ok("containers", "rm", "c1")
    _clean(d, "c1")


def test_delete_stalls_only_its_own_container(ready: CrashDaemon) -> None:
    d, f = ready, Faulty(ready)
    gate = d.base / "gate"
    ok(f.run("c1", f"delete:until={gate}", "sh", "-c", "exit 2"))
    assert d.wait_exit("c1") == 2
    removing = d.spawn("tasks", "rm", "c1")
    wait_until(lambda: f.calls("delete", "c1"), "runc delete to begin")
    # ctrpyd keeps serving while that delete waits.
    assert d.status("c1") == "STOPPED"
    assert d.ok("run", "--rm", IMAGE, "other", "echo", "meanwhile") == "meanwhile\n"
    assert removing.poll() is None
    gate.touch()
    assert removing.wait(60) == 0, removing.stderr.read() if removing.stderr else ""
    assert d.tasks() == {}
    d.ok("containers", "rm", "c1")
    _clean(d, "c1")


def test_manager_killed_during_a_stalled_delete_restarts_before_it_ends(ready: CrashDaemon) -> None:
    d, f = ready, Faulty(ready)
    gate = d.base / "gate"
    ok(f.run("c1", f"delete:until={gate}", *exit_when("/go", 6)))
    (d.rootfs("c1") / "go").touch()
    assert d.wait_exit("c1") == 6
    d.spawn("tasks", "rm", "c1")
    wait_until(lambda: f.calls("delete", "c1"), "runc delete to begin")
    d.kill()
    d.start()  # the shim is still inside its delete: the task is found, stopped
    assert d.status("c1") == "STOPPED"
    gate.touch()
    # The shim finishes the delete asked before the crash and reports it; ctrpyd completes it.
    wait_until(lambda: d.tasks() == {}, "the delete to complete")
    assert "not found" in d.ctr("tasks", "rm", "c1").stderr
    d.ok("containers", "rm", "c1")
    _clean(d, "c1")


def test_manager_killed_during_a_stalled_delete_restarts_after_it_ended(ready: CrashDaemon) -> None:
    d, f = ready, Faulty(ready)
    gate = d.base / "gate"
    ok(f.run("c1", f"delete:until={gate}", "sh", "-c", "exit 6"))
    assert d.wait_exit("c1") == 6
    d.spawn("tasks", "rm", "c1")
    wait_until(lambda: f.calls("delete", "c1"), "runc delete to begin")
    d.kill()
    gate.touch()
    wait_until(lambda: not (d.state / "runc" / d.namespace / "c1").exists(), "the shim's delete to end")
    d.start()  # the shim has no task any more: it is shut down and its bundle removed
    assert d.tasks() == {}
    assert d.containers() == ["c1"]
    _clean(d, "c1")
    f.rules("c1", "")
    assert d.ctr("tasks", "start", "c1").returncode == 6  # runs again (attached: removed at exit)
    d.ok("containers", "rm", "c1")
    _clean(d, "c1")


def test_manager_killed_during_a_stalled_create(ready: CrashDaemon) -> None:
    d, f = ready, Faulty(ready)
    gate = d.base / "gate"
    f.spawn_run("c1", f"create:until={gate}", "sleep", "1000")
    wait_until(lambda: f.calls("create", "c1"), "runc create to begin")
    d.kill()
    d.start()  # runc create is still running in the shim
    assert d.status("c1") == "CREATED"
    gate.touch()
    wait_until(lambda: (d.bundle("c1") / "init.pid").exists(), "runc create to finish")
    wait_until(lambda: d.tasks()["c1"][0] != 0, "the shim to report the init pid")
    start_task(d, "c1")
    assert d.status("c1") == "RUNNING"
    d.ok("tasks", "kill", "-s", "KILL", "c1")
    assert d.wait_exit("c1") == 137
    d.ok("tasks", "rm", "c1")
    d.ok("containers", "rm", "c1")
    _clean(d, "c1")
