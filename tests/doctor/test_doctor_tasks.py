"""ctrpy doctor on the state directory: a crashed ctrpyd, dead shims, shims without bundles."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from ctrpy import mount as mounts
from ctrpy.manager.doctor import Target, procs
from ctrpy.manager.doctor import tasks as task_checks

from .conftest import BUSYBOX, Daemon, Processes
from .helpers import doctor, doctor_json, mounted_below, problems, rows


def _run_detached(daemon: Daemon, processes: Processes, container_id: str) -> tuple[int, int]:
    result = daemon.ctr("run", "-d", BUSYBOX, container_id, "sleep", "1000")
    assert result.returncode == 0, result.stderr
    return processes.remember_task("default", container_id)


def _kill(pid: int) -> None:
    proc = procs.read_proc(pid)
    assert proc is not None
    assert procs.kill(pid, proc.starttime, proc.comm)
    while procs.alive(pid, proc.starttime):
        time.sleep(0.01)


def test_a_running_task_is_healthy(loaded: tuple[Daemon, Processes]) -> None:
    daemon, processes = loaded
    _run_detached(daemon, processes, "fine")
    result = doctor(daemon)
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows(result) == []
    assert "ctrpyd is running" in result.stderr and "report only" in result.stderr
    processes.crash_daemon()  # the shim outlives ctrpyd and still answers: nothing to report
    result = doctor(daemon)
    assert (result.returncode, rows(result)) == (0, []), result.stdout


def test_crashed_manager_and_shim_leave_a_mounted_bundle(loaded: tuple[Daemon, Processes]) -> None:
    daemon, processes = loaded
    shim, _ = _run_detached(daemon, processes, "c1")
    bundle = daemon.state / "tasks" / "default" / "c1"
    processes.crash_daemon()
    _kill(shim)
    assert mounted_below(bundle / "rootfs")

    result = doctor(daemon)
    assert result.returncode == 1
    table = "\n".join(rows(result))
    assert "bundles" in table and "default/c1" in table and f"shim {shim} is gone" in table
    assert "mounts" in table and str(bundle / "rootfs") in table
    assert "3 problem(s) found" in result.stderr  # the shim's socket too

    code, report = doctor_json(daemon, "--fix")
    assert code == 0, report
    assert {("bundles", "default/c1"), ("mounts", str(bundle / "rootfs"))} <= problems(report)
    deleted = next(f for f in report["findings"] if f["check"] == "bundles")
    assert deleted["outcome"]["fixed"] and "exit status 255" in deleted["outcome"]["detail"]
    assert not bundle.exists() and not mounted_below(daemon.state)
    assert not any((daemon.state / "s").iterdir())

    again = doctor(daemon)
    assert (again.returncode, rows(again)) == (0, []), again.stdout
    # ctrpyd comes back to a clean state: the container is a record without a task.
    daemon.start()
    assert daemon.ctr("tasks", "ls", "-q").stdout.strip() == ""
    assert daemon.ctr("containers", "rm", "c1").returncode == 0


def test_a_shim_whose_bundle_is_gone_is_killed(loaded: tuple[Daemon, Processes]) -> None:
    daemon, processes = loaded
    shim, init = _run_detached(daemon, processes, "lost")
    bundle = daemon.state / "tasks" / "default" / "lost"
    processes.crash_daemon()
    mounts.unmount_recursive(bundle / "rootfs")
    shutil.rmtree(bundle)

    code, report = doctor_json(daemon)
    assert code == 1
    assert ("shims", f"pid {shim}") in problems(report)
    runtime = next(f for f in report["findings"] if f["check"] == "runtime")
    assert runtime["object"] == "default/lost" and f"init process {init} still runs" in runtime["problem"]
    assert procs.alive(shim) and procs.alive(init)  # reporting changes nothing
    # The shim is found through its state directory only: another one's doctor leaves it be.
    assert [s.pid for s in procs.shims_of(daemon.state.resolve())] == [shim]
    assert procs.shims_of(daemon.base.resolve() / "other-state") == []

    code, report = doctor_json(daemon, "--fix")
    assert code == 0, report
    assert all(f["outcome"]["fixed"] for f in report["findings"]), report
    assert not procs.alive(shim) and not procs.alive(init)
    assert not (daemon.state / "runc" / "default" / "lost").exists()
    assert not any((daemon.state / "s").iterdir())


def test_a_bundle_whose_shim_never_started(daemon: Daemon) -> None:
    daemon.stop()
    bundle = daemon.state / "tasks" / "ns1" / "half"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    target = Target.at(daemon.root, daemon.state)
    [finding] = task_checks.check_bundles(target)
    assert (finding.object, finding.problem) == ("ns1/half", "no shim was ever started for it")
    assert task_checks.repair_shim_delete(target, finding) == "removed; exit status 255"
    assert not bundle.exists()
    assert task_checks.check_bundles(target) == []


def test_stray_mounts_and_sockets(daemon: Daemon) -> None:
    daemon.stop()
    source = daemon.base / "source"
    source.mkdir()
    (source / "file").write_text("x")
    where = daemon.state / "stray"
    where.mkdir(parents=True)
    tmpmount = daemon.root / "tmpmounts" / "ctrpy-mount-left"
    tmpmount.mkdir(parents=True)
    for point in (where, tmpmount):
        subprocess.run(["mount", "--bind", str(source), str(point)], check=True)
    socket_path = daemon.state / "s" / "0123456789abcdef01234567"
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.close()  # the file stays, nothing listens
    try:
        code, report = doctor_json(daemon)
        assert code == 1
        assert problems(report) == {
            ("mounts", str(where)),
            ("mounts", str(tmpmount)),
            ("sockets", str(socket_path)),
            ("temp", str(tmpmount)),
        }
        code, report = doctor_json(daemon, "--fix")
        assert code == 0, report
        assert not mounted_below(daemon.base)
        assert not socket_path.exists() and not tmpmount.exists()
        assert (source / "file").read_text() == "x"  # unmounting never touches what was mounted
    finally:
        for point in (where, tmpmount):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
