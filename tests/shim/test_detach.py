"""Shims outlive whoever started them; dead shims are cleaned up; live ones are found again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ctrpy.manager.runtime import ShimClient, ShimLauncher, recover
from ctrpy.mount import mountpoints_under
from ctrpy.shim.config import ShimConfig
from tests.shim.conftest import aio
from tests.shim.harness import NAMESPACE, Env, cgroup_dirs

STARTER = """
import asyncio, sys
from ctrpy.manager.runtime import Bundle, ShimLauncher

async def main() -> None:
    state, namespace, container_id, manager, mode = sys.argv[1:6]
    launcher = ShimLauncher(state, manager, use_template=(mode == "template"))
    await launcher.start()
    client = await launcher.start_shim(Bundle.at(state, namespace, container_id))
    print(client.address, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def ppid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.mark.parametrize("mode", ["template", "spawn"])
@aio
async def test_shim_survives_sigkill_of_its_starter(make_env: Callable[..., Env], mode: str) -> None:
    # The env runs no template of its own: the starter's template needs the socket.
    async with make_env(use_template=False) as env:
        task = await env.task("t1", ["sh", "-c", "echo survived; exit 6"], start_shim=False)
        starter = subprocess.Popen(
            [
                sys.executable,
                "-c",
                STARTER,
                str(env.state),
                NAMESPACE,
                "t1",
                str(env.manager.socket_path),
                mode,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert starter.stdout is not None
            address = ""
            while not address.startswith("unix://"):  # skip the launcher's log lines
                line = await asyncio.to_thread(starter.stdout.readline)
                assert line, "the starter exited without an address"
                address = line.decode().strip()
            shim_pid = task.shim_pid
            assert shim_pid is not None and ppid_of(shim_pid) != starter.pid
            starter.kill()
            # EOF on the starter's stdout proves that neither the shim nor the template kept it.
            await asyncio.to_thread(starter.communicate, None, 30)
        finally:
            if starter.poll() is None:
                starter.kill()
                starter.wait()
        assert alive(shim_pid)
        task.client = await ShimClient.connect(address, "t1")
        await task.create(task.stdio())
        waiter = asyncio.ensure_future(task.shim.wait())
        await task.shim.start()
        assert (await waiter).exit_status == 6
        assert task.output() == b"survived\n"
        await task.shim.delete()
        await task.shim.shutdown()
        for _ in range(500):
            if not alive(shim_pid):
                break
            await asyncio.sleep(0.01)
        assert not alive(shim_pid)
        assert not Path(
            ShimConfig(NAMESPACE, "t1", str(task.bundle.path), "", str(env.state)).socket_path
        ).exists()


@aio
async def test_delete_command_after_the_shim_was_killed(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        # The container exited and its exit was written before the shim died: that status wins.
        done = await env.task("done", ["sh", "-c", "exit 5"])
        await done.create(done.stdio())
        await done.shim.start()
        await done.shim.wait()
        done_pid = done.shim_pid
        assert done_pid is not None
        os.kill(done_pid, signal.SIGKILL)
        info = await env.launcher.delete_shim(done.bundle)
        assert info.exit_status == 5
        assert not done.bundle.path.exists()
        assert not (env.runtime_root / "done").exists()

        # The shim died under a running container: the container is killed, status 255.
        running = await env.task("running", ["sleep", "1000"])
        init_pid = await running.create(running.stdio())
        await running.shim.start()
        running_pid = running.shim_pid
        assert running_pid is not None
        os.kill(running_pid, signal.SIGKILL)
        info = await env.launcher.delete_shim(running.bundle)
        assert (info.pid, info.exit_status) == (init_pid, 255)
        assert not alive(init_pid)
        assert not running.bundle.path.exists()
        assert not (env.runtime_root / "running").exists()
        assert all(not (d / "running").exists() for d in cgroup_dirs(env.cgroup_parent))
        assert not mountpoints_under(env.state)


@aio
async def test_recover_finds_live_shims_and_cleans_dead_ones(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        live = await env.task("live", ["sleep", "1000"])
        await live.create(live.stdio())
        await live.shim.start()
        exited = await env.task("exited", ["sh", "-c", "exit 4"])
        await exited.create(exited.stdio())
        await exited.shim.start()
        await exited.shim.wait()
        orphan = await env.task("orphan", ["sleep", "1000"])
        await orphan.create(orphan.stdio())
        await orphan.shim.start()
        await env.task("never", ["true"], start_shim=False)
        for task in (exited, orphan):
            pid = task.shim_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

        found = {f.bundle.id: f for f in await recover(env.state)}
        assert sorted(found) == ["exited", "live", "never", "orphan"]
        assert found["live"].alive and found["live"].client is not None
        assert [found[i].exit.exit_status for i in ("exited", "orphan", "never")] == [4, 255, 255]  # type: ignore[union-attr]
        assert not any(found[i].bundle.path.exists() for i in ("exited", "orphan", "never"))
        client = found["live"].client
        assert client is not None
        try:
            assert (await client.state()).status == 2
            await client.kill(9)
            assert (await client.wait()).exit_status == 137
            await client.delete()
        finally:
            await client.close()


@aio
async def test_template_fork_versus_spawn(
    make_env: Callable[..., Env], capsys: pytest.CaptureFixture[str]
) -> None:
    """Both ways start working shims; the numbers are printed, not asserted."""
    async with make_env() as env:
        spawner = ShimLauncher(env.state, str(env.manager.socket_path), use_template=False)
        timings: dict[str, list[float]] = {"template": [], "spawn": []}
        for i in range(3):
            for mode, launcher in (("template", env.launcher), ("spawn", spawner)):
                task = await env.task(f"{mode}{i}", ["true"], start_shim=False)
                started = time.perf_counter()
                task.client = await launcher.start_shim(task.bundle)
                timings[mode].append(time.perf_counter() - started)
                info = await task.shim.info()
                assert info.shim_pid == task.shim_pid
                if mode == "template":
                    template = env.launcher.template_pid
                    assert template is not None and ppid_of(info.shim_pid) != template
                    # The template never starts a thread (it forks).
                    assert len(os.listdir(f"/proc/{template}/task")) == 1
        with capsys.disabled():
            for mode, values in timings.items():
                print(f"\n{mode}: time to a serving shim " + ", ".join(f"{v * 1000:.1f} ms" for v in values))
