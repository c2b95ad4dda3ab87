"""Per-container metrics read from cgroup v1 files, with containerd's names, help and labels.

containerd 1.6 asks each shim for its task's cgroup stats at scrape time and names them in
``metrics/cgroups/v1`` (``container_cpu_total_nanoseconds``, ``container_memory_usage_usage_bytes``,
``container_pids_current``, ``container_blkio_io_service_bytes_recursive_bytes{op,device,major,
minor}``, ...; every series labelled ``container_id``, ``namespace`` and, for tasks it created,
``runtime``). ctrpyd reads the same files itself, in one pass on one worker thread per scrape:
asking 500 shims (each running ``runc events --stats``) would cost a process per container, and
the point of the scrape is not to load the machine it watches. Nothing here runs unless a scrape
asks.

:func:`read` returns plain samples: metric name -> [(extra label values, value)]; the table
:data:`METRICS` says each metric's help, extra label names and type. The memory.stat values are
reported under containerd's names (``container_memory_pgfault_bytes`` and all: containerd gives
them the bytes unit). A cgroup that is gone (the task stopped) yields nothing.

On a unified host (``/sys/fs/cgroup`` is cgroup2) :func:`read` hands over to :mod:`.cgroups2`,
which serves containerd's v2 series instead (:attr:`Hierarchies.metrics` says which table).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

GAUGE, COUNTER = "gauge", "counter"
#: Where a unified (cgroup v2 only) host mounts its one hierarchy.
UNIFIED_MOUNT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class Metric:
    help: str
    labels: tuple[str, ...] = ()
    type: str = GAUGE
    #: Only container_id and namespace, no runtime: containerd's OOM collector has no const labels.
    runtime_label: bool = True


_BLKIO_LABELS = ("op", "device", "major", "minor")
# memory.stat keys containerd reports; those whose help says "amount used".
_MEMORY_STAT = (
    "cache", "rss", "rss_huge", "mapped_file", "dirty", "writeback", "pgpgin", "pgpgout", "pgfault",
    "pgmajfault", "inactive_anon", "active_anon", "inactive_file", "active_file", "unevictable",
    "hierarchical_memory_limit", "hierarchical_memsw_limit",
    "total_cache", "total_rss", "total_rss_huge", "total_mapped_file", "total_dirty", "total_writeback",
    "total_pgpgin", "total_pgpgout", "total_pgfault", "total_pgmajfault", "total_inactive_anon",
    "total_active_anon", "total_inactive_file", "total_active_file", "total_unevictable",
)  # fmt: skip
_USED = {"cache", "rss", "rss_huge", "mapped_file", "total_cache", "total_rss", "total_rss_huge", "total_mapped_file"}
# containerd's memory entries: its name -> (file infix, word in its help)
_MEMORY_ENTRIES = {"usage": ("", "memory"), "swap": ("memsw.", "swap"), "kernel": ("kmem.", "kernel"),
                   "kerneltcp": ("kmem.tcp.", "kerneltcp")}
# CFQ's recursive blkio files (containerd's entry name -> file) and the throttle files read
# when those are absent or empty (blk-mq kernels), as containerd's cgroups library does.
_BLKIO_CFQ = {
    "io_merged_recursive": "blkio.io_merged_recursive", "io_queued_recursive": "blkio.io_queued_recursive",
    "io_service_bytes_recursive": "blkio.io_service_bytes_recursive",
    "io_service_time_recursive": "blkio.io_service_time_recursive",
    "io_serviced_recursive": "blkio.io_serviced_recursive", "io_time_recursive": "blkio.time_recursive",
    "sectors_recursive": "blkio.sectors_recursive",
}  # fmt: skip
_BLKIO_THROTTLE = {"io_service_bytes_recursive": "blkio.throttle.io_service_bytes",
                   "io_serviced_recursive": "blkio.throttle.io_serviced"}


def _metrics() -> dict[str, Metric]:
    table = {
        "container_cpu_total_nanoseconds": Metric("The total cpu time"),
        "container_cpu_kernel_nanoseconds": Metric("The total kernel cpu time"),
        "container_cpu_user_nanoseconds": Metric("The total user cpu time"),
        "container_per_cpu_nanoseconds": Metric("The total cpu time per cpu", ("cpu",)),
        "container_cpu_throttle_periods_total": Metric("The total cpu throttle periods"),
        "container_cpu_throttled_periods_total": Metric("The total cpu throttled periods"),
        "container_cpu_throttled_time_nanoseconds": Metric("The total cpu throttled time"),
        "container_pids_limit": Metric("The limit to the number of pids allowed"),
        "container_pids_current": Metric("The current number of pids"),
        "container_memory_oom_total": Metric("The number of times a container has received an oom event",
                                             type=COUNTER, runtime_label=False),
    }
    for key in _MEMORY_STAT:
        table[f"container_memory_{key}_bytes"] = Metric(f"The {key} amount" + (" used" if key in _USED else ""))
    for entry, (_, word) in _MEMORY_ENTRIES.items():
        table[f"container_memory_{entry}_failcnt_total"] = Metric(f"The {entry} failcnt")
        table[f"container_memory_{entry}_limit_bytes"] = Metric(f"The {word} limit")
        table[f"container_memory_{entry}_max_bytes"] = Metric(f"The {word} maximum usage")
        table[f"container_memory_{entry}_usage_bytes"] = Metric(f"The {word} usage")
    for entry in _BLKIO_CFQ:
        unit = "bytes" if entry == "io_service_bytes_recursive" else "total"
        words = entry.replace("_", " ")
        table[f"container_blkio_{entry}_{unit}"] = Metric(f"The blkio {words}", _BLKIO_LABELS)
    return table


#: Every per-container metric: name -> what it is.
METRICS = _metrics()
Samples = dict[str, list[tuple[tuple[str, ...], float]]]


@dataclass(frozen=True)
class Hierarchies:
    """Where the v1 controllers this module reads are mounted (None: not mounted)."""

    cpuacct: str | None
    cpu: str | None
    memory: str | None
    pids: str | None
    blkio: str | None
    #: Memory entries whose files this kernel has (memsw only with swap accounting).
    memory_entries: tuple[str, ...]
    clock_ticks: int
    #: The cgroup2 mount when /sys/fs/cgroup is one (a unified host): :mod:`.cgroups2` reads then.
    unified: str | None = None

    @classmethod
    def find(cls, mountinfo: str = "/proc/self/mountinfo") -> Hierarchies:
        mounts: dict[str, str] = {}
        unified = None
        try:
            with open(mountinfo, encoding="utf-8") as table:
                for line in table:
                    left, _, right = line.partition(" - ")
                    fields = right.split()
                    if fields and fields[0] == "cgroup2" and left.split()[4] == UNIFIED_MOUNT:
                        unified = UNIFIED_MOUNT
                    if len(fields) >= 3 and fields[0] == "cgroup":
                        for option in fields[2].split(","):
                            mounts.setdefault(option, left.split()[4])
        except OSError:
            pass
        memory = mounts.get("memory")
        entries = tuple(name for name, (infix, _) in _MEMORY_ENTRIES.items()
                        if memory is not None and os.path.exists(os.path.join(memory, f"memory.{infix}usage_in_bytes")))
        return cls(mounts.get("cpuacct"), mounts.get("cpu"), memory, mounts.get("pids"), mounts.get("blkio"),
                   entries, os.sysconf("SC_CLK_TCK"), unified)

    @property
    def usable(self) -> bool:
        """Whether this is a cgroup v2 host, or a v1 (or hybrid) one with the controllers that matter."""
        return self.unified is not None or (self.cpuacct is not None and self.memory is not None)

    @property
    def metrics(self) -> Mapping[str, Metric]:
        """The per-container metrics of this host's cgroup version: name -> what it is."""
        from . import cgroups2  # it builds on this module

        return cgroups2.METRICS if self.unified is not None else METRICS


