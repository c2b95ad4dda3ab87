"""A task's life through a real shim and real runc: create, start, wait, delete, events."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable

import pytest

from ctrpy.errors import CtrpyError, FailedPrecondition, NotFound
from ctrpy.manager.runtime import Stdio, runc_options
from ctrpy.mount import Mount, mountpoints_under
from ctrpy.shim import files
from tests.shim.conftest import aio
from tests.shim.harness import NAMESPACE, Env, cgroup_dirs

CREATED, RUNNING, STOPPED, PAUSED = 1, 2, 3, 4


@aio
async def test_exit_status_and_output(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        began = time.time_ns()
        status, out, err = await env.run("ok", ["sh", "-c", "echo hello; echo oops >&2"])
        assert (status, out, err) == (0, b"hello\n", b"oops\n")
        status, out, _ = await env.run("seven", ["sh", "-c", "echo bye; exit 7"])
        assert (status, out) == (7, b"bye\n")
        await env.manager.wait_for("/tasks/delete", "seven")
        assert env.manager.topics("seven") == [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
        ]
        published = env.manager.events
        assert {e.namespace for e in published} == {NAMESPACE}
        assert {e.metadata_namespace for e in published} == {NAMESPACE}  # as containerd's shims send it
        stamps = [e.timestamp_ns for e in published if getattr(e.decode(), "container_id", "") == "seven"]
        assert stamps == sorted(stamps) and stamps[0] >= began  # when each event happened, in order
        assert {e.type_url for e in published} >= {
            "containerd.events.TaskExit",
            "containerd.events.TaskCreate",
        }


@aio
async def test_states_wait_before_start_and_delete(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        task = await env.task("t1", ["sh", "-c", "exit 3"])
        pid = await task.create(task.stdio())
        state = await task.shim.state()
        assert (state.status, state.pid, state.stdio.stdout) == (CREATED, pid, str(task.fifos["stdout"]))
        assert task.bundle.init_pid() == pid
        waiter = asyncio.ensure_future(task.shim.wait())
        assert await task.shim.start() == pid
        exit_info = await waiter
        assert exit_info.exit_status == 3
        state = await task.shim.state()
        assert (state.status, state.exit_status, state.exited_at_ns) == (STOPPED, 3, exit_info.exited_at_ns)
        with pytest.raises(FailedPrecondition):
            await task.shim.start()
        # Wait after the exit answers at once, from memory.
        assert (await task.shim.wait()).exit_status == 3
        on_disk = task.bundle.exit()
        assert on_disk is not None and (on_disk.pid, on_disk.exit_status) == (pid, 3)
        deleted = await task.shim.delete()
        assert (deleted.pid, deleted.exit_status) == (pid, 3)
        with pytest.raises(NotFound):
            await task.shim.state()
        assert not mountpoints_under(task.bundle.path)
        assert not (env.runtime_root / "t1").exists()
        assert all(not (d / "t1").exists() for d in cgroup_dirs(env.cgroup_parent))
        await task.shim.shutdown()


@aio
async def test_delete_of_created_task(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        task = await env.task("t1", ["true"])
        pid = await task.create(task.stdio())
        deleted = await task.shim.delete()
        assert deleted.pid == pid
        await env.manager.wait_for("/tasks/delete", "t1")
        assert env.manager.topics("t1")[-2:] == ["/tasks/exit", "/tasks/delete"]
        assert not mountpoints_under(task.bundle.path)
        assert not (env.runtime_root / "t1").exists()


@aio
async def test_exit_file_is_written_before_the_exit_is_reported(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        status, _, _ = await env.run("t1", ["sh", "-c", "exit 5"])
        assert status == 5
        exit_event = await env.manager.wait_for("/tasks/exit", "t1")
        assert exit_event.exit_file is not None and exit_event.exit_file.exit_status == 5
        decoded = exit_event.decode()
        assert (decoded.exit_status, decoded.pid) == (5, exit_event.exit_file.pid)  # type: ignore[attr-defined]


@aio
async def test_exit_is_retried_until_the_manager_takes_it(make_env: Callable[..., Env]) -> None:
    async with make_env(fail_first=4) as env:
        status, _, _ = await env.run("t1", ["sh", "-c", "exit 9"])
        assert status == 9
        exit_event = await env.manager.wait_for("/tasks/exit", "t1")
        assert exit_event.decode().exit_status == 9  # type: ignore[attr-defined]
        assert env.manager.failed == 4
        await env.manager.wait_for("/tasks/delete", "t1")
        assert env.manager.topics("t1") == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]


@aio
async def test_exit_reaches_a_manager_that_comes_back(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        task = await env.task("t1", ["sh", "-c", "sleep 0.2; exit 8"])
        await task.create(task.stdio())
        await task.shim.start()
        await env.manager.wait_for("/tasks/start", "t1")
        await env.manager.stop()  # ctrpyd goes away...
        assert (await task.shim.wait()).exit_status == 8
        await asyncio.sleep(3)  # ...for longer than the shim's back-off...
        env.manager.socket_path.unlink(missing_ok=True)
        await env.manager.start()  # ...and comes back on the same socket.
        exit_event = await env.manager.wait_for("/tasks/exit", "t1", timeout=30)
        assert exit_event.decode().exit_status == 8  # type: ignore[attr-defined]
        await task.shim.delete()


@aio
async def test_stdin_and_close_io(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        task = await env.task("cat", ["cat"])
        await task.create(task.stdio(stdin=True))
        waiter = asyncio.ensure_future(task.shim.wait())
        await task.shim.start()
        task.write_stdin(b"line one\nline two\n")
        await task.shim.close_io()
        assert (await waiter).exit_status == 0
        assert task.output() == b"line one\nline two\n"
        await task.shim.delete()


@aio
async def test_negative_oom_score_adj_is_clamped(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        status, out, _ = await env.run("t1", ["cat", "/proc/self/oom_score_adj"], oom_score_adj=-500)
        assert (status, out) == (0, b"0\n")
        # The shim rewrote the bundle's config.json (the bundle is still there until removed).
        spec = json.loads((env.bundle_path("t1") / files.CONFIG).read_text())
        assert spec["process"]["oomScoreAdj"] == 0


@aio
async def test_runtime_errors_carry_runc_message(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        task = await env.task("t1", ["/no/such/binary"])
        with pytest.raises(CtrpyError) as caught:
            await task.create(task.stdio())
        message = caught.value.message
        assert message.startswith("OCI runtime create failed: ") and "no such file or directory" in message
        # Nothing is left mounted, and the shim has no task but still answers.
        assert not mountpoints_under(task.bundle.path)
        with pytest.raises(NotFound):
            await task.shim.state()
        await task.shim.shutdown()


@aio
async def test_binary_name_option_picks_the_runtime(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        calls = env.fifo_dir / "calls"
        wrapper = env.fifo_dir / "my-runc"
        wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec runc "$@"\n')
        os.chmod(wrapper, 0o755)
        task = await env.task("t1", ["sh", "-c", "exit 2"])
        rootfs = [Mount("bind", str(env.rootfs), options=("rbind", "rw"))]
        await task.shim.create(task.bundle.path, rootfs, task.stdio(), runc_options(str(wrapper)))
        waiter = asyncio.ensure_future(task.shim.wait())
        await task.shim.start()
        assert (await waiter).exit_status == 2
        await task.shim.delete()
        verbs = [line.split()[6] for line in calls.read_text().splitlines()]
        assert verbs == ["create", "start", "delete"]
        assert f"--root {env.runtime_root} " in calls.read_text()


@aio
async def test_large_output_is_complete_when_wait_returns(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        task = await env.task("big", ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; exit 1"])
        await task.create(task.stdio())
        received = bytearray()
        loop = asyncio.get_running_loop()
        eof = loop.create_future()

        def on_readable() -> None:
            fd = task.readers["stdout"]
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    return
                if not chunk:
                    loop.remove_reader(fd)
                    if not eof.done():
                        eof.set_result(None)
                    return
                received.extend(chunk)

        waiter = asyncio.ensure_future(task.shim.wait())
        loop.add_reader(task.readers["stdout"], on_readable)
        await task.shim.start()
        assert (await waiter).exit_status == 1
        await asyncio.wait_for(eof, 60)  # the shim closes the FIFO once everything is copied
        assert len(received) == 3_000_000
        await task.shim.delete()


@aio
async def test_file_and_null_stdio(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        log = env.fifo_dir / "logs" / "out.log"
        task = await env.task("t1", ["sh", "-c", "echo to-file; echo err-too >&2"])
        uri = f"file://{log}"
        await task.create(Stdio(stdout=uri, stderr=uri))
        waiter = asyncio.ensure_future(task.shim.wait())
        await task.shim.start()
        assert (await waiter).exit_status == 0
        assert sorted(log.read_bytes().splitlines()) == [b"err-too", b"to-file"]
        await task.shim.delete()
        null_task = await env.task("t2", ["sh", "-c", "echo nowhere; exit 4"])
        await null_task.create(Stdio())
        waiter = asyncio.ensure_future(null_task.shim.wait())
        await null_task.shim.start()
        assert (await waiter).exit_status == 4


@aio
async def test_binary_logger(make_env: Callable[..., Env]) -> None:
    async with make_env() as env:
        out = env.fifo_dir / "logger.out"
        script = env.fifo_dir / "logger.sh"
        script.write_text(
            "#!/bin/sh\n"
            f'echo "$CONTAINER_NAMESPACE/$CONTAINER_ID $1=$2" > {out}.env\n'
            "exec 5>&-\n"
            f"cat <&3 >> {out}\n"
        )
        os.chmod(script, 0o755)
        task = await env.task("t1", ["sh", "-c", "echo logged"])
        uri = f"binary://{script}?mode=test"
        await task.create(Stdio(stdout=uri, stderr=uri))
        waiter = asyncio.ensure_future(task.shim.wait())
        await task.shim.start()
        assert (await waiter).exit_status == 0
        await task.shim.delete()  # stops the logger once it has flushed
        assert out.read_text() == "logged\n"
        assert (env.fifo_dir / "logger.out.env").read_text() == f"{NAMESPACE}/t1 mode=test\n"
