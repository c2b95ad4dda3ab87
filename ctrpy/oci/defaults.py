"""The default OCI runtime spec of a Linux container, as containerd generates it.

:func:`default_spec` is the starting point every container spec is built from (containerd's
``oci.GenerateSpec`` / ``populateDefaultUnixSpec``): root at ``rootfs`` (relative to the
bundle), a process running as root in ``/`` with 14 capabilities, ``RLIMIT_NOFILE`` 1024 and
no new privileges, the usual pseudo filesystems, new pid/ipc/uts/mount/network namespaces, a
cgroup at ``/<namespace>/<id>``, masked and read-only paths under /proc and /sys, and a device
cgroup that denies everything. :func:`add_default_devices` then allows the few character
devices every container needs (containerd's ``WithDefaultUnixDevices``).

A spec is plain JSON data (``dict``); it travels to the daemon as JSON inside an ``Any``.
"""

from __future__ import annotations

from typing import Any

Spec = dict[str, Any]

# The runtime-spec version containerd 1.6 writes into every spec it generates.
OCI_VERSION = "1.0.2-dev"
ROOTFS_PATH = "rootfs"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RWM = "rwm"

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

DEFAULT_NAMESPACES = ("pid", "ipc", "uts", "mount", "network")

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)

READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# (destination, type, source, options)
_MOUNTS = (
    ("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
    ("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    ("/dev/pts", "devpts", "devpts", ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
    ("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
    ("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    ("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    ("/run", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
)

# Character devices every container may use: (major, minor or None for all), in containerd's
# order: null, random, full, tty, zero, urandom, console, the pts range, ptmx.
_DEVICES: tuple[tuple[int, int | None], ...] = (
    (1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2),
)


def default_mounts() -> list[dict[str, Any]]:
    """The pseudo filesystems of every container: /proc, /dev, /dev/pts, /dev/shm,
    /dev/mqueue, /sys (read-only) and /run."""
    return [
        {"destination": dest, "type": kind, "source": source, "options": list(options)}
        for dest, kind, source, options in _MOUNTS
    ]


def default_spec(namespace: str, container_id: str) -> Spec:
    """A fresh default spec for container ``container_id`` in ``namespace``.

    The cgroup path is ``/<namespace>/<id>`` (cgroupfs style), as containerd sets it.
    """
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {
                "bounding": list(DEFAULT_CAPABILITIES),
                "effective": list(DEFAULT_CAPABILITIES),
                "permitted": list(DEFAULT_CAPABILITIES),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": ROOTFS_PATH},
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": RWM}]},
            "cgroupsPath": f"/{namespace}/{container_id}",
            "namespaces": [{"type": kind} for kind in DEFAULT_NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def add_default_devices(spec: Spec) -> None:
    """Allow the standard character devices in the device cgroup (after the deny-all rule)."""
    devices = resources(spec).setdefault("devices", [])
    for major, minor in _DEVICES:
        rule: dict[str, Any] = {"allow": True, "type": "c", "major": major}
        if minor is not None:
            rule["minor"] = minor
        rule["access"] = RWM
        devices.append(rule)


def process(spec: Spec) -> dict[str, Any]:
    """The spec's ``process`` object, created if missing."""
    value: dict[str, Any] = spec.setdefault("process", {})
    value.setdefault("user", {"uid": 0, "gid": 0})
    value.setdefault("cwd", "/")
    return value


def linux(spec: Spec) -> dict[str, Any]:
    """The spec's ``linux`` object, created if missing."""
    value: dict[str, Any] = spec.setdefault("linux", {})
    return value


def resources(spec: Spec) -> dict[str, Any]:
    """The spec's ``linux.resources`` object, created if missing."""
    value: dict[str, Any] = linux(spec).setdefault("resources", {})
    return value
