"""A /tasks/exit event that no shim sent must not hide the task's real exit.

Events.Publish is open to every client of the socket. ctrpyd notes the exits the shims
publish, so that a shim dying after it reported its task's exit does not get the exit
reported twice; an exit some client made up must not count as one: when the shim is later
killed, ctrpyd reports the task's exit itself, once, and the task is STOPPED.
"""

from __future__ import annotations

import os
import signal
import time

from ctrpy.api.containerd.events import task_pb2 as task_events
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.shim.events import pack, timestamp
from tests.crash.support import IMAGE, CrashDaemon, Events, alive, wait_until


def _exit_statuses(events: Events) -> list[int]:
    return [e.body.get("exit_status", 0) for e in events.seen("/tasks/exit")]


def test_a_forged_exit_does_not_hide_the_exit_of_a_killed_shim(ready: CrashDaemon) -> None:
    d = ready
    events = Events(d, d.namespace)
    try:
        d.ok("run", "-d", IMAGE, "c1", "sleep", "1000")
        wait_until(lambda: events.seen("/tasks/start"), "ctr events to be subscribed")
        shim, init = d.shim_pid("c1"), d.init_pid("c1")
        # As the shim would word it, with the real pid: only the time cannot be guessed.
        forged = task_events.TaskExit(container_id="c1", id="c1", pid=init, exit_status=0,
                                      exited_at=timestamp(time.time_ns()))
        with d.api() as client:
            client.call(client.events.Publish, events_pb2.PublishRequest(topic="/tasks/exit", event=pack(forged)))
        wait_until(lambda: _exit_statuses(events) == [0], "the forged exit to go round")
        assert d.status("c1") == "RUNNING"
        os.kill(shim, signal.SIGKILL)
        wait_until(lambda: len(_exit_statuses(events)) == 2, "ctrpyd to report the real exit")
        assert _exit_statuses(events) == [0, 255]
        assert d.status("c1") == "STOPPED"
        assert d.wait_exit("c1") == 255
        wait_until(lambda: not alive(init), "the container to be gone")
        d.ok("tasks", "rm", "c1")
        d.ok("containers", "rm", "c1")
        wait_until(lambda: events.seen("/containers/delete"), "the container's removal")
        assert _exit_statuses(events) == [0, 255]  # the real exit, once
    finally:
        events.stop()
