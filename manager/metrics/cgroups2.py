"""Per-container metrics read from cgroup v2 (unified) files, with containerd's v2 names.

containerd 1.6 on a unified host serves another set of series than on v1
(``metrics/cgroups/v2``): a metric name there is ``container_`` + its name + its unit, so
``container_cpu_usage_usec_microseconds``, ``container_memory_usage_bytes``,
``container_memory_usage_limit_bytes``, ``container_pids_current``, ``container_io_rbytes_bytes
{major,minor}``, ``container_memory_oom_total``; every series labelled ``container_id``,
``namespace`` and ``runtime``. The values are what containerd's cgroups library reads from the
same files: ``cpu.stat``, ``memory.stat``, ``memory.current``/``max``,
``memory.swap.current``/``max``, ``memory.events``, ``pids.current``/``max``, ``io.stat``; a
limit of ``max`` is 2^64-1, as there; a file the kernel lacks counts as zero (``memory.events``
and ``io.stat`` give no series then).

This is the counterpart of :mod:`.cgroups`, which picks it when ``/sys/fs/cgroup`` is a
cgroup2 mount; :func:`read` returns the same kind of samples.
"""

from __future__ import annotations

import os

from .cgroups import COUNTER, Metric, Samples, read_file

#: What containerd's cgroups library reports for "max".
UNLIMITED = 2**64 - 1

_IO_LABELS = ("major", "minor")
# cpu.stat keys -> (containerd's metric name, help)
_CPU = {
    "usage_usec": ("container_cpu_usage_usec_microseconds", "Total cpu usage (cgroup v2)"),
    "user_usec": ("container_cpu_user_usec_microseconds", "Current cpu usage in user space (cgroup v2)"),
    "system_usec": ("container_cpu_system_usec_microseconds", "Current cpu usage in kernel space (cgroup v2)"),
    "nr_periods": ("container_cpu_nr_periods_total", "Current cpu number of periods (only if controller is enabled)"),
    "nr_throttled": ("container_cpu_nr_throttled_total",
                     "Total number of times tasks have been throttled (only if controller is enabled)"),
    "throttled_usec": ("container_cpu_throttled_usec_microseconds",
                       "Total time duration for which tasks have been throttled. (only if controller is enabled)"),
}  # fmt: skip
# single-value memory files -> (containerd's metric name, help)
_MEMORY_FILES = {
    "memory.current": ("container_memory_usage_bytes", "Current memory usage (cgroup v2)"),
    "memory.max": ("container_memory_usage_limit_bytes", "Current memory usage limit (cgroup v2)"),
    "memory.swap.current": ("container_memory_swap_usage_bytes", "Current swap usage (cgroup v2)"),
    "memory.swap.max": ("container_memory_swap_limit_bytes", "Current swap usage limit (cgroup v2)"),
}
# memory.stat keys containerd reports, in its order; each is container_memory_<key>_bytes.
_MEMORY_STAT = (
    "file_mapped", "file_dirty", "file_writeback", "pgactivate", "pgdeactivate", "pgfault", "pgmajfault",
    "pglazyfree", "pgrefill", "pglazyfreed", "pgscan", "pgsteal", "inactive_anon", "active_anon",
    "inactive_file", "active_file", "unevictable", "anon", "file", "kernel_stack", "slab", "sock", "shmem",
    "anon_thp", "slab_reclaimable", "slab_unreclaimable", "workingset_refault", "workingset_activate",
    "workingset_nodereclaim", "thp_fault_alloc", "thp_collapse_alloc",
)  # fmt: skip
# io.stat keys -> (containerd's metric name, help)
_IO = {
    "rbytes": ("container_io_rbytes_bytes", "IO bytes read"),
    "wbytes": ("container_io_wbytes_bytes", "IO bytes written"),
    "rios": ("container_io_rios_total", "Number of read IOs"),
    "wios": ("container_io_wios_total", "Number of write IOs"),
}
OOM = "container_memory_oom_total"


def _metrics() -> dict[str, Metric]:
    table = {
        "container_pids_limit": Metric("The limit to the number of pids allowed (cgroup v2)"),
        "container_pids_current": Metric("The current number of pids (cgroup v2)"),
    }
    table.update({name: Metric(text) for name, text in _CPU.values()})
    table.update({name: Metric(text) for name, text in _MEMORY_FILES.values()})
    table.update({f"container_memory_{key}_bytes": Metric(f"The {key} amount") for key in _MEMORY_STAT})
    # Unlike v1's OOM collector, v2's memory metrics carry the runtime label too.
    table[OOM] = Metric("The number of times a container has received an oom event", type=COUNTER)
    table.update({name: Metric(text, _IO_LABELS) for name, text in _IO.values()})
    return table


#: Every per-container metric on a cgroup v2 host: name -> what it is.
METRICS = _metrics()


def _maybe(directory: str, name: str) -> str | None:
    """A file's text, None when this cgroup (or kernel) has no such file."""
    try:
        return read_file(directory, name)
    except FileNotFoundError:
        return None


def _number(text: str | None) -> int:
    """A single-value file: ``max`` is unlimited, anything unreadable or negative zero."""
    value = (text or "").strip()
    if value == "max":
        return UNLIMITED
    try:
        return max(int(value), 0)
    except ValueError:
        return 0


def _pairs(text: str | None) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) == 2:
            found[fields[0]] = _number(fields[1])
    return found


def _io(text: str | None) -> dict[str, list[tuple[tuple[str, ...], float]]]:
    """io.stat: ``MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`` per device."""
    found: dict[str, list[tuple[tuple[str, ...], float]]] = {name: [] for name, _ in _IO.values()}
    for line in (text or "").splitlines():
        fields = line.split()
        major, _, minor = fields[0].partition(":") if fields else ("", "", "")
        if not (major.isdigit() and minor.isdigit()):
            continue
        values = dict(field.partition("=")[::2] for field in fields[1:])
        for key, (name, _) in _IO.items():
            value = values.get(key, "")
            found[name].append(((str(int(major)), str(int(minor))), float(int(value) if value.isdigit() else 0)))
    return found


def read(directory: str) -> Samples:
    """The samples of the cgroup at ``directory`` (a full path under the cgroup2 mount).
    Raises OSError when the cgroup is gone (the task stopped); a file a kernel or controller
    lacks counts as zero or is left out, as in containerd's cgroups library."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(directory)
    samples: Samples = {}
    samples["container_pids_limit"] = [((), float(_number(_maybe(directory, "pids.max"))))]
    samples["container_pids_current"] = [((), float(_number(_maybe(directory, "pids.current"))))]
    cpu = _pairs(_maybe(directory, "cpu.stat"))
    for key, (name, _) in _CPU.items():
        samples[name] = [((), float(cpu.get(key, 0)))]
    for file, (name, _) in _MEMORY_FILES.items():
        samples[name] = [((), float(_number(_maybe(directory, file))))]
    memory = _pairs(_maybe(directory, "memory.stat"))
    for key in _MEMORY_STAT:
        samples[f"container_memory_{key}_bytes"] = [((), float(memory.get(key, 0)))]
    events = _maybe(directory, "memory.events")
    if events:
        samples[OOM] = [((), float(_pairs(events).get("oom", 0)))]
    for name, values in _io(_maybe(directory, "io.stat")).items():
        if values:
            samples[name] = values
    return samples
