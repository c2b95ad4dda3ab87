"""The template's rehearsal of a shim's life leaves nothing behind in the template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter: what the template would be left with, without this test process's
# own descriptors, threads and signal handlers in the way.
PROBE = r"""
import ctypes, json, os, signal, sys, threading
from ctrpy.shim import rehearsal, server

calls = []
def counted(name, handler):
    async def call(self, request, context):
        calls.append(name)
        return await handler(self, request, context)
    return call
for name in ("Connect", "Create", "Shutdown"):
    setattr(server.TaskServicer, name, counted(name, getattr(server.TaskServicer, name)))
forward = rehearsal._forwarded
async def forwarded(request, context):
    calls.append("Forward")
    return await forward(request, context)
rehearsal._forwarded = forwarded

fds = sorted(os.listdir("/proc/self/fd"))
rehearsal.rehearse(sys.argv[1], rounds=2)
subreaper = ctypes.c_int()
ctypes.CDLL(None).prctl(37, ctypes.byref(subreaper), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
print(json.dumps({
    "calls": calls,
    "fds_before": fds,
    "fds_after": sorted(os.listdir("/proc/self/fd")),
    "threads": threading.active_count(),
    "os_threads": len(os.listdir("/proc/self/task")),
    "subreaper": subreaper.value,
    "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
}))
"""


def test_rehearsal_leaves_nothing_behind(tmp_path: Path) -> None:
    socket_dir = tmp_path / "s"  # as the template's: <state root>/s
    socket_dir.mkdir()
    probe = subprocess.run(
        [sys.executable, "-P", "-c", PROBE, str(socket_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    out = probe.stdout
    result = json.loads(out.splitlines()[-1])
    # Each round: Connect, a Create that fails before any process starts, two events, Shutdown.
    assert result["calls"] == ["Connect", "Create", "Forward", "Forward", "Shutdown"] * 2
    assert result["fds_after"] == result["fds_before"]
    assert result["threads"] == 1 and result["os_threads"] == 1
    assert result["subreaper"] == 0  # the shims the template forks must not become its children
    assert result["sigchld_default"]
    assert list(socket_dir.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
