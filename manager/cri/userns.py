"""Pod user namespaces with what runc 1.1 can do: id mappings and a remapped root filesystem.

A pod asking for ``userns_options`` in POD mode gets one user namespace for the pause process
and every container of the pod: the pause process creates it (``linux.namespaces`` ``user`` with
``uidMappings``/``gidMappings``) and the containers join it through ``/proc/<pause>/ns/user``,
as containerd's CRI plugin does. The mappings are validated as containerd validates them
(``parseUsernsIDs``): exactly one line each for uids and gids, a length of at least 1, container
id 0 mapped; NODE with mappings, POD without them, CONTAINER and TARGET are refused with
InvalidArgument.

The root filesystem. runc 1.1 has no id-mapped mounts (they came with runc 1.2), so a rootfs
owned by host uid 0 would be owned by "nobody" inside the namespace: its root could not create
runc's mount points or write anything. So, as containerd 1.7 does (``WithRemappedSnapshot``),
the image's top snapshot gets a remapped twin: an active snapshot on it, mounted, every file
``lchown``-ed from ``id`` to ``host_id + id - container_id``, committed as
``<chain id>-userns-<uid host>-<uid length>-<gid host>-<gid length>`` and shared by every pod
with the same mappings; the pod's own snapshots are prepared on it. What it costs: on overlayfs
the chown copies every file of the image up into the twin's layer (a full copy of the image's
data, once per image and mapping, kept while a snapshot uses it and then garbage-collected like
any unreferenced snapshot); the time is the copy's. File capabilities (``security.capability``,
which chown clears) and set-id bits are put back; POSIX ACLs keep their host ids (not remapped).

What stays host-owned: bind mounts (the CRI's volumes, the pod's hosts/resolv.conf/hostname
files, ``/dev/shm``) are not id-mapped, so inside the pod host-root-owned files show as
nobody (65534) and only their "other" permission bits apply, as with containerd 1.7. A CRI
mount asking for id mappings of its own is refused (:mod:`.crimounts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from ctrpy import namespaces
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ctrpy.mount import mounted

from ..metadata.db import Database
from ..metadata.leases import LeaseStore
from ..metadata.snapshots import SnapshotStore

__all__ = [
    "IdMap",
    "PodUserns",
    "check_traversable",
    "container_check",
    "own_new_volumes",
    "pod_userns",
    "prepare_rootfs",
    "remap_tree",
]

log = structlog.get_logger(__name__)

_MAX_ID = 1 << 32
_CAPS_XATTR = "security.capability"
#: How long the lease that guards a half-made remapped snapshot lives if ctrpyd dies meanwhile.
_LEASE_SECONDS = 3600


@dataclass(frozen=True)
class IdMap:
    """One mapping line: ``length`` ids from ``container_id`` inside to ``host_id`` outside."""

    container_id: int
    host_id: int
    length: int

    def host(self, inside: int) -> int | None:
        """The host id of ``inside``, or None when the line does not map it."""
        offset = inside - self.container_id
        return self.host_id + offset if 0 <= offset < self.length else None

    def oci(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.length}


@dataclass(frozen=True)
class PodUserns:
    """The pod's user namespace mappings (one line each, containerd's limit too)."""

    uids: IdMap
    gids: IdMap

    def oci(self) -> dict[str, Any]:
        """The spec's ``linux`` keys for a new user namespace with these mappings."""
        return {"uidMappings": [self.uids.oci()], "gidMappings": [self.gids.oci()]}

    def snapshot_name(self, chain_id: str) -> str:
        u, g = self.uids, self.gids
        return f"{chain_id}-userns-{u.host_id}-{u.length}-{g.host_id}-{g.length}"


def _mode_name(mode: int) -> str:
    try:
        return api.NamespaceMode.Name(mode)  # type: ignore[arg-type]
    except ValueError:
        return str(mode)


