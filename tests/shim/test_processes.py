"""Exec, signals, pause/resume, pids, stats, terminals and OOM through a real shim."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable

import pytest

from ctrpy.api.cgroups.cgroup1.stats import metrics_pb2 as v1
from ctrpy.errors import AlreadyExists, FailedPrecondition, NotFound
from tests.shim.conftest import aio
from tests.shim.harness import Env

CREATED, RUNNING, STOPPED, PAUSED = 1, 2, 3, 4


def process_spec(env: Env, args: list[str], *, terminal: bool = False) -> bytes:
    process = dict(env.spec["process"])
    process["args"] = args
    process["terminal"] = terminal
    return json.dumps(process).encode()


@aio
async def test_exec_has_its_own_output_and_exit(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        task = await env.task("t1", ["sleep", "1000"])
        await task.create(task.stdio())
        await task.shim.start()
        stdio = task.stdio(prefix="e1-")
        await task.shim.exec("e1", stdio, process_spec(env, ["sh", "-c", "echo from-exec; exit 3"]))
        with pytest.raises(AlreadyExists):
            await task.shim.exec("e1", stdio, process_spec(env, ["true"]))
        assert (await task.shim.state("e1")).status == CREATED
        waiter = asyncio.ensure_future(task.shim.wait("e1"))
        exec_pid = await task.shim.start("e1")
        exited = await waiter
        assert exited.exit_status == 3
        assert task.output("e1-stdout") == b"from-exec\n"
        state = await task.shim.state("e1")
        assert (state.status, state.pid, state.exit_status) == (STOPPED, exec_pid, 3)
        assert (await task.shim.state()).status == RUNNING
        deleted = await task.shim.delete("e1")
        assert (deleted.pid, deleted.exit_status) == (exec_pid, 3)
        with pytest.raises(NotFound):
            await task.shim.state("e1")
        await task.shim.kill(9)
        assert (await task.shim.wait()).exit_status == 137
        await env.manager.wait_for("/tasks/exit", "t1", match=lambda e: e.id == "t1")
        assert env.manager.topics("t1") == [
            "/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/exit",
        ]  # fmt: skip
        await task.shim.delete()


@aio
async def test_exec_that_exits_at_once(make_env: Callable[..., Env]) -> None:
    """An exec that is gone before runc returns is still reaped and reported."""
    async with make_env() as env:
        task = await env.task("t1", ["sleep", "1000"])
        await task.create(task.stdio())
        await task.shim.start()
        for i in range(5):
            stdio = task.stdio(prefix=f"q{i}-")
            await task.shim.exec(f"q{i}", stdio, process_spec(env, ["true"]))
            await task.shim.start(f"q{i}")
            assert (await task.shim.wait(f"q{i}")).exit_status == 0
            await task.shim.delete(f"q{i}")
        await task.shim.kill(9)
        await task.shim.wait()


@aio
async def test_kill_term_kill_and_all(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        trap = ["sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.05; done"]
        task = await env.task("term", trap)
        await task.create(task.stdio())
        await task.shim.start()
        # SIGTERM may arrive before sh has set its trap, and a PID 1 ignores a default-action
        # signal: send it again until the trapped exit happens.
        waiting = asyncio.ensure_future(task.shim.wait())
        for _ in range(100):
            try:
                await task.shim.kill(15)
            except NotFound:  # it exited just now
                break
            done, _ = await asyncio.wait({waiting}, timeout=0.2)
            if done:
                break
        assert (await waiting).exit_status == 143
        with pytest.raises(NotFound, match="process already finished"):
            await task.shim.kill(9)
        await task.shim.delete()

        task = await env.task("all", ["sleep", "1000"])
        await task.create(task.stdio())
        await task.shim.start()
        await task.shim.exec("e1", task.stdio(prefix="e1-"), process_spec(env, ["sleep", "1000"]))
        await task.shim.start("e1")
        await task.shim.kill(9, all=True)
        assert (await task.shim.wait("e1")).exit_status == 137
        assert (await task.shim.wait()).exit_status == 137
        with pytest.raises(FailedPrecondition):
            await task.shim.pause()
        await task.shim.delete("e1")
        await task.shim.delete()


@aio
async def test_pause_resume_pids_and_stats(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        task = await env.task("t1", ["sleep", "1000"])
        init_pid = await task.create(task.stdio())
        await task.shim.start()
        await task.shim.exec("e1", task.stdio(prefix="e1-"), process_spec(env, ["sleep", "1000"]))
        exec_pid = await task.shim.start("e1")
        entries = await task.shim.pids()
        assert {(e.pid, e.exec_id) for e in entries} == {(init_pid, ""), (exec_pid, "e1")}
        # Nothing of the shim's (sockets, FIFOs, eventfds) leaks into the container.
        assert sorted(os.listdir(f"/proc/{init_pid}/fd")) == ["0", "1", "2"]
        assert sorted(os.listdir(f"/proc/{exec_pid}/fd")) == ["0", "1", "2"]

        await task.shim.pause()
        assert (await task.shim.state()).status == PAUSED
        with pytest.raises(FailedPrecondition):
            await task.shim.pause()
        await task.shim.resume()
        assert (await task.shim.state()).status == RUNNING
        await env.manager.wait_for("/tasks/resumed", "t1")
        assert env.manager.topics("t1")[-2:] == ["/tasks/paused", "/tasks/resumed"]

        stats = await task.shim.stats()
        assert stats.type_url == "io.containerd.cgroups.v1.Metrics"
        metrics = v1.Metrics.FromString(stats.value)
        assert metrics.pids.current == 2
        assert metrics.memory.usage.usage > 0
        assert metrics.cpu.usage.total > 0

        await task.shim.update(json.dumps({"pids": {"limit": 50}}).encode())
        metrics = v1.Metrics.FromString((await task.shim.stats()).value)
        assert metrics.pids.limit == 50

        await task.shim.kill(9, all=True)
        await task.shim.wait()
        await task.shim.delete()


@aio
async def test_terminal_and_resize(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        script = "read line; stty size; echo got:$line"
        task = await env.task("tty", ["sh", "-c", script], terminal=True)
        stdio = task.stdio(stdin=True, terminal=True)
        await task.create(stdio)
        waiter = asyncio.ensure_future(task.shim.wait())
        await task.shim.start()
        await task.shim.resize_pty(100, 40)
        task.write_stdin(b"hello\n")
        assert (await waiter).exit_status == 0
        out = task.output()
        assert b"40 100" in out
        assert b"got:hello" in out
        state = await task.shim.state()
        assert state.stdio.terminal and state.stdio.stderr == ""
        await task.shim.delete()

        task = await env.task("tty-exec", ["sleep", "1000"])
        await task.create(task.stdio())
        await task.shim.start()
        stdio = task.stdio(prefix="e1-", stdin=True, terminal=True)
        await task.shim.exec("e1", stdio, process_spec(env, ["sh", "-c", script], terminal=True))
        waiter = asyncio.ensure_future(task.shim.wait("e1"))
        await task.shim.start("e1")
        await task.shim.resize_pty(33, 11, exec_id="e1")
        task.write_stdin(b"from-exec\n", "e1-stdin")
        assert (await waiter).exit_status == 0
        out = task.output("e1-stdout")
        assert b"11 33" in out and b"got:from-exec" in out
        await task.shim.delete("e1")
        await task.shim.kill(9)
        await task.shim.wait()
        await task.shim.delete()


@aio
async def test_oom_kill_is_reported(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        hog = ["sh", "-c", "x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived"]
        status, out, _ = await env.run("oom", hog, memory_limit=8 << 20)
        assert status == 137
        assert b"survived" not in out
        await env.manager.wait_for("/tasks/oom", "oom")
        await env.manager.wait_for("/tasks/exit", "oom")
        topics = env.manager.topics("oom")
        assert topics.index("/tasks/oom") < topics.index("/tasks/exit")


@aio
async def test_unknown_ids(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        task = await env.task("t1", ["true"])
        with pytest.raises(NotFound):
            await task.shim.state()
        with pytest.raises(NotFound):
            await task.shim.start("nope")
        await task.create(task.stdio())
        with pytest.raises(AlreadyExists):
            await task.create(task.stdio(prefix="again-"))
        with pytest.raises(NotFound):
            await task.shim.wait("nope")
        await task.shim.delete()
