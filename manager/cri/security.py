"""A CRI container's security context, applied to its OCI spec the way containerd's CRI does.

Who the process is: ``run_as_username`` or ``run_as_user`` (with ``run_as_group``), else the
image's ``USER``, resolved in the container's own root filesystem (its /etc/passwd and
/etc/group; the host's are never read). Its groups: the primary gid, then (policy ``Merge``) the
groups of /etc/group that list the user, then the pod's ``supplemental_groups``; policy
``Strict`` leaves out /etc/group. One difference from containerd, on purpose: containerd looks up
/etc/group for ``run_as_user`` *or uid 0* even when the image's USER decides who runs; ctrpy looks
up the user that actually runs (the kubelet passes the image's user as ``run_as_user`` anyway).

Capabilities: the 14 of containerd's default spec, ``ALL`` added (every capability this process
holds) or dropped first, then the named ones (kubelet's names, without ``CAP_``). Privileged: every
capability, no masked or read-only paths, /sys and /sys/fs/cgroup writable, every host device
(containerd's ``WithPrivileged``, ``WithHostDevices``, ``WithAllDevicesAllowed``), refused unless
the sandbox is privileged too. Masked and read-only paths: the config's, else containerd's
defaults (containerd 1.6 leaves both empty when the kubelet sends none; ctrpy keeps the safer
defaults). AppArmor is not available on this kind of machine: a RuntimeDefault or Unconfined
AppArmor profile is ignored, a Localhost one refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import InvalidArgument
from ctrpy.oci import defaults
from ctrpy.oci.defaults import Spec
from ctrpy.oci.users import additional_gids, resolve_user

__all__ = [
    "ALL_CAPABILITIES",
    "apply_capabilities",
    "apply_identity",
    "apply_paths",
    "apply_privileged",
    "check_apparmor",
    "current_capabilities",
    "devices_under",
    "host_devices",
    "user_string",
]

#: Capability names by number (linux/capability.h), up to CAP_CHECKPOINT_RESTORE (40).
ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

_CAP_SETS = ("bounding", "effective", "permitted")

# Directories of /dev that hold no device a container should get (runc's HostDevices skips them).
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def current_capabilities(status_path: str = "/proc/self/status") -> tuple[str, ...]:
    """The capabilities in this process's bounding set (containerd's "all capabilities"), by
    name, in number order; the whole known list when the status cannot be read."""
    try:
        with open(status_path, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
                    return tuple(name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1)
    except (OSError, ValueError):
        pass
    return ALL_CAPABILITIES


def user_string(context: api.LinuxContainerSecurityContext, image_user: str) -> str:
    """The ``user[:group]`` the process runs as (containerd's ``generateUserString``): the
    username or uid of the context with its gid, else the image's USER. Raises InvalidArgument
    for a group without a user."""
    user = str(context.run_as_user.value) if context.HasField("run_as_user") else ""
    if context.run_as_username:
        user = context.run_as_username
    group = str(context.run_as_group.value) if context.HasField("run_as_group") else ""
    if not user:
        if group:
            raise InvalidArgument(f'user group "{group}" is specified without user')
        return image_user
    return f"{user}:{group}" if group else user


def apply_identity(spec: Spec, context: api.LinuxContainerSecurityContext, image_user: str, rootfs: str) -> None:
    """Set ``process.user`` (see the module docstring). Raises NotFound for a user or group
    name the image does not know, InvalidArgument for a malformed one."""
    who = user_string(context, image_user)
    uid, gid = resolve_user(rootfs, who) if who else (0, 0)
    groups: list[int] = [gid]
    if context.supplemental_groups_policy == api.Merge:
        name = who.partition(":")[0] if who else "0"
        groups.extend(additional_gids(rootfs, name))
    elif context.supplemental_groups_policy != api.Strict:
        raise InvalidArgument(f"unknown supplemental groups policy {context.supplemental_groups_policy}")
    groups.extend(int(g) for g in context.supplemental_groups)
    unique = list(dict.fromkeys(groups))
    for value in (uid, gid, *unique):
        if not 0 <= value < 1 << 32:
            raise InvalidArgument(f"user or group id {value} out of range")
    defaults.process(spec)["user"] = {"uid": uid, "gid": gid, "additionalGids": unique}


def _cap_name(name: str) -> str:
    upper = name.upper()
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in ALL_CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


def _set_caps(spec: Spec, caps: list[str]) -> None:
    defaults.process(spec)["capabilities"] = {key: list(caps) for key in _CAP_SETS}


def apply_capabilities(spec: Spec, capability: api.Capability, all_caps: tuple[str, ...]) -> None:
    """Add and drop capabilities (containerd's ``WithCapabilities``): ``ALL`` first, then the
    named ones; ambient capabilities are never granted (as containerd). Raises InvalidArgument
    for an unknown name."""
    process = defaults.process(spec)
    current: list[str] = list((process.get("capabilities") or {}).get("bounding") or [])
    added = [c for c in capability.add_capabilities]
    dropped = [c for c in capability.drop_capabilities]
    if any(c.upper() == "ALL" for c in added):
        current = list(all_caps)
    if any(c.upper() == "ALL" for c in dropped):
        current = []
    for name in added:
        if name.upper() != "ALL" and (full := _cap_name(name)) not in current:
            current.append(full)
    drop = {_cap_name(name) for name in dropped if name.upper() != "ALL"}
    _set_caps(spec, [c for c in current if c not in drop])


def apply_paths(spec: Spec, context: api.LinuxContainerSecurityContext) -> None:
    """Masked and read-only paths: the context's when it names any, else the defaults."""
    linux = defaults.linux(spec)
    linux["maskedPaths"] = list(context.masked_paths) or list(defaults.MASKED_PATHS)
    linux["readonlyPaths"] = list(context.readonly_paths) or list(defaults.READONLY_PATHS)


def _device(path: str, container_path: str, st: os.stat_result, access: str) -> tuple[dict[str, Any], dict[str, Any]]:
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    entry = {"path": container_path, "type": kind, "major": major, "minor": minor,
             "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    rule = {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
    return entry, rule


def devices_under(path: str, container_path: str, access: str, *, skip_dirs: frozenset[str] = frozenset(),
                  skip_names: frozenset[str] = frozenset()) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The device nodes at ``path`` (a device, or a directory walked recursively), as spec
    device entries at ``container_path`` and their cgroup rules; other files are skipped."""
    st = os.stat(path)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        yield _device(path, container_path, st, access)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{path!r} is not a device")
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        inner = os.path.join(container_path, entry.name)
        try:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in skip_dirs:
                    yield from devices_under(entry.path, inner, access, skip_dirs=skip_dirs, skip_names=skip_names)
                continue
            if entry.is_symlink() or entry.name in skip_names:
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            yield _device(entry.path, inner, st, access)


def host_devices(dev: str = "/dev") -> list[dict[str, Any]]:
    """Every device node of the host's /dev (the spec's ``linux.devices`` entries), as runc's
    ``HostDevices`` finds them: /dev/pts, /dev/shm, /dev/fd, /dev/mqueue and /dev/console left out."""
    found = devices_under(dev, "/dev", "rwm", skip_dirs=_SKIPPED_DEV_DIRS, skip_names=frozenset({"console"}))
    return [entry for entry, _ in found]


def apply_privileged(spec: Spec, all_caps: tuple[str, ...], dev: str = "/dev") -> None:
    """containerd's ``WithPrivileged`` + ``WithHostDevices`` + ``WithAllDevicesAllowed``."""
    _set_caps(spec, list(all_caps))
    linux = defaults.linux(spec)
    linux.pop("maskedPaths", None)
    linux.pop("readonlyPaths", None)
    linux.pop("seccomp", None)
    for mount in spec.get("mounts") or []:
        if mount.get("type") in ("sysfs", "cgroup"):
            mount["options"] = [o for o in mount.get("options") or [] if o != "ro"]
    linux["devices"] = [*(linux.get("devices") or []), *host_devices(dev)]
    defaults.resources(spec)["devices"] = [{"allow": True, "access": "rwm"}]


def check_apparmor(context: api.LinuxContainerSecurityContext) -> None:
    """AppArmor is absent here: as containerd without AppArmor, refuse a Localhost profile (it
    cannot be honoured) and ignore the rest."""
    if context.HasField("apparmor"):
        if context.apparmor.profile_type == api.SecurityProfile.Localhost:
            raise InvalidArgument("apparmor is not supported")
    elif context.apparmor_profile.startswith("localhost/"):
        raise InvalidArgument("apparmor is not supported")