def _one_line(kind: str, lines: Any) -> IdMap | None:
    if not lines:
        return None
    if len(lines) > 1:
        raise InvalidArgument(f"user namespace {kind} mapping: only one mapping line supported, "
                              f"got {len(lines)} mapping lines")
    line = lines[0]
    if line.length < 1:
        raise InvalidArgument(f"user namespace {kind} mapping: invalid mapping length: {line.length}")
    if line.container_id + line.length > _MAX_ID or line.host_id + line.length > _MAX_ID:
        raise InvalidArgument(f"user namespace {kind} mapping: ids beyond 2^32-1")
    if line.container_id != 0:
        raise InvalidArgument(f"user namespace {kind} mapping: container id 0 is not mapped "
                              f"(the mapping starts at {line.container_id})")
    return IdMap(line.container_id, line.host_id, line.length)


def pod_userns(options: api.NamespaceOption) -> PodUserns | None:
    """The pod's user namespace, None for none (no option, or NODE); InvalidArgument for a
    configuration containerd refuses (see the module docstring)."""
    if not options.HasField("userns_options"):
        return None
    userns = options.userns_options
    uids = _one_line("UID", userns.uids)
    gids = _one_line("GID", userns.gids)
    if userns.mode == api.NODE:
        if uids is not None or gids is not None:
            raise InvalidArgument(f'can\'t use user namespace mode "NODE" with mappings. Got '
                                  f"{len(userns.uids)} UID mappings and {len(userns.gids)} GID mappings")
        return None
    if userns.mode == api.POD:
        if uids is None or gids is None:
            raise InvalidArgument('can\'t use user namespace mode "POD" without UID and GID mappings')
        return PodUserns(uids, gids)
    raise InvalidArgument(f'unsupported user namespace mode: "{_mode_name(userns.mode)}"')


def container_check(options: api.NamespaceOption, pod: PodUserns | None) -> None:
    """A container's own user namespace option must be the pod's (or absent): containers
    share the pod's namespace, so any other configuration is refused as containerd refuses
    it."""
    if not options.HasField("userns_options"):
        return
    wanted = pod_userns(options)
    if wanted != pod:
        raise InvalidArgument("user namespace configuration of the container differs from the sandbox's: "
                              "containers share the pod's user namespace")


def check_traversable(path: str) -> None:
    """FailedPrecondition unless every directory from ``/`` down to ``path`` is searchable by
    others: runc enters the bundle's rootfs from inside the pod's user namespace, as a host uid
    that owns none of them (containerd's state directories are 0711 for the same reason)."""
    current = os.path.abspath(path)
    while True:
        with contextlib.suppress(FileNotFoundError):
            if not os.stat(current).st_mode & stat.S_IXOTH:
                raise FailedPrecondition(f"pods with a user namespace need {current} searchable by others "
                                         f"(mode o+x): runc enters the root filesystem below it from the pod's "
                                         f"user namespace")
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


# -- the remapped root filesystem ----------------------------------------------------------------


def _shift(path: str, st: os.stat_result, userns: PodUserns) -> tuple[int, int]:
    uid = userns.uids.host(st.st_uid)
    gid = userns.gids.host(st.st_gid)
    return (st.st_uid if uid is None else uid, st.st_gid if gid is None else gid)


def _walk(root: str) -> Iterator[str]:
    yield root
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            yield os.path.join(directory, name)


def remap_tree(root: str, userns: PodUserns) -> int:
    """Shift the owner of everything under ``root`` (not following symlinks) into the pod's
    ranges; ids outside the mappings are left alone. Returns how many entries were changed.

    Each path is shifted from what it shows now, once: a hard link whose inode was already
    shifted (same device and inode, owner already the shifted one) is skipped, so a snapshotter
    that shares inodes between links does not shift them twice, and overlayfs (where chowning
    one link copies only that one up) still shifts the others."""
    done: dict[tuple[int, int], tuple[int, int]] = {}
    changed = 0
    for path in _walk(root):
        st = os.lstat(path)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and done.get(key) == (st.st_uid, st.st_gid):
            continue
        owner = _shift(path, st, userns)
        if owner == (st.st_uid, st.st_gid):
            continue
        caps = None
        is_link = stat.S_ISLNK(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            with contextlib.suppress(OSError):
                caps = os.getxattr(path, _CAPS_XATTR, follow_symlinks=False)
        os.lchown(path, *owner)
        if not is_link and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))  # chown(2) cleared the set-id bits
        if caps is not None:
            os.setxattr(path, _CAPS_XATTR, caps, follow_symlinks=False)
        done[key] = owner
        changed += 1
    return changed


