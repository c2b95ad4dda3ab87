"""Creating a container from an image, and deleting it, over the API (ctr's ``NewContainer``).

:func:`create_container` does what ``ctr run`` and ``ctr containers create`` do before a task
exists:

1. check the id, find the image (``image "x": not found``), unpack it if it is not yet;
2. inside a lease: read the image config, Snapshots.Prepare(key=id, parent=top chain id);
3. mount that snapshot read-only in a temporary directory to read /etc/passwd and /etc/group
   (for the user and additional gids), then unmount it;
4. build the spec (:func:`build_spec`) and Containers.Create with the image's labels, the
   ``io.containerd.image.config.stop-signal`` label, the runtime and its options.

If anything after Prepare fails, the snapshot is removed again: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2

from ctrpy import errors, identifiers
from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as api
from ctrpy.api.containerd.types.runc.options import oci_pb2
from ctrpy.client import Client
from ctrpy.images import platforms, snapshots, store
from ctrpy.images.content import read_blob
from ctrpy.images.model import chain_id, parse_config
from ctrpy.images.platforms import Matcher
from ctrpy.images.resolve import resolve_manifest
from ctrpy.images.unpack import is_unpacked, resolve_snapshotter, unpack
from ctrpy.mount import Mount, mounted
from ctrpy.oci import image as image_config
from ctrpy.oci import opts
from ctrpy.oci.defaults import Spec, add_default_devices, default_spec
from ctrpy.oci.layout import SPEC_URL, spec_json
from ctrpy.oci.users import Identity, identity

DEFAULT_RUNTIME = "io.containerd.runc.v2"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"
# containerd refuses labels longer than this (key and value together).
MAX_LABEL = 4096


@dataclass(frozen=True)
class ContainerConfig:
    """What a user asks for when creating a container from an image (ctr's run flags)."""

    image: str
    id: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    mounts: tuple[opts.MountFlag, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    memory_limit: int = 0
    cpus: float = 0.0
    cpu_shares: int | None = None
    net_host: bool = False
    tty: bool = False
    cwd: str = ""
    read_only: bool = False
    cgroup: str | None = None
    snapshotter: str | None = None
    runtime: str = DEFAULT_RUNTIME
    runc_binary: str = ""
    runc_root: str = ""
    platform: Matcher | None = None


def build_spec(namespace: str, config: ContainerConfig, run: image_config.RunConfig, who: Identity) -> Spec:
    """The spec ctr builds for ``config``, options applied in ctr's order."""
    spec = default_spec(namespace, config.id)
    add_default_devices(spec)
    opts.with_env(spec, config.env)
    opts.with_mounts(spec, config.mounts)
    image_config.apply(spec, run, who)
    if config.read_only:
        opts.with_readonly_rootfs(spec)
    if config.args:
        opts.with_process_args(spec, config.args)
    if config.cwd:
        opts.with_cwd(spec, config.cwd)
    if config.tty:
        opts.with_tty(spec)
    if config.net_host:
        opts.with_host_network(spec)
    if config.cpus > 0:
        opts.with_cpus(spec, config.cpus)
    if config.cpu_shares is not None and config.cpu_shares > 0:
        opts.with_cpu_shares(spec, config.cpu_shares)
    if config.cgroup is not None:
        opts.with_cgroup(spec, config.cgroup)
    if config.memory_limit:
        opts.with_memory_limit(spec, config.memory_limit)
    opts.with_annotations(spec, config.labels)
    return spec


def runtime_options(config: ContainerConfig) -> any_pb2.Any | None:
    """The runtime's options: ``containerd.runc.v1.Options`` (empty unless ``--runc-binary``
    or ``--runc-root``) for runc v2, none for other runtimes. Raises InvalidArgument when runc
    options are given for another runtime."""
    if config.runtime != DEFAULT_RUNTIME:
        if config.runc_binary or config.runc_root:
            raise errors.InvalidArgument(
                f'specifying runc-binary and runc-root is only supported for "{DEFAULT_RUNTIME}" runtime')
        return None
    options = oci_pb2.Options(binary_name=config.runc_binary, root=config.runc_root)
    return any_pb2.Any(type_url=RUNC_OPTIONS_URL, value=options.SerializeToString())


def readonly_mounts(mounts: Sequence[Mount]) -> list[Mount]:
    """Mounts made read-only for looking only: containerd adds ``ro`` to a lone overlay; binds
    are made read-only too (``rw`` dropped), which is just as safe."""
    out = []
    for m in mounts:
        if m.type == "overlay" and len(mounts) == 1:
            out.append(Mount(m.type, m.source, m.target, (*m.options, "ro")))
        elif m.type == "bind":
            out.append(Mount(m.type, m.source, m.target, (*(o for o in m.options if o not in ("rw", "ro")), "ro")))
        else:
            out.append(m)
    return out


@contextlib.contextmanager
def mounted_snapshot(client: Client, snapshotter: str, key: str) -> Iterator[str]:
    """Mount snapshot ``key`` read-only on a temporary directory for the length of the block.

    Raises what Snapshots.Mounts raises, and OSError when the mount fails.
    """
    mounts = readonly_mounts(snapshots.mounts(client, snapshotter, key))
    target = tempfile.mkdtemp(prefix="ctrpy-mount")
    try:
        with mounted(mounts, target) as root:
            yield root
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(target)


def _labels(run: image_config.RunConfig, image_labels: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    labels = dict(run.labels)
    labels.update((k, v) for k, v in image_labels.items() if len(k) + len(v) <= MAX_LABEL)
    labels.update(extra)
    labels[STOP_SIGNAL_LABEL] = image_config.stop_signal(run)
    return labels


def create_container(client: Client, config: ContainerConfig) -> api.Container:
    """Create the container ``config.id`` from ``config.image`` and return it as the daemon
    stored it.

    Raises InvalidArgument for a bad id or flag, NotFound for a missing image (or a user name
    the image does not know), AlreadyExists when the id (or its snapshot key) is taken, OSError
    when the root filesystem cannot be mounted for reading /etc/passwd; the snapshot is removed
    again on any failure after it was prepared.
    """
    identifiers.validate(config.id)
    options = runtime_options(config)
    image = store.get(client, config.image)
    matcher = config.platform if config.platform is not None else platforms.default()
    snapshotter = resolve_snapshotter(client, config.snapshotter)
    if not is_unpacked(client, image, snapshotter, matcher):
        unpack(client, image, snapshotter, matcher)
    with client.lease():
        _, manifest = resolve_manifest(client, image.target, matcher)
        raw = read_blob(client, manifest.config)
        run = image_config.parse_run_config(raw, manifest.config.media_type)
        parent = chain_id(parse_config(raw, f"config {manifest.config.digest}").diff_ids)
        labels = _labels(run, image.labels, config.labels)
        snapshots.prepare(client, snapshotter, config.id, parent)
        try:
            with mounted_snapshot(client, snapshotter, config.id) as root:
                who = identity(root, run.user)
            spec = build_spec(client.namespace, config, run, who)
            container = api.Container(
                id=config.id,
                labels=labels,
                image=image.name,
                runtime=api.Container.Runtime(name=config.runtime, options=options),
                spec=any_pb2.Any(type_url=SPEC_URL, value=spec_json(spec)),
                snapshotter=snapshotter,
                snapshot_key=config.id,
            )
            return client.call(client.containers.Create, api.CreateContainerRequest(container=container)).container
        except BaseException:
            with contextlib.suppress(errors.CtrpyError):
                snapshots.remove(client, snapshotter, config.id)
            raise


def get_container(client: Client, container_id: str) -> api.Container:
    """The container record; raises NotFound (``container "x": not found``)."""
    return client.call(client.containers.Get, api.GetContainerRequest(id=container_id)).container


def delete_container(client: Client, container: api.Container, *, keep_snapshot: bool = False) -> None:
    """Delete a container record and (unless ``keep_snapshot``) its root filesystem snapshot.

    The caller checks that no task is left (see the CLI's ``containers rm``). A snapshot that
    is already gone is fine; raises what Containers.Delete raises.
    """
    if not keep_snapshot and container.snapshot_key:
        if not container.snapshotter:
            raise errors.InvalidArgument("container.Snapshotter must be set to cleanup rootfs snapshot")
        with contextlib.suppress(errors.NotFound):
            snapshots.remove(client, container.snapshotter, container.snapshot_key)
    client.call(client.containers.Delete, api.DeleteContainerRequest(id=container.id))
