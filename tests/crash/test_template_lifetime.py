"""The shim template never outlives its ctrpyd; the shims it forked always do.

The template reads its stdin from a pipe only ctrpyd holds the other end of (ctrpyd's other
children are exec'd with their descriptors closed): when ctrpyd stops or is killed, the pipe
reaches end of file and the template exits, its unclaimed spare shim with it. A shim forked
from the template is a task's: it keeps the container running across the manager's death,
and the next ctrpyd takes it back and starts a template of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash.support import IMAGE, CrashDaemon, alive, wait_until


def templates(d: CrashDaemon) -> list[int]:
    return [pid for pid in d.shims() if _comm(pid) == "ctrpy-template"]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_template_goes_with_ctrpyd_and_its_shims_stay(ready: CrashDaemon, how: str) -> None:
    d = ready
    d.ok("run", "-d", IMAGE, "c1", "sleep", "1000")
    shim, init = d.shim_pid("c1"), d.init_pid("c1")
    template = wait_until(lambda: templates(d), "the shim template")
    assert len(template) == 1 and shim not in template
    if how == "SIGTERM":
        assert d.stop() == 0
    else:
        d.kill()
    wait_until(lambda: not alive(template[0]), "the template to exit with ctrpyd")
    assert alive(shim) and alive(init), "a shim or its container died with the manager"
    d.start()
    assert d.tasks() == {"c1": (init, "RUNNING")}
    assert d.shim_pid("c1") == shim
    assert wait_until(lambda: templates(d), "the new ctrpyd's template") != template
    d.ok("tasks", "kill", "-s", "KILL", "c1")
    assert d.wait_exit("c1") == 137
    d.ok("tasks", "rm", "c1")
    d.ok("containers", "rm", "c1")
    wait_until(lambda: not alive(shim), "the shim to exit once its task is deleted")
