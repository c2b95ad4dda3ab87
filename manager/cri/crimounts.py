"""The mounts and devices of a CRI container's spec (containerd's ``WithMounts``, ``WithDevices``).

Mounts come from three places, merged as containerd merges them: the CRI config's ``mounts``
first (they win), then the sandbox's files (/etc/hostname, /etc/hosts, /etc/resolv.conf, read-only
when the root filesystem is, and /dev/shm: the pod's, or the host's with hostIPC), then the
image's VOLUMEs that nothing else covers. They are sorted by depth, so that /a is mounted
before /a/b, and replace any default mount at the same place (and everything under /dev when
/dev itself is given). Each is a recursive bind of the host path:

- a missing host path is created as a directory (0755), as containerd does;
- symbolic links in the host path are resolved first (the kernel would follow them anyway, but
  the propagation check and the runtime must see the real place);
- propagation PRIVATE is ``rprivate``; HOST_TO_CONTAINER is ``rslave`` and needs the host path's
  mount to be shared or a slave; BIDIRECTIONAL is ``rshared`` and needs it shared (checked in
  /proc/self/mountinfo, as containerd does, so that a mistake is a clear error at creation
  instead of a silent private mount); the root's propagation follows (``rslave``/``rshared``);
- ``readonly`` is ``ro``; ``recursive_read_only`` is ``rro`` (runc 1.1+ on kernels with
  mount_setattr), allowed only with ``readonly`` and PRIVATE propagation, like containerd 2.0;
- ``selinux_relabel`` is ignored (no SELinux here); image-backed mounts (``image``) are refused.

Image volumes: containerd creates an empty directory per volume under the container's root
directory and copies the image's content at that path into it. ctrpy does the same under the
``volumes_dir`` the caller gives (one directory per volume, named by a hash of its path, so
that a retried creation reuses it); without a ``volumes_dir`` image volumes are left out and
the path stays part of the container's writable layer.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import FailedPrecondition, InvalidArgument
from ctrpy.manager.cri.security import devices_under
from ctrpy.oci import defaults
from ctrpy.oci.defaults import Spec
from ctrpy.oci.users import root_path

__all__ = [
    "CGROUP_MOUNT",
    "CriMount",
    "apply_devices",
    "apply_mounts",
    "mount_propagation",
    "sandbox_mounts",
    "volume_mounts",
]

ETC_HOSTNAME = "/etc/hostname"
ETC_HOSTS = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
DEV_SHM = "/dev/shm"

#: The read-only cgroup filesystem containerd's CRI gives every container (Docker's behaviour).
CGROUP_MOUNT: dict[str, Any] = {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}


# mountinfo escapes space, tab, newline and backslash in paths as \ooo.
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class CriMount:
    """One bind mount to make, in CRI terms (a ``runtime.v1.Mount`` the builder can add too)."""

    container_path: str
    host_path: str
    readonly: bool = False
    propagation: int = api.PROPAGATION_PRIVATE
    recursive_read_only: bool = False

    @classmethod
    def from_api(cls, mount: api.Mount) -> CriMount:
        if mount.HasField("image") and mount.image.image:
            raise InvalidArgument(f"mount {mount.container_path!r}: image volumes are not supported")
        if mount.uidMappings or mount.gidMappings:
            raise InvalidArgument(f"mount {mount.container_path!r}: id-mapped mounts are not supported")
        return cls(mount.container_path, mount.host_path, mount.readonly, mount.propagation,
                   mount.recursive_read_only)


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path else path


def sandbox_mounts(files: dict[str, str], shm: str, *, readonly_rootfs: bool, host_ipc: bool) -> list[CriMount]:
    """The sandbox's files as mounts (containerd's ``containerMounts``): hostname (when the
    sandbox has the file), hosts, resolv.conf and /dev/shm."""
    mounts = []
    for name, destination in (("hostname", ETC_HOSTNAME), ("hosts", ETC_HOSTS), ("resolv.conf", RESOLV_CONF)):
        path = files.get(name)
        if path and os.path.exists(path):
            mounts.append(CriMount(destination, path, readonly_rootfs))
    source = DEV_SHM if host_ipc or not shm else shm
    mounts.append(CriMount(DEV_SHM, source))
    return mounts


def _copy_tree(source: str, target: str) -> None:
    """Copy a directory of the image with modes, times and owners (containerd's copy-up)."""
    shutil.copytree(source, target, symlinks=True)
    for directory, dirs, files in os.walk(source):
        for name in ("", *dirs, *files):
            path = os.path.join(directory, name) if name else directory
            st = os.lstat(path)
            os.lchown(os.path.join(target, os.path.relpath(path, source)), st.st_uid, st.st_gid)


def volume_mounts(volumes: Iterable[str], taken: set[str], rootfs: str, volumes_dir: str) -> list[CriMount]:
    """A directory under ``volumes_dir`` for each image volume not in ``taken`` (container
    paths), filled with what the image has at that path the first time (see the module
    docstring)."""
    mounts = []
    for volume in volumes:
        destination = _clean(volume)
        if not destination.startswith("/") or destination in taken:
            continue
        host = os.path.join(volumes_dir, hashlib.sha256(destination.encode()).hexdigest()[:32])
        if not os.path.isdir(host):
            partial = host + ".tmp"
            shutil.rmtree(partial, ignore_errors=True)
            source = root_path(rootfs, destination)
            if os.path.isdir(source) and not os.path.islink(source):
                _copy_tree(source, partial)
            else:
                os.makedirs(partial, mode=0o755)
            os.replace(partial, host)
        mounts.append(CriMount(destination, host))
        taken.add(destination)
    return mounts


def _mountinfo(path: str = "/proc/self/mountinfo") -> list[tuple[str, list[str]]]:
    """(mount point, optional fields) of every mount, in the order the kernel lists them."""
    found = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                end = fields.index("-")
            except ValueError:
                continue
            point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            found.append((point, fields[6:end]))
    return found


def mount_propagation(path: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The optional fields (``shared:N``, ``master:N``...) of the mount holding ``path``: the
    last-listed mount whose mount point is the longest prefix of the path."""
    best: tuple[int, list[str]] = (-1, [])
    for point, optional in _mountinfo(mountinfo):
        under = path == point or point == "/" or path.startswith(point.rstrip("/") + "/")
        if under and len(point) >= best[0]:
            best = (len(point), optional)
    return best[1]


def _check_propagation(source: str, want_shared: bool) -> None:
    fields = mount_propagation(source)
    shared = any(f.startswith("shared:") for f in fields)
    slave = any(f.startswith("master:") for f in fields)
    if want_shared and not shared:
        raise FailedPrecondition(f"path {source!r} is mounted on a mount that is not shared "
                                 "(bidirectional propagation needs a shared mount)")
    if not want_shared and not (shared or slave):
        raise FailedPrecondition(f"path {source!r} is mounted on a mount that is neither shared nor slave "
                                 "(host-to-container propagation needs one)")


def _check_recursive_read_only(mount: CriMount) -> None:
    """Refuse ``recursive_read_only`` without ``readonly`` or with a propagation other than
    PRIVATE (a submount propagated in later would not be read-only), before any host path is
    made or checked, so that the answer is always InvalidArgument, as containerd's."""
    if not mount.recursive_read_only:
        return
    if not mount.readonly:
        raise InvalidArgument(f"mount {mount.container_path!r}: recursive read-only needs readonly")
    if mount.propagation != api.PROPAGATION_PRIVATE:
        raise InvalidArgument(f"mount {mount.container_path!r}: recursive read-only needs private propagation")


def _bind(mount: CriMount, linux: dict[str, Any]) -> dict[str, Any]:
    source = mount.host_path
    if not source.startswith("/"):
        raise InvalidArgument(f"mount {mount.container_path!r}: host path {source!r} must be absolute")
    if not os.path.lexists(source):
        os.makedirs(source, mode=0o755, exist_ok=True)
    source = os.path.realpath(source)
    options = ["rbind"]
    if mount.propagation == api.PROPAGATION_PRIVATE:
        options.append("rprivate")
    elif mount.propagation == api.PROPAGATION_BIDIRECTIONAL:
        _check_propagation(source, want_shared=True)
        options.append("rshared")
        linux["rootfsPropagation"] = "rshared"
    elif mount.propagation == api.PROPAGATION_HOST_TO_CONTAINER:
        _check_propagation(source, want_shared=False)
        options.append("rslave")
        if linux.get("rootfsPropagation") not in ("rshared", "rslave"):
            linux["rootfsPropagation"] = "rslave"
    else:
        raise InvalidArgument(f"mount {mount.container_path!r}: unknown propagation {mount.propagation}")
    if mount.recursive_read_only:
        options.append("rro")
    else:
        options.append("ro" if mount.readonly else "rw")
    return {"destination": mount.container_path, "type": "bind", "source": source, "options": options}


def _depth(path: str) -> int:
    return len([p for p in _clean(path).split("/") if p])


def apply_mounts(spec: Spec, mounts: Sequence[CriMount]) -> None:
    """Merge ``mounts`` (already in priority order: a later one at a path taken by an earlier
    one is dropped) into the spec's default mounts, and add the cgroup mount (see the module
    docstring). Raises InvalidArgument or FailedPrecondition for a mount that cannot be made."""
    chosen: list[CriMount] = []
    seen: set[str] = set()
    for mount in mounts:
        if not mount.container_path.startswith("/"):
            raise InvalidArgument(f"mount {mount.container_path!r}: container path must be absolute")
        _check_recursive_read_only(mount)
        if _clean(mount.container_path) not in seen:
            seen.add(_clean(mount.container_path))
            chosen.append(mount)
    chosen.sort(key=lambda m: _depth(m.container_path))
    base = [*(spec.get("mounts") or []), dict(CGROUP_MOUNT, options=list(CGROUP_MOUNT["options"]))]
    kept = []
    for existing in base:
        destination = _clean(existing["destination"])
        if destination in seen or ("/dev" in seen and destination.startswith("/dev/")):
            continue
        kept.append(existing)
    linux = defaults.linux(spec)
    kept.extend(_bind(m, linux) for m in chosen)
    spec["mounts"] = kept


def apply_devices(spec: Spec, devices: Sequence[api.Device]) -> None:
    """Give the container the host devices named (containerd's ``WithDevices``): each host path
    (symbolic links resolved; a directory gives every device below it) appears at the container
    path with the cgroup permissions asked for (``rwm`` when none)."""
    linux = defaults.linux(spec)
    for device in devices:
        access = device.permissions or "rwm"
        if not set(access) <= set("rwm"):
            raise InvalidArgument(f"device {device.host_path!r}: invalid permissions {access!r}")
        if not device.container_path.startswith("/"):
            raise InvalidArgument(f"device {device.host_path!r}: container path must be absolute")
        try:
            found = list(devices_under(os.path.realpath(device.host_path), device.container_path, access))
        except FileNotFoundError:
            raise InvalidArgument(f"device {device.host_path!r}: no such device") from None
        for entry, rule in found:
            linux.setdefault("devices", []).append(entry)
            defaults.resources(spec).setdefault("devices", []).append(rule)
