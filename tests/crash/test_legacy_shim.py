"""A shim of an older ctrpyd, which spoke gRPC, found at start-up: left running, not killed.

To ttrpc such a shim is one that hangs up, and an unreachable shim is cleaned up as dead
(``ctrpy-shim delete``: its container killed). Before that, ctrpyd asks the socket in HTTP/2
(manager/runtime/legacyshim.py); a gRPC server answers, and the task is left alone.
"""

from __future__ import annotations

import asyncio
import os
import socket
from concurrent import futures
from pathlib import Path

import grpc

from ctrpy import ttrpc
from ctrpy.manager.runtime.legacyshim import speaks_grpc
from tests.crash.support import IMAGE, CrashDaemon, alive


def _grpc_server(path: str) -> grpc.Server:
    """A gRPC server with no services on the unix socket ``path``: it answers HTTP/2."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    return server


def test_the_probe_tells_grpc_from_ttrpc_and_from_nothing(tmp_path: Path) -> None:
    grpc_path, ttrpc_path = str(tmp_path / "grpc.sock"), str(tmp_path / "ttrpc.sock")
    server = _grpc_server(grpc_path)

    async def main() -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(ttrpc_path)
        listener.listen(4)
        listener.setblocking(False)
        other = ttrpc.Server()
        await other.start(listener)
        try:
            assert await speaks_grpc(grpc_path)
            assert not await speaks_grpc(ttrpc_path, timeout=0.3)
            assert not await speaks_grpc(str(tmp_path / "nothing.sock"))
        finally:
            await other.shutdown()

    try:
        asyncio.run(main())
    finally:
        server.stop(None)


def test_a_grpc_shim_at_restart_is_left_running_and_reported(ready: CrashDaemon) -> None:
    """The task's socket answers gRPC (a stand-in: its real ttrpc socket moved aside): ctrpyd
    leaves the shim and its container running, names it in its log, manages the other task."""
    d = ready
    d.ok("run", "-d", IMAGE, "old", "sleep", "1000")
    d.ok("run", "-d", IMAGE, "fine", "sleep", "1000")
    pids = [d.shim_pid("old"), d.init_pid("old")]
    path = (d.bundle("old") / "address").read_text().strip().removeprefix("unix://")
    aside = path + ".aside"
    d.kill()
    os.rename(path, aside)
    server = _grpc_server(path)
    try:
        d.start()
        assert d.tasks() == {"fine": (d.init_pid("fine"), "RUNNING")}
        assert "shim of an older ctrpyd left running" in d.log()
        assert all(alive(pid) for pid in pids)
        assert d.bundle("old").exists()
    finally:
        server.stop(None)
        d.kill()
        os.replace(aside, path)
    # Its own socket back, the next ctrpyd takes the task back, and it is removed as usual.
    d.start()
    assert d.tasks()["old"] == (pids[1], "RUNNING")
    for name in ("old", "fine"):
        d.ok("tasks", "kill", "-s", "KILL", name)
        assert d.wait_exit(name) == 137
        d.ok("tasks", "rm", name)
        d.ok("containers", "rm", name)
    assert d.leftover_mounts() == []
