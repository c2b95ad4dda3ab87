"""The template's spare shim: claimed by the next shim start, replaced, and gone with its template."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ctrpy.errors import CtrpyError
from ctrpy.manager.runtime import Bundle
from ctrpy.shim.spare import SPARE_NAME, SPARE_PREFIX
from tests.crash.support import CrashDaemon
from tests.shim.conftest import aio
from tests.shim.harness import NAMESPACE, Env, is_shim

DEADLINE = 30.0


def spares(state: Path) -> set[int]:
    """Unclaimed spare shims of this test's state dir (their command line is the template's)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        name, _, rest = stat.partition(" (")[2].rpartition(") ")
        if name.encode() == SPARE_NAME and rest[:1] not in ("Z", "X") and str(state).encode() in cmdline:
            found.add(int(entry.name))
    return found


async def one_spare(state: Path, other_than: int = 0) -> int:
    """The one ready spare (its socket is there), waiting for it; not ``other_than``."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = spares(state) - {other_than}
        if len(found) == 1 and (state / "s" / f"{SPARE_PREFIX}{min(found)}").exists():
            return min(found)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no spare shim came up: {spares(state)}")


async def gone(pid: int) -> bool:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rpartition(") ")[2][:1] in ("Z", "X"):
            return True
        await asyncio.sleep(0.05)
    return False


@aio
async def test_a_shim_start_claims_the_spare_and_a_new_one_follows(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        spare = await one_spare(env.state)
        task = await env.task("claimed", ["sh", "-c", "exit 3"])
        assert task.shim_pid == spare
        assert is_shim(spare)  # renamed ctrpy-shim once claimed: a task's shim now
        assert not (env.state / "s" / f"{SPARE_PREFIX}{spare}").exists()
        assert (env.state / "s").joinpath(os.path.basename(task.shim.address.removeprefix("unix://"))).exists()
        await task.create(task.stdio())
        await task.shim.start()
        assert (await task.shim.wait()).exit_status == 3
        assert await one_spare(env.state, other_than=spare) != spare


@aio
async def test_a_failed_claim_answers_an_error_and_leaves_nothing(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        spare = await one_spare(env.state)
        with pytest.raises(CtrpyError, match="does not exist"):
            await env.launcher.start_shim(Bundle.at(env.state, NAMESPACE, "no-bundle"))
        assert await gone(spare)
        assert not (env.state / "s" / f"{SPARE_PREFIX}{spare}").exists()
        assert await env.run_and_remove("after", ["true"]) == 0  # the next spare serves


@aio
async def test_the_spare_exits_with_its_template(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        spare = await one_spare(env.state)
        await env.launcher.close()
        assert await gone(spare)
        assert not (env.state / "s" / f"{SPARE_PREFIX}{spare}").exists()
        await env.launcher.start()  # and a killed template takes its spare along too
        spare = await one_spare(env.state, other_than=spare)
        template = env.launcher.template_pid
        assert template is not None
        os.kill(template, signal.SIGKILL)
        assert await gone(spare)


@aio
async def test_no_spare_when_disabled(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        env.launcher.spare = False
        await env.launcher.close()
        await env.launcher.start()
        assert await env.run_and_remove("plain", ["true"]) == 0
        assert spares(env.state) == set()


def test_template_and_spare_die_with_a_killed_ctrpyd() -> None:
    daemon = CrashDaemon()
    try:
        daemon.start()
        state = daemon.state
        spare = asyncio.run(one_spare(state))
        assert daemon.process is not None
        template = {p for p in daemon.shims() if is_template(p)}
        assert len(template) == 1
        daemon.kill()
        assert asyncio.run(gone(spare))
        assert asyncio.run(gone(min(template)))
    finally:
        daemon.reap()


def is_template(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "ctrpy-template"
    except OSError:
        return False
