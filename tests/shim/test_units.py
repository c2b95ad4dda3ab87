"""The shim's pieces on their own: state table, files, config, metrics, reaper, bundles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctrpy.api.cgroups.cgroup1.stats import metrics_pb2 as v1
from ctrpy.api.cgroups.cgroup2.stats import metrics_pb2 as v2
from ctrpy.errors import AlreadyExists, CtrpyError, FailedPrecondition, InvalidArgument, NotFound
from ctrpy.manager.runtime import Bundle, bundles
from ctrpy.manager.runtime.launcher import error_from_message
from ctrpy.mount import Mount, mounted
from ctrpy.shim import files
from ctrpy.shim.config import MAX_SOCKET_PATH, ShimConfig
from ctrpy.shim.metrics import to_metrics
from ctrpy.shim.process import clamp_oom_score_adj, has_own_pid_namespace
from ctrpy.shim.states import State, check, transition
from ctrpy.ttrpc import socket_path


def test_state_table() -> None:
    assert transition(State.CREATED, "start") is State.RUNNING
    assert transition(State.RUNNING, "pause") is State.PAUSED
    assert transition(State.PAUSED, "resume") is State.RUNNING
    assert transition(State.PAUSED, "exit") is State.STOPPED
    assert transition(State.STOPPED, "delete") is State.DELETED
    assert transition(State.CREATED, "delete") is State.DELETED
    with pytest.raises(FailedPrecondition, match="cannot start a running process"):
        transition(State.RUNNING, "start")
    with pytest.raises(FailedPrecondition, match="cannot delete a running process"):
        transition(State.RUNNING, "delete")
    with pytest.raises(FailedPrecondition):
        transition(State.STOPPED, "exit")
    check(State.STOPPED, "kill")
    with pytest.raises(FailedPrecondition):
        check(State.PAUSED, "exec")


def test_exit_file_round_trip(tmp_path: Path) -> None:
    assert files.read_exit(tmp_path) is None
    info = files.ExitInfo(42, 137, 1_700_000_000_123_456_789)
    files.write_exit(tmp_path, info)
    assert files.read_exit(tmp_path) == info
    assert [p.name for p in tmp_path.iterdir()] == ["exit"]  # no temporary file left
    (tmp_path / "exit").write_text("{garbage")
    assert files.read_exit(tmp_path) is None


def test_config_paths_and_validation(tmp_path: Path) -> None:
    config = ShimConfig("ns", "c1", str(tmp_path / "b"), "", str(tmp_path))
    assert config.runtime_root == str(tmp_path / "runc" / "ns")
    assert config.socket_path.startswith(str(tmp_path / "s") + "/")
    assert config.socket_address == f"unix://{config.socket_path}"
    assert ShimConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InvalidArgument):
        ShimConfig("ns", "../x", str(tmp_path / "b"), "", str(tmp_path))
    with pytest.raises(InvalidArgument, match=str(MAX_SOCKET_PATH)):
        ShimConfig("ns", "c1", "/b", "", "/" + "x" * 100)
    with pytest.raises(InvalidArgument):
        ShimConfig.from_dict({"namespace": "ns"})


def test_events_address_forms() -> None:
    # ctrpyd's ttrpc socket reaches the shim as a path or a unix:// address (containerd's form).
    for address in ("/run/x/ctrpy.sock.ttrpc", "unix:///run/x/ctrpy.sock.ttrpc", "unix:/run/x/ctrpy.sock.ttrpc"):
        assert socket_path(address) == "/run/x/ctrpy.sock.ttrpc"


def test_oom_score_adj_clamp_and_pid_namespace() -> None:
    process: dict[str, object] = {"oomScoreAdj": -999}
    assert clamp_oom_score_adj(process) and process["oomScoreAdj"] == 0
    assert not clamp_oom_score_adj({"oomScoreAdj": 5})
    assert has_own_pid_namespace({"linux": {"namespaces": [{"type": "pid"}]}})
    assert not has_own_pid_namespace({"linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}})
    assert not has_own_pid_namespace({})


RUNC_STATS = {
    "cpu": {
        "usage": {"total": 5000, "percpu": [3000, 2000], "kernel": 1000, "user": 4000},
        "throttling": {"periods": 3, "throttled_periods": 1, "throttled_time": 7000},
    },
    "memory": {
        "usage": {"limit": 8388608, "usage": 4096, "max": 8192, "failcnt": 2},
        "swap": {"limit": 8388608, "usage": 4096},
        "raw": {"cache": 11, "rss": 22, "pgfault": 33, "total_pgmajfault": 44, "anon": 55, "file": 66},
    },
    "pids": {"current": 3, "limit": 50},
    "blkio": {"ioServiceBytesRecursive": [{"major": 8, "minor": 0, "op": "Read", "value": 512}]},
    "hugetlb": {"2MB": {"usage": 1, "max": 2, "failcnt": 3}},
}


def test_metrics_v1_and_v2() -> None:
    packed = to_metrics(RUNC_STATS, unified=False)
    assert packed.type_url == "io.containerd.cgroups.v1.Metrics"
    m1 = v1.Metrics.FromString(packed.value)
    assert (m1.pids.current, m1.pids.limit) == (3, 50)
    assert (m1.cpu.usage.total, list(m1.cpu.usage.per_cpu), m1.cpu.throttling.throttled_time) == (
        5000,
        [3000, 2000],
        7000,
    )
    assert (m1.memory.usage.usage, m1.memory.usage.limit, m1.memory.usage.failcnt) == (4096, 8388608, 2)
    assert (m1.memory.cache, m1.memory.rss, m1.memory.pg_fault, m1.memory.total_pg_maj_fault) == (
        11,
        22,
        33,
        44,
    )
    assert (m1.blkio.io_service_bytes_recursive[0].op, m1.blkio.io_service_bytes_recursive[0].value) == (
        "Read",
        512,
    )
    assert (m1.hugetlb[0].pagesize, m1.hugetlb[0].failcnt) == ("2MB", 3)
    packed = to_metrics(RUNC_STATS, unified=True)
    assert packed.type_url == "io.containerd.cgroups.v2.Metrics"
    m2 = v2.Metrics.FromString(packed.value)
    assert (m2.cpu.usage_usec, m2.cpu.user_usec, m2.cpu.system_usec) == (5, 4, 1)
    assert (m2.memory.usage, m2.memory.usage_limit, m2.memory.anon, m2.memory.file) == (4096, 8388608, 55, 66)


def test_bundle_create_list_and_remove(tmp_path: Path) -> None:
    bundle = Bundle.create(tmp_path, "ns", "c1", b'{"ociVersion": "1.0.2"}')
    assert (bundle.path / "config.json").read_bytes() == b'{"ociVersion": "1.0.2"}'
    assert (bundle.path / "rootfs").is_dir()
    assert bundle.address() is None and bundle.exit() is None
    with pytest.raises(AlreadyExists):
        Bundle.create(tmp_path, "ns", "c1", b"{}")
    with pytest.raises(InvalidArgument):
        Bundle.create(tmp_path, "ns", "a/b", b"{}")
    with pytest.raises(InvalidArgument):
        Bundle.create(tmp_path, "ns", "c2", b"[not json")
    (tmp_path / "tasks" / "ns" / "bad..name").mkdir()
    assert [b.id for b in bundles(tmp_path)] == ["c1"]
    source = tmp_path / "src"
    source.mkdir()
    bind = [Mount("bind", str(source), options=("rbind", "rw"))]
    with mounted(bind, bundle.path / "rootfs"), pytest.raises(FailedPrecondition):
        bundle.remove()
    bundle.remove()
    assert not bundle.exists()
    with pytest.raises(NotFound):
        bundle.remove()


def test_error_kinds_from_messages() -> None:
    assert isinstance(error_from_message('shim socket "x" is in use: already exists'), AlreadyExists)
    assert type(error_from_message("something broke")) is CtrpyError


REAPER_SCRIPT = """
import asyncio, json, os
from ctrpy.shim.reaper import Reaper

