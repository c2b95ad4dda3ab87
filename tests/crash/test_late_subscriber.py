"""Exits that happened while ctrpyd was down reach clients that re-subscribe after the restart.

A client that keeps state from events (dockerd) reconnects some seconds after ctrpyd is back;
by then a live shim has already delivered the exit it queued, and the exit of a shim that died
meanwhile was published during start-up. ctrpyd keeps those exits for a while and gives them
to each new subscriber (manager/events.py, ``Exchange.replay_exits``); other events are not
replayed.
"""

from __future__ import annotations

import time

from tests.crash.support import IMAGE, CrashDaemon, Events, exit_when, kill_and_wait, wait_until


def exits(events: Events) -> dict[str, int]:
    """container id -> exit status of the /tasks/exit events seen (of init processes)."""
    return {e.body["container_id"]: int(e.body.get("exit_status", 0))
            for e in events.seen("/tasks/exit") if e.body.get("id") == e.body["container_id"]}


def test_an_exit_during_the_downtime_reaches_a_later_subscriber(ready: CrashDaemon) -> None:
    d = ready
    d.ok("run", "-d", IMAGE, "quits", *exit_when("/go", 42))
    d.ok("run", "-d", IMAGE, "stays", "sleep", "1000")
    d.kill()
    (d.rootfs("quits") / "go").touch()
    wait_until(lambda: (d.bundle("quits") / "exit").exists(), "the exit file of 'quits'")
    logged = len(d.log())
    d.start()
    # The shim delivers its queued exit once ctrpyd answers (its back-off is at most 2 s); it is
    # the only exit of the new ctrpyd so far, and ctrpyd logs every event at debug level.
    wait_until(lambda: "topic=/tasks/exit" in d.log()[logged:], "the shim's exit to arrive")
    assert d.ctr("run", "--rm", IMAGE, "after", "sh", "-c", "exit 3").returncode == 3  # a new task
    late = Events(d, d.namespace)
    try:
        wait_until(lambda: "quits" in exits(late), "the replayed exit")
        time.sleep(0.5)
        assert exits(late) == {"quits": 42}  # not the new task's exit, nor anything else
        d.ok("tasks", "kill", "-s", "KILL", "stays")
        wait_until(lambda: exits(late).get("stays") == 137, "a live exit after the replay")
    finally:
        late.stop()


def test_the_exit_of_a_shim_that_died_during_the_downtime_reaches_a_later_subscriber(ready: CrashDaemon) -> None:
    d = ready
    d.ok("run", "-d", IMAGE, "orphan", "sleep", "1000")
    shim, init = d.shim_pid("orphan"), d.init_pid("orphan")
    d.kill()
    kill_and_wait(shim)
    kill_and_wait(init)
    logged = len(d.log())
    d.start()
    # Subscribe only once the exit is out (ctrpyd logs every event at debug level): a replay,
    # not a live delivery, is what this test is about.
    wait_until(lambda: "topic=/tasks/exit" in d.log()[logged:], "the exit's publication at start-up")
    late = Events(d, d.namespace)
    try:
        wait_until(lambda: "orphan" in exits(late), "the exit published at start-up")
    finally:
        late.stop()
