"""Docker Engine on ctrpyd across restarts: dockerd's live-restore, and ctrpyd killed under it.

Each test has its own ctrpyd and dockerd (``--live-restore``), since it stops or kills them.
A container is made to exit at a moment the test chooses by creating a file in its root
filesystem from the host (``/proc/<pid>/root``), so nothing races the test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.crash.support import alive
from tests.docker.support import BUSYBOX, Stack, wait_for

pytestmark = pytest.mark.slow

LOOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
DOWNTIME = 6.0
EXIT_ON_FILE = ["sh", "-c", "until [ -e /go ]; do usleep 20000; done; exit 9"]


def release(pid: int) -> None:
    """Make an ``EXIT_ON_FILE`` container (init ``pid``) exit 9, and wait until it has."""
    Path(f"/proc/{pid}/root/go").touch()
    wait_for(lambda: not alive(pid), f"pid {pid} to exit")


def status(stack: Stack, name: str) -> str:
    return stack.engine.inspect(name, "{{.State.Status}} {{.State.ExitCode}}")


def test_live_restore_keeps_containers_across_a_dockerd_restart(own_stack: Stack) -> None:
    engine = own_stack.engine
    engine.ok("run", "-d", "--name", "keep", BUSYBOX, *LOOP)
    engine.ok("run", "-d", "--name", "ends", BUSYBOX, *EXIT_ON_FILE)
    keep_pid = int(engine.inspect("keep", "{{.State.Pid}}"))
    ends_pid = int(engine.inspect("ends", "{{.State.Pid}}"))
    engine.stop()
    assert alive(keep_pid) and alive(ends_pid)
    release(ends_pid)  # exits while dockerd is down
    engine.start()
    assert status(own_stack, "keep") == "running 0"
    assert int(engine.inspect("keep", "{{.State.Pid}}")) == keep_pid
    wait_for(lambda: status(own_stack, "ends") == "exited 9", "the exit while dockerd was down")
    assert engine.ok("exec", "keep", "echo", "still-here") == "still-here\n"
    engine.ok("stop", "-t", "20", "keep")
    assert status(own_stack, "keep") == "exited 0"
    engine.ok("start", "keep")  # the container is whole: it starts again
    assert status(own_stack, "keep") == "running 0"


def test_ctrpyd_killed_and_restarted_under_running_containers(own_stack: Stack) -> None:
    engine, ctrpyd = own_stack.engine, own_stack.ctrpyd
    engine.ok("run", "-d", "--name", "keep", BUSYBOX, *LOOP)
    engine.ok("run", "-d", "--name", "ends", BUSYBOX, *EXIT_ON_FILE)
    keep_pid = int(engine.inspect("keep", "{{.State.Pid}}"))
    ends_pid = int(engine.inspect("ends", "{{.State.Pid}}"))
    ctrpyd.kill()  # SIGKILL: the shims and containers go on
    release(ends_pid)  # exits while ctrpyd is down
    assert alive(keep_pid)
    # Down long enough for dockerd's reconnect back-off to grow past the shim's: the shim then
    # delivers the exit before dockerd has re-subscribed, and ctrpyd replays it to dockerd.
    time.sleep(DOWNTIME)
    ctrpyd.start()
    # dockerd resubscribes to events on its own and hears of the exit it missed.
    wait_for(lambda: status(own_stack, "ends") == "exited 9", "the exit while ctrpyd was down")
    assert status(own_stack, "keep") == "running 0"
    assert engine.ok("exec", "keep", "echo", "after-crash") == "after-crash\n"
    # A dockerd restarted while ctrpyd still replays that exit hears it again, and ignores it
    # (the container is stopped: the exit's pid is no longer the container's).
    finished = engine.inspect("ends", "{{.State.FinishedAt}}")
    engine.restart()
    assert status(own_stack, "ends") == "exited 9" and status(own_stack, "keep") == "running 0"
    assert engine.inspect("ends", "{{.State.FinishedAt}} {{.RestartCount}}") == f"{finished} 0"
    engine.ok("stop", "-t", "20", "keep")
    assert status(own_stack, "keep") == "exited 0"
    engine.ok("rm", "keep", "ends")
    assert engine.cgroups() == []
    assert not list((ctrpyd.state / "tasks").glob("*/*"))