async def main():
    orphans = []
    reaper = Reaper(on_exit=lambda pid, status: orphans.append(status))
    reaper.install(asyncio.get_running_loop())
    out = {}
    with reaper.collect() as window:
        child = reaper.spawn(["sh", "-c", "sleep 0.2 & echo $!; exit 3"], fds={1: w})
        out["child"] = await child.wait()
        orphan_pid = int(os.read(r, 100))
    killed = reaper.spawn(["sleep", "100"])
    killed.kill(9)
    out["killed"] = await killed.wait()
    for _ in range(500):
        if orphans:
            break
        await asyncio.sleep(0.01)
    out["orphans"] = orphans
    out["window"] = window.get(orphan_pid)
    try:
        reaper.spawn(["/no/such/program"])
    except FileNotFoundError:
        out["missing"] = "FileNotFoundError"
    print(json.dumps(out))

r, w = os.pipe()
asyncio.run(main())
"""


def test_one_reaper_gets_children_and_orphans() -> None:
    """Run in a child process: becoming a subreaper must not change the test process."""
    result = subprocess.run([sys.executable, "-c", REAPER_SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    # The orphaned `sleep` exits 0 after its parent: the subreaper reaps it through on_exit.
    # (The window closed when the `with` block ended, before the orphan exited.)
    assert out == {"child": 3, "killed": 137, "orphans": [0], "window": None, "missing": "FileNotFoundError"}
