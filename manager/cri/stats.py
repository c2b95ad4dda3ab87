"""ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats.

A running container's CPU and memory come from its task's cgroup metrics, which the shim
already serves (Tasks.Metrics: ``io.containerd.cgroups.v1.Metrics``): CPU as cumulative core
nanoseconds, memory as usage and working set (usage minus inactive file pages, as the kubelet
and containerd compute it). The writable layer is the usage of the container's own snapshot.
A pod's CPU and memory are read from the pod's cgroup (its ``cgroup_parent``) when it has one,
else summed over its pause task and containers; its network counters come from
``/proc/net/dev`` read inside the pod's network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from ctrpy.api.cgroups.cgroup1.stats import metrics_pb2 as v1
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import CtrpyError, NotFound

from ..tasks.manager import TaskManager
from .container_store import RUNNING, ContainerRecord
from .containers import Containers
from .sandbox_store import SandboxRecord

log = structlog.get_logger(__name__)

V1_METRICS = "io.containerd.cgroups.v1.Metrics"
CGROUP_ROOT = "/sys/fs/cgroup"
NSENTER_TIMEOUT = 10.0
DEFAULT_INTERFACE = "eth0"


@dataclass(frozen=True)
class CpuMemory:
    """What a cgroup says: cumulative CPU nanoseconds and memory counters (bytes)."""

    cpu_ns: int
    usage: int
    working_set: int
    rss: int
    page_faults: int
    major_page_faults: int

    def __add__(self, other: CpuMemory) -> CpuMemory:
        return CpuMemory(self.cpu_ns + other.cpu_ns, self.usage + other.usage, self.working_set + other.working_set,
                         self.rss + other.rss, self.page_faults + other.page_faults,
                         self.major_page_faults + other.major_page_faults)


ZERO = CpuMemory(0, 0, 0, 0, 0, 0)


def _working_set(usage: int, inactive_file: int) -> int:
    return usage - inactive_file if usage > inactive_file else 0


def from_metrics(metrics: v1.Metrics) -> CpuMemory:
    memory = metrics.memory
    usage = memory.usage.usage
    return CpuMemory(metrics.cpu.usage.total, usage, _working_set(usage, memory.total_inactive_file),
                     memory.total_rss, memory.total_pg_fault, memory.total_pg_maj_fault)


def read_cgroup_v1(path: str, root: str = CGROUP_ROOT) -> CpuMemory:
    """The counters of cgroup ``path`` (cgroupfs, v1) read from its files."""
    relative = path.lstrip("/")

    def read(controller: str, name: str) -> str:
        with open(os.path.join(root, controller, relative, name), encoding="ascii") as f:
            return f.read()

    cpu = int(read("cpuacct", "cpuacct.usage").strip() or 0)
    usage = int(read("memory", "memory.usage_in_bytes").strip() or 0)
    stat: dict[str, int] = {}
    for line in read("memory", "memory.stat").splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            stat[key] = int(value)
    return CpuMemory(cpu, usage, _working_set(usage, stat.get("total_inactive_file", 0)), stat.get("total_rss", 0),
                     stat.get("total_pgfault", 0), stat.get("total_pgmajfault", 0))


def parse_net_dev(text: str) -> dict[str, tuple[int, int, int, int]]:
    """``/proc/net/dev``: interface -> (rx bytes, rx errors, tx bytes, tx errors)."""
    found = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) < 11:
            continue
        found[name.strip()] = (int(fields[0]), int(fields[2]), int(fields[8]), int(fields[10]))
    return found


async def net_dev(netns: str) -> dict[str, tuple[int, int, int, int]]:
    """The counters of the interfaces in network namespace ``netns`` (a pinned file)."""
    process = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={netns}", "cat", "/proc/net/dev",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(process.communicate(), NSENTER_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return {}
    return parse_net_dev(out.decode("ascii", "replace")) if process.returncode == 0 else {}


def _u64(value: int) -> api.UInt64Value:
    return api.UInt64Value(value=max(0, value))


def cpu_usage(counters: CpuMemory, now: int) -> api.CpuUsage:
    return api.CpuUsage(timestamp=now, usage_core_nano_seconds=_u64(counters.cpu_ns))


def memory_usage(counters: CpuMemory, now: int) -> api.MemoryUsage:
    return api.MemoryUsage(timestamp=now, working_set_bytes=_u64(counters.working_set),
                           usage_bytes=_u64(counters.usage), rss_bytes=_u64(counters.rss),
                           page_faults=_u64(counters.page_faults), major_page_faults=_u64(counters.major_page_faults))


class Stats:
    """The stats RPCs' data over :class:`.containers.Containers` and the task manager."""

    def __init__(self, containers: Containers, tasks: TaskManager, snapshot_root: str) -> None:
        self.containers = containers
        self.tasks = tasks
        self.snapshot_root = snapshot_root

    async def task_counters(self, container_id: str) -> CpuMemory | None:
        """The cgroup counters of a running task, or None (no task, a stopped one, v2)."""
        try:
            _, client = self.tasks.live(container_id)
            raw = await client.stats()
        except CtrpyError:
            return None
        if not raw.type_url.endswith(V1_METRICS):
            return None
        return from_metrics(v1.Metrics.FromString(raw.value))

    async def container(self, record: ContainerRecord) -> api.ContainerStats:
        config = self.containers.config_of(record)
        now = time.time_ns()
        stats = api.ContainerStats(attributes=api.ContainerAttributes(
            id=record.id, metadata=config.metadata, labels=dict(config.labels), annotations=dict(config.annotations)))
        if record.phase == RUNNING:
            counters = await self.task_counters(record.id)
            if counters is not None:
                stats.cpu.CopyFrom(cpu_usage(counters, now))
                stats.memory.CopyFrom(memory_usage(counters, now))
        with contextlib.suppress(CtrpyError):
            usage = await self.containers.snapshot_store(record).usage(record.id)
            stats.writable_layer.CopyFrom(api.FilesystemUsage(
                timestamp=now, fs_id=api.FilesystemIdentifier(mountpoint=self.snapshot_root),
                used_bytes=_u64(usage.size), inodes_used=_u64(usage.inodes)))
        return stats

    async def pod(self, sandbox: SandboxRecord, ready: bool, containers: Sequence[ContainerRecord]) -> api.PodSandboxStats:
        config = api.PodSandboxConfig.FromString(sandbox.config)
        now = time.time_ns()
        running = [r for r in containers if r.phase == RUNNING]
        container_stats = list(await asyncio.gather(*(self.container(r) for r in running)))
        linux = api.LinuxPodSandboxStats(containers=container_stats)
        counters: CpuMemory | None = None
        parent = config.linux.cgroup_parent
        if ready and parent:
            with contextlib.suppress(OSError, ValueError):
                counters = await asyncio.to_thread(read_cgroup_v1, parent)
        if counters is None and ready:
            found = await asyncio.gather(self.task_counters(sandbox.id), *(self.task_counters(r.id) for r in running))
            counters = ZERO
            for one in found:
                if one is not None:
                    counters = counters + one
        if counters is not None:
            linux.cpu.CopyFrom(cpu_usage(counters, now))
            linux.memory.CopyFrom(memory_usage(counters, now))
        if ready and sandbox.netns:
            interfaces = await net_dev(sandbox.netns)
            usage = [api.NetworkInterfaceUsage(name=name, rx_bytes=_u64(rx), rx_errors=_u64(rxe), tx_bytes=_u64(tx),
                                               tx_errors=_u64(txe))
                     for name, (rx, rxe, tx, txe) in sorted(interfaces.items()) if name != "lo"]
            network = api.NetworkUsage(timestamp=now, interfaces=usage)
            for interface in usage:
                if interface.name == DEFAULT_INTERFACE:
                    network.default_interface.CopyFrom(interface)
            linux.network.CopyFrom(network)
        return api.PodSandboxStats(
            attributes=api.PodSandboxAttributes(id=sandbox.id, metadata=config.metadata, labels=dict(config.labels),
                                                annotations=dict(config.annotations)),
            linux=linux)


def not_found(kind: str, wanted: str) -> NotFound:
    return NotFound(f'{kind} "{wanted}"')
