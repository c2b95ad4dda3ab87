"""Twenty tasks in a row leave nothing behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from ctrpy.mount import mountpoints_under
from ctrpy.shim.spare import SPARE_PREFIX
from tests.shim.conftest import aio
from tests.shim.harness import NAMESPACE, Env, cgroup_dirs, is_shim

RUNS = 20


def zombie_children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] == "Z":
            found.append(int(entry.name))
    return found


def shim_pids(state: Path) -> set[int]:
    """Shims of this test's state dir only: other suites may run shims at the same time.
    (A forked shim carries its template's command line, which names the state dir too.)"""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and is_shim(int(entry.name)):
            try:
                if str(state).encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


async def settled_fds(quiet: float = 0.25, limit: float = 10.0) -> list[str]:
    """This process's descriptors once they stop changing: a finished run's connections (to its
    shim, from its shim's events) close a few loop turns after the run returns."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    seen, since = sorted(os.listdir("/proc/self/fd")), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.05)
        now = sorted(os.listdir("/proc/self/fd"))
        if now != seen:
            seen, since = now, loop.time()
        elif loop.time() - since >= quiet:
            break
    return seen


@aio
async def test_twenty_runs_leave_nothing_behind(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        shims_before = shim_pids(env.state)
        # One run first, so that lazily created ttrpc/asyncio descriptors exist before counting.
        assert await env.run_and_remove("warmup", ["true"]) == 0
        fds_before = await settled_fds()
        for i in range(RUNS):
            assert await env.run_and_remove(f"run{i}", ["sh", "-c", f"echo {i}; exit {i % 3}"]) == i % 3
        assert await settled_fds() == fds_before
        assert mountpoints_under(env.state) == []
        assert zombie_children() == []
        assert not any((env.state / "tasks" / NAMESPACE).iterdir())
        assert not env.runtime_root.exists() or not any(env.runtime_root.iterdir())
        assert all(not any(p.is_dir() for p in d.iterdir()) for d in cgroup_dirs(env.cgroup_parent))
        assert shim_pids(env.state) - shims_before == set()
        sockets = sorted(p.name for p in (env.state / "s").iterdir() if not p.name.startswith(SPARE_PREFIX))
        assert sockets == ["template"]  # the template's spare shim listens on a socket of its own
