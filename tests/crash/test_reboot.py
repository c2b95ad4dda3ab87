"""The host reboots: every process and mount is gone and the state dir is empty; the root stays.

Simulated without rebooting: stop ctrpyd, kill its shims and containers by pid, unmount what is
mounted under the state dir, remove the containers' cgroups, wipe the state dir. ctrpyd then
starts clean: containers are records without tasks, images and snapshots are intact, and
containers run again.
"""

from __future__ import annotations

import re
import shutil

from ctrpy import mount as mounts
from tests.crash.support import IMAGE, CrashDaemon, kill_and_wait, remove_cgroups, wait_until


def _power_cycle(d: CrashDaemon, containers: list[str]) -> None:
    inits = [d.init_pid(c) for c in containers if (d.bundle(c) / "init.pid").exists()]
    assert d.stop() == 0
    for pid in d.shims():
        kill_and_wait(pid)
    remove_cgroups(f"/{d.namespace}")  # thaws the paused one, kills what is in them by pid
    for pid in inits:
        kill_and_wait(pid)
    mounts.unmount_recursive(d.state)
    shutil.rmtree(d.state)
    assert d.leftover_mounts() == []


def test_host_reboot(ready: CrashDaemon) -> None:
    d = ready
    d.ok("run", "-d", IMAGE, "running", "sleep", "1000")
    d.ok("run", "-d", IMAGE, "paused", "sleep", "1000")
    d.ok("tasks", "pause", "paused")
    d.ok("run", "-d", IMAGE, "stopped", "sh", "-c", "exit 3")
    wait_until(lambda: d.status("stopped") == "STOPPED", "the task 'stopped' to exit")
    d.ok("containers", "create", IMAGE, "idle", "true")
    (d.rootfs("running") / "kept").write_text("in the container's snapshot")
    names = sorted(["running", "paused", "stopped", "idle"])
    images = d.ok("images", "ls")
    snapshots = d.ok("snapshots", "ls")
    content = d.ok("content", "ls", "-q")

    _power_cycle(d, names)
    offset = len(d.log())
    d.start()
    startup = d.log()[offset:]
    assert [w for w in ("task recovered", "shim is gone", "left behind") if w in startup] == []
    assert d.tasks() == {}
    assert d.containers() == names
    assert d.ok("images", "ls") == images
    assert d.ok("snapshots", "ls") == snapshots
    # Every blob the image needs is there (the collector may have taken an unreferenced one).
    assert set(d.ok("content", "ls", "-q").split()) <= set(content.split())
    assert re.search(r"\scomplete \(\d+/\d+\)", d.ok("images", "check")), d.ok("images", "check")
    # Containers run again: new ones, and the old ones with what their snapshots held.
    assert d.ok("run", "--rm", IMAGE, "fresh", "echo", "hi") == "hi\n"
    d.ok("tasks", "start", "-d", "running")
    assert d.status("running") == "RUNNING"
    assert (
        d.ok("tasks", "exec", "--exec-id", "cat", "running", "cat", "/kept") == "in the container's snapshot"
    )
    d.ok("tasks", "kill", "-s", "KILL", "running")
    assert d.wait_exit("running") == 137
    d.ok("tasks", "rm", "running")
    for name in names:
        d.ok("containers", "rm", name)
    assert d.containers() == []
    assert "Active" not in d.ok("snapshots", "ls")
    assert d.leftover_mounts() == []