def own_new_volumes(volumes_dir: str, userns: PodUserns) -> None:
    """Give the pod's root the image volumes made empty (the image had nothing at their path):
    ``crimounts.volume_mounts`` creates them as host root, which the pod could not write. A
    volume copied from the remapped root filesystem already has the image's shifted owners."""
    try:
        names = os.listdir(volumes_dir)
    except FileNotFoundError:
        return
    owner = (userns.uids.host_id, userns.gids.host_id)
    for name in names:
        path = os.path.join(volumes_dir, name)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid) == (0, 0) and not os.listdir(path):
            os.lchown(path, *owner)


_locks: dict[str, asyncio.Lock] = {}


@contextlib.asynccontextmanager
async def _lease(db: Database) -> AsyncIterator[None]:
    """A short lease over the remap so the garbage collector keeps its snapshots until the
    pod's own snapshot holds the twin; it expires by itself should ctrpyd die meanwhile."""
    leases = LeaseStore(db)
    lease_id = f"ctrpy-cri-userns-{secrets.token_hex(8)}"
    expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + _LEASE_SECONDS))
    await db.run(leases.create, lease_id, {"containerd.io/gc.expire": expire})
    token = namespaces.current_lease.set(lease_id)
    try:
        yield
    finally:
        namespaces.current_lease.reset(token)
        with contextlib.suppress(NotFound):
            await db.run(leases.delete, lease_id)


async def _ensure_twin(store: SnapshotStore, chain_id: str, userns: PodUserns, scratch: str) -> str:
    name = userns.snapshot_name(chain_id)
    async with _locks.setdefault(name, asyncio.Lock()):
        with contextlib.suppress(NotFound):
            await store.stat(name)
            return name
        key = f"{name}-remap-{secrets.token_hex(4)}"
        mounts = await store.prepare(key, chain_id)
        try:
            os.makedirs(scratch, mode=0o700, exist_ok=True)
            target = tempfile.mkdtemp(prefix="userns-", dir=scratch)
            started = time.monotonic()
            try:
                changed = await asyncio.to_thread(_remap_mounted, mounts, target, userns)
            finally:
                with contextlib.suppress(OSError):
                    os.rmdir(target)
            try:
                await store.commit(name, key)
            except AlreadyExists:  # another ctrpyd call made it meanwhile
                await store.remove(key)
            log.info("remapped snapshot made for a user namespace", snapshot=name, entries=changed,
                     seconds=round(time.monotonic() - started, 3))
        except BaseException:
            with contextlib.suppress(NotFound):
                await store.remove(key)
            raise
    return name


def _remap_mounted(mounts: Any, target: str, userns: PodUserns) -> int:
    with mounted(mounts, target) as root:
        return remap_tree(root, userns)


async def prepare_rootfs(store: SnapshotStore, db: Database, chain_id: str, userns: PodUserns | None,
                          key: str, scratch: str) -> tuple[list[Any], str]:
    """Prepare active snapshot ``key`` for a pod's container: on ``chain_id`` itself without a
    user namespace, else on its remapped twin (made on first use; see the module docstring).
    ``scratch`` is a private directory where the twin is mounted while it is made. Returns the
    mounts and the parent used."""
    if userns is None:
        return await store.prepare(key, chain_id), chain_id
    async with _lease(db):
        parent = await _ensure_twin(store, chain_id, userns, scratch)
        return await store.prepare(key, parent), parent
