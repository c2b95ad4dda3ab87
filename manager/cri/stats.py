"""ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats.

A running container's CPU and memory are read by ctrpyd from the container's cgroup (cgroupfs
v1, the path ctrpy's specs give it: ``<cgroup_parent>/<id>``), all containers of one call in one
worker thread: CPU as cumulative core nanoseconds, memory as usage and working set (usage minus
inactive file pages, as the kubelet and containerd compute it). Asking each shim instead
(Tasks.Metrics, which runs ``runc events --stats``) costs a runc process per container per
call, and put ListContainerStats of 80 containers at a quarter of a second of both cores; that
remains the way on a host without the v1 hierarchies. The writable layer is the usage of the
container's own snapshot, sampled (:mod:`.layerusage`). A pod's CPU and memory are read from
the pod's cgroup (its ``cgroup_parent``) when it has one, else summed over its pause task and
containers; its network counters come from ``/proc/<pause pid>/net/dev`` (the pod's network
namespace, checked to be the pinned one), else from ``/proc/net/dev`` read through nsenter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from ctrpy.api.cgroups.cgroup1.stats import metrics_pb2 as v1
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import CtrpyError, NotFound
from ctrpy.snapshotter.types import Usage

from ..tasks.manager import TaskManager
from .container_store import RUNNING, ContainerRecord
from .containers import Containers
from .layerusage import LayerSampler
from .sandbox_store import SandboxRecord
from .sandboxes import NAMESPACE

log = structlog.get_logger(__name__)

V1_METRICS = "io.containerd.cgroups.v1.Metrics"
#: The thread that reads cgroup files for the stats calls (see :meth:`Stats._read`).
_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cri-stats")
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


def cgroup_v1_here(root: str = CGROUP_ROOT) -> bool:
    """Whether the v1 cpuacct and memory hierarchies are mounted where :func:`read_cgroup_v1`
    reads them."""
    return all(os.path.isfile(os.path.join(root, c, f)) for c, f in (("cpuacct", "cpuacct.usage"),
                                                                   ("memory", "memory.usage_in_bytes")))


def read_cgroups_v1(paths: Mapping[str, str], root: str = CGROUP_ROOT) -> dict[str, CpuMemory | None]:
    """:func:`read_cgroup_v1` of each path (by key), None for a cgroup that is gone."""
    found: dict[str, CpuMemory | None] = {}
    for key, path in paths.items():
        try:
            found[key] = read_cgroup_v1(path, root)
        except (OSError, ValueError):
            found[key] = None
    return found


def container_cgroup(parent: str, container_id: str) -> str:
    """The cgroup path ctrpy's specs give a CRI container (containerspec's ``cgroupsPath``)."""
    if not parent:
        return f"/{NAMESPACE}/{container_id}"
    return os.path.join(parent if parent.startswith("/") else "/" + parent, container_id)


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


def _net_dev_of(pid: int, netns: str) -> str | None:
    """``/proc/<pid>/net/dev`` when ``pid`` is (still) in network namespace ``netns``, else None."""
    try:
        if pid <= 0 or os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat(netns).st_ino:
            return None
        with open(f"/proc/{pid}/net/dev", encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


async def net_dev(netns: str, pid: int = 0) -> dict[str, tuple[int, int, int, int]]:
    """The counters of the interfaces in network namespace ``netns`` (a pinned file): through
    ``pid``'s /proc when it is in that namespace, else by running cat in it."""
    text = await asyncio.to_thread(_net_dev_of, pid, netns) if pid else None
    if text is not None:
        return parse_net_dev(text)
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

    def __init__(self, containers: Containers, tasks: TaskManager, snapshot_root: str,
                 layer_period: float = 0.0) -> None:
        self.containers = containers
        self.tasks = tasks
        self.snapshot_root = snapshot_root
        self.layers = LayerSampler(layer_period)
        self.direct = cgroup_v1_here()

    def _cgroup(self, record: ContainerRecord) -> str | None:
        sandbox = self.containers.sandboxes.store.find(record.sandbox_id)
        if sandbox is None:
            return None
        return container_cgroup(api.PodSandboxConfig.FromString(sandbox.config).linux.cgroup_parent, record.id)

    async def counters(self, records: Sequence[ContainerRecord]) -> dict[str, CpuMemory | None]:
        """The cgroup counters of running containers by id (None: not running, or unreadable),
        read directly (see the module docstring), else from each task's shim."""
        running = [r for r in records if r.phase == RUNNING]
        if not running:
            return {}
        if self.direct:
            paths = {r.id: path for r in running if (path := self._cgroup(r)) is not None}
            return await self._read(paths)
        found = await asyncio.gather(*(self.task_counters(r.id) for r in running))
        return {r.id: one for r, one in zip(running, found, strict=True)}

    async def _read(self, paths: Mapping[str, str]) -> dict[str, CpuMemory | None]:
        """:func:`read_cgroups_v1` on the stats thread: cgroupfs never waits on a disk, so the
        reads need not queue in the default pool behind a pod start storm's fsyncs."""
        return await asyncio.get_running_loop().run_in_executor(_READER, read_cgroups_v1, paths)

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
        return (await self.many([record]))[0]

    async def many(self, records: Sequence[ContainerRecord]) -> list[api.ContainerStats]:
        """The stats of ``records``, in order: one read of all their cgroups, the layers' samples."""
        counters = await self.counters(records)
        layers = await asyncio.gather(*(self._layer(r) for r in records))
        now = time.time_ns()
        out = []
        for record, layer in zip(records, layers, strict=True):
            config = self.containers.config_of(record)
            stats = api.ContainerStats(attributes=api.ContainerAttributes(
                id=record.id, metadata=config.metadata, labels=dict(config.labels),
                annotations=dict(config.annotations)))
            found = counters.get(record.id)
            if found is not None:
                stats.cpu.CopyFrom(cpu_usage(found, now))
                stats.memory.CopyFrom(memory_usage(found, now))
            if layer is not None:
                stats.writable_layer.CopyFrom(api.FilesystemUsage(
                    timestamp=now, fs_id=api.FilesystemIdentifier(mountpoint=self.snapshot_root),
                    used_bytes=_u64(layer.size), inodes_used=_u64(layer.inodes)))
            out.append(stats)
        return out

    async def _layer(self, record: ContainerRecord) -> Usage | None:
        try:
            store = self.containers.snapshot_store(record)
        except CtrpyError:
            return None
        return await self.layers.usage(record.id, functools.partial(store.usage, record.id))

    async def pod(self, sandbox: SandboxRecord, ready: bool, containers: Sequence[ContainerRecord]) -> api.PodSandboxStats:
        config = api.PodSandboxConfig.FromString(sandbox.config)
        now = time.time_ns()
        running = [r for r in containers if r.phase == RUNNING]
        container_stats = await self.many(running)
        linux = api.LinuxPodSandboxStats(containers=container_stats)
        counters: CpuMemory | None = None
        parent = config.linux.cgroup_parent
        if ready and parent:
            counters = (await self._read({"pod": parent}))["pod"]
        if counters is None and ready:
            if self.direct:
                paths = {i: container_cgroup(parent, i) for i in (sandbox.id, *(r.id for r in running))}
                found = list((await self._read(paths)).values())
            else:
                found = [await self.task_counters(sandbox.id), *(await self.counters(running)).values()]
            counters = ZERO
            for one in found:
                if one is not None:
                    counters = counters + one
        if counters is not None:
            linux.cpu.CopyFrom(cpu_usage(counters, now))
            linux.memory.CopyFrom(memory_usage(counters, now))
        if ready and sandbox.netns:
            interfaces = await net_dev(sandbox.netns, sandbox.pid)
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
