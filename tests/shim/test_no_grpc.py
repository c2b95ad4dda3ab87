"""A shim makes no gRPC object: it speaks ttrpc both ways (issue 13: a shim per container).

The evidence is the shim's threads. gRPC's C core starts native threads the moment a server or
channel is made (``event_engine``, ``grpc_global_timer``, ``lifeguard``, ...) and names them
itself; a Python thread keeps the name of the process that started it. So a shim that made no
gRPC object has only threads named ``ctrpy-shim`` (or ``ctrpy-spare``, for one started while it
was still a spare). Importing grpc, which ctrpy.errors still does, starts no thread and is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ctrpy.shim.config import PROCESS_NAME
from ctrpy.shim.spare import SPARE_NAME
from tests.shim.conftest import aio
from tests.shim.harness import Env

SHIM_THREAD_NAMES = {PROCESS_NAME.decode(), SPARE_NAME.decode()}


def thread_names(pid: int) -> list[str]:
    """The ``comm`` of every thread of ``pid``."""
    return sorted(path.read_text().strip() for path in Path(f"/proc/{pid}/task").glob("*/comm"))


@pytest.mark.parametrize("mode", ["spare", "template", "spawn"])
@aio
async def test_a_working_shim_runs_no_grpc_thread(make_env: Callable[..., Env], mode: str) -> None:
    env = make_env(use_template=mode != "spawn")
    env.launcher.spare = mode == "spare"
    async with env:
        task = await env.task("t1", ["sleep", "1000"])
        await task.create(task.stdio())
        await task.shim.start()
        await task.shim.state()
        await env.manager.wait_for("/tasks/start", "t1")  # the shim's events went out too
        pid = task.shim_pid
        assert pid is not None
        names = thread_names(pid)
        assert names and set(names) <= SHIM_THREAD_NAMES, f"threads of the shim ({mode}): {names}"
        await task.shim.kill(9)
        assert (await task.shim.wait()).exit_status == 137
        await task.shim.delete()
        await env.manager.wait_for("/tasks/delete", "t1")
        names = thread_names(pid)
        assert set(names) <= SHIM_THREAD_NAMES, f"threads of the shim ({mode}): {names}"
        await task.shim.shutdown()
