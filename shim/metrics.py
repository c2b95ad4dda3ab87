"""runc's stats (``runc events --stats``) as containerd's cgroups metrics messages.

runc reports libcontainer's stats as JSON, the same shape on both cgroup versions: ``cpu``,
``memory`` (``usage``/``swap``/``kernel`` entries and the ``raw`` keys of memory.stat), ``pids``,
``blkio``, ``hugetlb``. containerd's clients expect ``io.containerd.cgroups.v1.Metrics`` on a
cgroup v1 (or hybrid) host and ``io.containerd.cgroups.v2.Metrics`` on a unified host;
:func:`to_metrics` builds the one that fits the host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from google.protobuf import any_pb2

from ctrpy.api.cgroups.cgroup1.stats import metrics_pb2 as v1
from ctrpy.api.cgroups.cgroup2.stats import metrics_pb2 as v2

UNIFIED_MARKER = "/sys/fs/cgroup/cgroup.controllers"

# memory.stat key (v1) -> field of io.containerd.cgroups.v1.MemoryStat, where they differ.
_V1_RENAMES = {
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
    "total_pgpgin": "total_pg_pg_in",
    "total_pgpgout": "total_pg_pg_out",
    "total_pgfault": "total_pg_fault",
    "total_pgmajfault": "total_pg_maj_fault",
}

_BLKIO_FIELDS = {
    "ioServiceBytesRecursive": "io_service_bytes_recursive",
    "ioServicedRecursive": "io_serviced_recursive",
    "ioQueueRecursive": "io_queued_recursive",
    "ioServiceTimeRecursive": "io_service_time_recursive",
    "ioWaitTimeRecursive": "io_wait_time_recursive",
    "ioMergedRecursive": "io_merged_recursive",
    "ioTimeRecursive": "io_time_recursive",
    "sectorsRecursive": "sectors_recursive",
}


def host_is_unified() -> bool:
    """Whether this host runs cgroup v2 only (not v1, not hybrid)."""
    return os.path.exists(UNIFIED_MARKER)


def _obj(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _u(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    return int(value) if isinstance(value, (int, float)) and value > 0 else 0


def _entry(data: Mapping[str, Any]) -> v1.MemoryEntry:
    return v1.MemoryEntry(
        limit=_u(data, "limit"), usage=_u(data, "usage"), max=_u(data, "max"), failcnt=_u(data, "failcnt")
    )


def to_v1(stats: Mapping[str, Any]) -> v1.Metrics:
    """io.containerd.cgroups.v1.Metrics from runc's stats data."""
    cpu = _obj(stats, "cpu")
    usage = _obj(cpu, "usage")
    throttling = _obj(cpu, "throttling")
    memory = _obj(stats, "memory")
    raw = _obj(memory, "raw")
    pids = _obj(stats, "pids")
    metrics = v1.Metrics(
        pids=v1.PidsStat(current=_u(pids, "current"), limit=_u(pids, "limit")),
        cpu=v1.CPUStat(
            usage=v1.CPUUsage(
                total=_u(usage, "total"),
                kernel=_u(usage, "kernel"),
                user=_u(usage, "user"),
                per_cpu=[int(x) for x in usage.get("percpu") or []],
            ),
            throttling=v1.Throttle(
                periods=_u(throttling, "periods"),
                throttled_periods=_u(throttling, "throttled_periods"),
                throttled_time=_u(throttling, "throttled_time"),
            ),
        ),
    )
    mem = metrics.memory
    fields = set(v1.MemoryStat.DESCRIPTOR.fields_by_name)
    for key in raw:
        name = _V1_RENAMES.get(key, key)
        if name in fields and name not in ("usage", "swap", "kernel", "kernel_tcp"):
            setattr(mem, name, _u(raw, key))
    mem.usage.CopyFrom(_entry(_obj(memory, "usage")))
    mem.swap.CopyFrom(_entry(_obj(memory, "swap")))
    mem.kernel.CopyFrom(_entry(_obj(memory, "kernel")))
    mem.kernel_tcp.CopyFrom(_entry(_obj(memory, "kernelTCP")))
    blkio = _obj(stats, "blkio")
    for key, field in _BLKIO_FIELDS.items():
        target = getattr(metrics.blkio, field)
        for entry in blkio.get(key) or []:
            if isinstance(entry, Mapping):
                target.add(
                    op=str(entry.get("op", "")),
                    major=_u(entry, "major"),
                    minor=_u(entry, "minor"),
                    value=_u(entry, "value"),
                )
    for pagesize, entry in sorted(_obj(stats, "hugetlb").items()):
        if isinstance(entry, Mapping):
            metrics.hugetlb.add(
                pagesize=pagesize,
                usage=_u(entry, "usage"),
                max=_u(entry, "max"),
                failcnt=_u(entry, "failcnt"),
            )
    return metrics


def to_v2(stats: Mapping[str, Any]) -> v2.Metrics:
    """io.containerd.cgroups.v2.Metrics from runc's stats data (runc reports ns; v2 wants µs)."""
    cpu = _obj(stats, "cpu")
    usage = _obj(cpu, "usage")
    throttling = _obj(cpu, "throttling")
    memory = _obj(stats, "memory")
    raw = _obj(memory, "raw")
    pids = _obj(stats, "pids")
    metrics = v2.Metrics(
        pids=v2.PidsStat(current=_u(pids, "current"), limit=_u(pids, "limit")),
        cpu=v2.CPUStat(
            usage_usec=_u(usage, "total") // 1000,
            user_usec=_u(usage, "user") // 1000,
            system_usec=_u(usage, "kernel") // 1000,
            nr_periods=_u(throttling, "periods"),
            nr_throttled=_u(throttling, "throttled_periods"),
            throttled_usec=_u(throttling, "throttled_time") // 1000,
        ),
    )
    mem = metrics.memory
    fields = set(v2.MemoryStat.DESCRIPTOR.fields_by_name)
    for key in raw:
        if key in fields and key != "psi":
            setattr(mem, key, _u(raw, key))
    mem_usage = _obj(memory, "usage")
    swap = _obj(memory, "swap")
    mem.usage = _u(mem_usage, "usage")
    mem.usage_limit = _u(mem_usage, "limit")
    mem.max_usage = _u(mem_usage, "max")
    mem.swap_usage = _u(swap, "usage")
    mem.swap_limit = _u(swap, "limit")
    mem.swap_max_usage = _u(swap, "max")
    for pagesize, entry in sorted(_obj(stats, "hugetlb").items()):
        if isinstance(entry, Mapping):
            metrics.hugetlb.add(pagesize=pagesize, current=_u(entry, "usage"), max=_u(entry, "max"))
    return metrics


def to_metrics(stats: Mapping[str, Any], *, unified: bool | None = None) -> any_pb2.Any:
    """The metrics Any for this host (v1 unless the host is cgroup v2 only)."""
    message = to_v2(stats) if (host_is_unified() if unified is None else unified) else to_v1(stats)
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())