def read_file(directory: str, name: str) -> str:
    """One cgroup file's text (at most 64 KiB; an interface file is small)."""
    fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode("ascii", "replace")
    finally:
        os.close(fd)


def _int(text: str) -> int:
    text = text.strip()
    return 0 if text in ("", "max") else int(text)


def _pairs(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            found[key] = int(value)
    return found


def devices(partitions: str = "/proc/partitions") -> dict[tuple[int, int], str]:
    """major:minor -> ``/dev/NAME``, as containerd's cgroups library names blkio devices."""
    found: dict[tuple[int, int], str] = {}
    try:
        with open(partitions, encoding="ascii", errors="replace") as table:
            for line in table.readlines()[2:]:
                fields = line.split()
                if len(fields) >= 4 and fields[0].isdigit() and fields[1].isdigit():
                    found.setdefault((int(fields[0]), int(fields[1])), "/dev/" + fields[3])
    except OSError:
        pass
    return found


def _blkio_entries(text: str, names: Mapping[tuple[int, int], str]) -> list[tuple[tuple[str, ...], float]]:
    entries: list[tuple[tuple[str, ...], float]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue  # the closing "Total N"
        major, _, minor = fields[0].partition(":")
        if not (major.isdigit() and minor.isdigit() and fields[2].isdigit()):
            continue
        device = names.get((int(major), int(minor)), "")
        entries.append(((fields[1], device, major, minor), float(fields[2])))
    return entries


def _add(samples: Samples, name: str, value: float, labels: tuple[str, ...] = ()) -> None:
    samples.setdefault(name, []).append((labels, value))


def _maybe(directory: str, name: str) -> str:
    """A file that a kernel (or a controller's mount) may lack: empty text then."""
    try:
        return read_file(directory, name)
    except OSError:
        return ""


def read(where: Hierarchies, path: str, names: Mapping[tuple[int, int], str]) -> Samples:
    """The samples of cgroup ``path`` (relative to each hierarchy's root). Raises OSError when
    the cgroup is gone (its cpuacct.usage or memory.stat cannot be read); any other file a
    kernel lacks counts as zero or is left out, as containerd's cgroups library does."""
    relative = path.strip("/")
    if where.unified is not None:
        from . import cgroups2  # it builds on this module

        return cgroups2.read(os.path.join(where.unified, relative))
    samples: Samples = {}
    assert where.cpuacct is not None and where.memory is not None
    cpuacct = os.path.join(where.cpuacct, relative)
    memory = os.path.join(where.memory, relative)
    total = _int(read_file(cpuacct, "cpuacct.usage"))
    stat = _pairs(read_file(memory, "memory.stat"))
    _add(samples, "container_cpu_total_nanoseconds", total)
    ticks = _pairs(_maybe(cpuacct, "cpuacct.stat"))
    scale = 1_000_000_000 / where.clock_ticks
    _add(samples, "container_cpu_kernel_nanoseconds", ticks.get("system", 0) * scale)
    _add(samples, "container_cpu_user_nanoseconds", ticks.get("user", 0) * scale)
    for number, used in enumerate(_maybe(cpuacct, "cpuacct.usage_percpu").split()):
        _add(samples, "container_per_cpu_nanoseconds", int(used), (str(number),))
    throttling = _pairs(_maybe(os.path.join(where.cpu, relative), "cpu.stat")) if where.cpu is not None else {}
    _add(samples, "container_cpu_throttle_periods_total", throttling.get("nr_periods", 0))
    _add(samples, "container_cpu_throttled_periods_total", throttling.get("nr_throttled", 0))
    _add(samples, "container_cpu_throttled_time_nanoseconds", throttling.get("throttled_time", 0))
    for key in _MEMORY_STAT:
        _add(samples, f"container_memory_{key}_bytes", stat.get(key, 0))
    for entry, (infix, _) in _MEMORY_ENTRIES.items():
        present = entry in where.memory_entries
        for suffix, file in (("failcnt_total", "failcnt"), ("limit_bytes", "limit_in_bytes"),
                             ("max_bytes", "max_usage_in_bytes"), ("usage_bytes", "usage_in_bytes")):
            value = _int(_maybe(memory, f"memory.{infix}{file}")) if present else 0
            _add(samples, f"container_memory_{entry}_{suffix}", value)
    kills = _pairs(_maybe(memory, "memory.oom_control")).get("oom_kill")
    if kills is not None:
        _add(samples, "container_memory_oom_total", kills)
    if where.pids is not None:
        pids = os.path.join(where.pids, relative)
        current_text = _maybe(pids, "pids.current")
        if current_text:
            _add(samples, "container_pids_limit", _int(_maybe(pids, "pids.max")))
            _add(samples, "container_pids_current", _int(current_text))
    if where.blkio is not None:
        _read_blkio(samples, os.path.join(where.blkio, relative), names)
    return samples


def _read_blkio(samples: Samples, directory: str, names: Mapping[tuple[int, int], str]) -> None:
    found: dict[str, list[tuple[tuple[str, ...], float]]] = {}
    if os.path.exists(os.path.join(directory, "blkio.io_serviced_recursive")):
        found = {entry: _blkio_entries(_maybe(directory, file), names) for entry, file in _BLKIO_CFQ.items()}
    if not any(found.values()):
        found = {entry: _blkio_entries(_maybe(directory, file), names) for entry, file in _BLKIO_THROTTLE.items()}
    for entry, values in found.items():
        unit = "bytes" if entry == "io_service_bytes_recursive" else "total"
        samples.setdefault(f"container_blkio_{entry}_{unit}", []).extend(values)


def cgroup_of_pid(pid: int) -> str | None:
    """The cgroup path of ``pid`` in the v1 memory hierarchy (runc puts a container at one
    path in every hierarchy), else its cgroup v2 path (the ``0::`` line), or None when the
    process is gone."""
    unified = None
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as table:
            for line in table:
                number, controllers, path = line.rstrip("\n").split(":", 2)
                if "memory" in controllers.split(","):
                    return path
                if number == "0" and not controllers:
                    unified = path
    except (OSError, ValueError):
        return None
    return unified


def cgroup_from_spec(spec: Mapping[str, object]) -> str | None:
    """``linux.cgroupsPath`` of an OCI spec when it is a cgroupfs path (absolute); None for the
    systemd driver's ``slice:prefix:name`` or a path runc would make relative to itself."""
    linux = spec.get("linux")
    path = linux.get("cgroupsPath") if isinstance(linux, dict) else None
    if isinstance(path, str) and path.startswith("/") and ":" not in path:
        return path
    return None


def read_all(where: Hierarchies, cgroups: Iterable[tuple[object, str]]) -> list[tuple[object, Samples]]:
    """:func:`read` of each (key, path); cgroups that are gone are left out."""
    names = devices()
    found = []
    for key, path in cgroups:
        try:
            found.append((key, read(where, path, names)))
        except (OSError, ValueError):
            continue
    return found
