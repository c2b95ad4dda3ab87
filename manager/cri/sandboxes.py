"""Pod sandboxes: the lifecycle behind RunPodSandbox, StopPodSandbox and RemovePodSandbox.

A sandbox is a pause container in the ``k8s.io`` namespace (a container record labelled
``io.cri-containerd.kind=sandbox``, a snapshot on the sandbox image, a task in a shim, all made
through the same stores and task manager as the containerd API, so ``ctr -n k8s.io`` sees them),
a pinned network namespace attached by CNI, and a few files (hostname, hosts, resolv.conf, a
tmpfs for ``/dev/shm``). containerd's order, except that the CNI ADD runs beside the pause
container's creation instead of before it: name reserved, netns, then CNI ADD and (container,
snapshot, task created) at once, then the task started once both are done. A pod whose sysctls
name an interface waits for the ADD first (runc sets them at create). Each step's wall time is
logged at debug level (:mod:`.steptimes`).

Crash consistency: the record (:mod:`.sandbox_store`) lists each step *before* the step is
taken and is written again with what it made. :meth:`Sandboxes.reconcile`, at start-up, undoes
every sandbox still being made (its steps in reverse: task, shm, CNI DEL, netns, snapshot,
container, files, record), finishes stops that were cut short, and removes what no record
claims: pinned netns files, CNI cache entries (DEL, so the IPAM frees the address), sandbox
containers and their snapshots, file directories and shm mounts. So a kill -9 anywhere in
RunPodSandbox leaves nothing after the restart.

A creation runs as its own asyncio task, shielded from the caller: when the kubelet's call
times out and it retries with the same name, the retry waits for the same creation and gets
its id, instead of "name is reserved" until the first one is cleaned up. A finished sandbox of
the same name and config is answered with its id too (what CRI-O does); another config under a
taken name is refused as containerd refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import secrets
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import structlog

from ctrpy import namespaces
from ctrpy.api.containerd.events import container_pb2 as container_events
from ctrpy.api.containerd.events import snapshot_pb2 as snapshot_events
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import AlreadyExists, CtrpyError, InvalidArgument, NotFound
from ctrpy.mount import Mount, mount, unmount_all
from ctrpy.oci.layout import spec_json
from ctrpy.records import AnyValue, Container, Runtime

from .. import failpoints
from ..events import Exchange
from ..metadata.containers import ContainerStore
from ..metadata.db import Database
from ..metadata.snapshots import SnapshotStore
from ..runtime import Stdio
from ..tasks.manager import Task, TaskManager
from . import netns as netns_mod
from . import podspec
from . import userns as userns_mod
from .cni import CNI, DnsConfig, PodNetwork, PodRequest, PortMapping
from .creations import UNCLAIMED_TTL
from .metadataext import metadata_extension
from .sandbox_store import CREATING, READY, STOPPED, SandboxRecord, SandboxStore
from .steptimes import StepTimes

log = structlog.get_logger(__name__)

NAMESPACE = "k8s.io"
KIND_LABEL = "io.cri-containerd.kind"
KIND_SANDBOX = "sandbox"
METADATA_EXTENSION = "io.cri-containerd.sandbox.metadata"
METADATA_URL = "github.com/containerd/cri/pkg/store/sandbox/Metadata"
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
DEFAULT_RUNTIME = "io.containerd.runc.v2"
STOP_TIMEOUT = 30.0
RECONCILE_TIMEOUT = 60.0

# Steps, in the order RunPodSandbox takes them.
STEP_NETNS = "netns"
STEP_CNI = "cni"
STEP_SHM = "shm"
STEP_CONTAINER = "container"
STEP_SNAPSHOT = "snapshot"
STEP_TASK = "task"
#: What StopPodSandbox undoes; RemovePodSandbox undoes the rest.
STOP_STEPS = (STEP_TASK, STEP_SHM, STEP_CNI, STEP_NETNS)


@dataclasses.dataclass(frozen=True)
class SandboxImage:
    """The sandbox image as the pod uses it: name, id, top snapshot and config document."""

    name: str
    id: str
    chain_id: str
    config: Mapping[str, Any]


#: Finds (importing or pulling when needed) the sandbox image in ``k8s.io``.
ImageProvider = Callable[[], Awaitable[SandboxImage]]
#: Called with (container id, sandbox id, CRI event type) for GetContainerEvents, later.
Listener = Callable[[str, str, int], None]
#: Called with a sandbox id before its pause task is killed: the container layer stops the
#: pod's containers there (StopPodSandbox stops them first, as containerd's does).
BeforeStop = Callable[[str], Awaitable[None]]


@dataclasses.dataclass
class _Pending:
    """A RunPodSandbox in flight: its config, its task, and how many callers wait for it."""

    raw: bytes
    job: asyncio.Task[str]
    waiting: int = 0


def sandbox_name(meta: api.PodSandboxMetadata) -> str:
    """The reserved name, as containerd makes it: ``<name>_<namespace>_<uid>_<attempt>``."""
    return f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


def _config_bytes(config: api.PodSandboxConfig) -> bytes:
    return config.SerializeToString(deterministic=True)


class Sandboxes:
    """Every pod sandbox of one ctrpyd. Methods run on the event loop in namespace ``k8s.io``."""

    def __init__(
        self,
        *,
        root: str,
        state: str,
        db: Database,
        containers: ContainerStore,
        snapshots: Mapping[str, SnapshotStore],
        snapshotter: str,
        tasks: TaskManager,
        exchange: Exchange,
        cni: CNI,
        image: ImageProvider,
        runtimes: Mapping[str, str],
        unclaimed_timeout: float = UNCLAIMED_TTL,
    ) -> None:
        self.store = SandboxStore.under(root)
        self.state = state
        self.db, self.containers, self.snapshots = db, containers, snapshots
        self.snapshotter = snapshotter
        self.tasks, self.exchange, self.cni = tasks, exchange, cni
        self.image = image
        self.runtimes = runtimes
        self.listeners: list[Listener] = []
        self.before_stop: list[BeforeStop] = []
        self._creating: dict[str, _Pending] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Sandboxes made after every caller gave up, by id: removed when nobody names them
        # (a retry, or any call with the id) within ``unclaimed_timeout`` seconds.
        self.unclaimed_timeout = unclaimed_timeout
        self._unclaimed: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- helpers ------------------------------------------------------------------------------

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def shm_dir(self, sandbox_id: str) -> str:
        return os.path.join(self.state, "cri", "sandboxes", sandbox_id, "shm")

    async def put(self, record: SandboxRecord) -> SandboxRecord:
        return await asyncio.to_thread(self.store.put, record)

    async def note(self, record: SandboxRecord) -> SandboxRecord:
        """Write a step of a creation, not fsynced (:meth:`RecordDir.put`'s ``durable``): it
        protects against a crash of ctrpyd as the fsynced write does; a power cut takes the
        netns, shm and shim with it, and the start-up reconcile sweeps the container, snapshot
        and CNI entries (fsynced before ADD) that no record claims. Only the finished record is
        fsynced. Eleven fsynced writes were a fifth of a RunPodSandbox on a busy disk. Still in
        a thread: the rename can wait on the filesystem's journal when the disk is busy."""
        return await asyncio.to_thread(self.store.put, record, durable=False)

    def _notify(self, sandbox_id: str, event: int) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):
                listener(sandbox_id, sandbox_id, event)

    def get(self, sandbox_id: str) -> SandboxRecord:
        """The record of ``sandbox_id``, or of the only sandbox whose id starts with it."""
        with contextlib.suppress(NotFound):
            return self._claimed(self.store.get(sandbox_id))
        if sandbox_id:
            found = [r for r in self.store.all() if r.id.startswith(sandbox_id)]
            if len(found) == 1:
                return self._claimed(found[0])
        raise NotFound(f'an error occurred when try to find sandbox "{sandbox_id}"')

    def _claimed(self, record: SandboxRecord) -> SandboxRecord:
        """A caller named the sandbox: it is no longer unclaimed (see :meth:`_created`)."""
        expiry = self._unclaimed.pop(record.id, None)
        if expiry is not None:
            expiry.cancel()
            log.info("a caller claimed a sandbox whose RunPodSandbox it had given up on", id=record.id)
        return record

    def list(self) -> list[SandboxRecord]:
        return [r for r in self.store.all() if r.phase != CREATING]

    def files(self, sandbox_id: str) -> dict[str, str]:
        """Paths of the pod's hostname, hosts and resolv.conf (``podspec.write_files``'s), which
        the pod's containers bind-mount."""
        directory = self.store.files_dir(sandbox_id)
        return {name: os.path.join(directory, name) for name in ("hostname", "hosts", "resolv.conf")}

    @staticmethod
    def config_of(record: SandboxRecord) -> api.PodSandboxConfig:
        """The PodSandboxConfig the sandbox was run with."""
        return api.PodSandboxConfig.FromString(record.config)

    # -- run ----------------------------------------------------------------------------------

    async def run(self, config: api.PodSandboxConfig, runtime_handler: str = "") -> str:
        """RunPodSandbox: make the sandbox (or find the one this retry asked for); its id."""
        meta = config.metadata
        if not meta.name or not meta.namespace or not meta.uid:
            raise InvalidArgument("sandbox config must include metadata with name, namespace and uid")
        check_userns(config)
        runtime = self.runtime_name(runtime_handler)
        name = sandbox_name(meta)
        raw = _config_bytes(config)
        pending = self._creating.get(name)
        if pending is not None:
            if pending.raw != raw:
                raise AlreadyExists(f'failed to reserve sandbox name "{name}": it is being created')
            return await self._wait(pending)
        for record in self.store.all():
            if record.name != name:
                continue
            if record.config == raw and record.phase == READY:
                return self._claimed(record).id  # a retry of a creation that finished meanwhile
            raise AlreadyExists(f'failed to reserve sandbox name "{name}": name "{name}" is reserved for "{record.id}"')
        sandbox_id = secrets.token_hex(32)
        job = asyncio.get_running_loop().create_task(self._create(sandbox_id, name, config, raw, runtime,
                                                                  runtime_handler))
        pending = self._creating[name] = _Pending(raw, job)
        job.add_done_callback(lambda done: self._created(name, pending))
        return await self._wait(pending)

    @staticmethod
    async def _wait(pending: _Pending) -> str:
        pending.waiting += 1
        try:
            return await asyncio.shield(pending.job)
        finally:
            pending.waiting -= 1

    def _created(self, name: str, pending: _Pending) -> None:
        """A creation ended: free the name for the retry logic; a failure that no caller was
        left to hear (the kubelet gave up) is already undone, and logged here. A sandbox made
        after every caller gave up is removed unless someone claims it in time: the retry gets
        its id, but a caller that never comes back must not leave a READY pod (its netns, IP
        and shim) behind. Runs before any waiter resumes: ``waiting`` counts those still there."""
        job = pending.job
        if self._creating.get(name) is pending:
            del self._creating[name]
        if job.cancelled():
            return
        if job.exception() is not None:
            log.info("RunPodSandbox ended with an error", name=name, error=str(job.exception()))
            return
        if pending.waiting == 0:
            sandbox_id = job.result()
            loop = asyncio.get_running_loop()
            self._unclaimed[sandbox_id] = loop.call_later(self.unclaimed_timeout, self._expire, sandbox_id)
            log.info("a sandbox was made after its caller gave up: kept for the retry", id=sandbox_id,
                     seconds=self.unclaimed_timeout)

    def _expire(self, sandbox_id: str) -> None:
        if self._unclaimed.pop(sandbox_id, None) is None:
            return
        log.info("removing a sandbox that no caller claimed", id=sandbox_id)
        job = asyncio.get_running_loop().create_task(self._discard(sandbox_id))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _discard(self, sandbox_id: str) -> None:
        try:
            with namespaces.using(NAMESPACE):
                await self.stop(sandbox_id)
                await self.remove(sandbox_id)
        except (CtrpyError, OSError) as exc:
            log.error("removing an unclaimed sandbox failed", id=sandbox_id, error=str(exc))

    def runtime_name(self, handler: str) -> str:
        if not handler or handler == "runc":
            return DEFAULT_RUNTIME
        if handler in self.runtimes:
            return handler
        raise InvalidArgument(f'no runtime for "{handler}" is configured')

    _runtime = runtime_name  # the name the container layer calls it by

    async def _create(self, sandbox_id: str, name: str, config: api.PodSandboxConfig, raw: bytes,
                      runtime: str, handler: str) -> str:
        record = SandboxRecord(sandbox_id, name, raw, time.time_ns(), runtime_handler=handler,
                               snapshotter=self.snapshotter)
        async with self._lock(sandbox_id):
            record = await self.note(record)
            failpoints.hit(failpoints.SANDBOX_RUN_AFTER_RECORD)
            await failpoints.stall(failpoints.SANDBOX_RUN_AFTER_RECORD)
            try:
                record = await self._make(record, config, runtime)
            except BaseException as exc:
                log.warning("RunPodSandbox failed: undoing", id=sandbox_id, error=str(exc))
                await asyncio.shield(self._undo_quietly(self.store.get(sandbox_id)))
                raise
        self._notify(sandbox_id, api.CONTAINER_CREATED_EVENT)
        self._notify(sandbox_id, api.CONTAINER_STARTED_EVENT)
        return sandbox_id

    async def _undo_quietly(self, record: SandboxRecord) -> None:
        try:
            await self.teardown(record, remove=True, best_effort=True)
        except (CtrpyError, OSError) as exc:
            log.error("undoing a failed sandbox left something behind (reconciled at restart)",
                      id=record.id, error=str(exc))

    async def _make(self, record: SandboxRecord, config: api.PodSandboxConfig, runtime: str) -> SandboxRecord:
        times = StepTimes("RunPodSandbox")
        image = await self.image()
        times.mark("image")
        record = dataclasses.replace(record, image=image.name, image_id=image.id)
        options = config.linux.security_context.namespace_options
        pod_userns = userns_mod.pod_userns(options)
        if pod_userns is not None:
            await asyncio.to_thread(userns_mod.check_traversable, self.state)
        network: asyncio.Future[PodNetwork] | None = None
        if options.network != api.NODE and pod_userns is None:
            # The netns step with its path, in the record before the namespace exists (its
            # undo, like the start-up sweep, takes a path that was never made in its stride).
            path = netns_mod.new_path(self.state)
            record = await self.note(dataclasses.replace(record.with_step(STEP_NETNS), netns=path))
            await asyncio.to_thread(netns_mod.create, self.state, path)
            times.mark("netns")
            failpoints.hit(failpoints.SANDBOX_RUN_AFTER_NETNS)
            record = await self.note(record.with_step(STEP_CNI))
            network = asyncio.ensure_future(times.timed("cni", self._add_network(record, config)))
        try:
            if network is not None and _sysctls_need_interfaces(config):
                await asyncio.wait([network])  # runc sets them at create: the interfaces must exist
                network.result()
            record, task = await self._make_task(record, config, runtime, image, times, pod_userns)
            if network is not None:
                await asyncio.wait([network])
                ips = tuple(ip.ip for ip in network.result().ips())
                record = await self.note(dataclasses.replace(record, ips=ips))
                times.mark("network")
        except BaseException:
            if network is not None:  # the undo's CNI DEL must not race the ADD: let it end first
                await asyncio.wait([network])
                if not network.cancelled():
                    network.exception()  # retrieved; the first error is the one raised
            raise
        assert task.client is not None
        if options.network != api.NODE and pod_userns is not None:
            record = await self._network_from_task(record, config, task.pid)
        pid = await task.client.start()
        times.mark("task_start")
        record = await self.put(dataclasses.replace(record, phase=READY, pid=pid))
        times.mark("ready")
        times.log(id=record.id)
        return record

    async def _add_network(self, record: SandboxRecord, config: api.PodSandboxConfig) -> PodNetwork:
        """CNI ADD of a pod whose netns is pinned and whose record has the CNI step. It runs
        beside :meth:`_make_task` (the pause process needs only the netns path until it starts,
        and containerd's ADD-then-create order would put the plugins' time and runc's end to
        end); it writes no record, so the two never overwrite each other's steps."""
        network = await self.cni.setup(self._pod_request(record, config))
        failpoints.hit(failpoints.SANDBOX_RUN_AFTER_CNI)
        return network

    async def _make_task(self, record: SandboxRecord, config: api.PodSandboxConfig, runtime: str,
                         image: SandboxImage, times: StepTimes, pod_userns: userns_mod.PodUserns | None
                         ) -> tuple[SandboxRecord, Task]:
        """The pod's files and shm, the pause container, its snapshot and its created task.

        The files and the shm mount are made beside the container and snapshot records (files
        on disk, records in the databases: neither waits for the other); the spec needs only
        their paths. Both steps are in the record before either begins, and each undo is
        idempotent, so a crash or failure anywhere leaves nothing the undo misses."""
        options = config.linux.security_context.namespace_options
        files_dir = self.store.files_dir(record.id)
        files = podspec.file_paths(files_dir)
        shm = self.shm_dir(record.id) if options.ipc != api.NODE else ""
        if shm:
            record = dataclasses.replace(record.with_step(STEP_SHM), shm=shm)
        record = await self.note(record.with_step(STEP_CONTAINER))
        made = asyncio.ensure_future(times.timed("files_shm", asyncio.to_thread(_write_files, files_dir, config, shm)))
        try:
            spec = podspec.sandbox_spec(record.id, config, image.config, namespace=NAMESPACE, image=image.name,
                                        netns=record.netns, files=files, shm=shm,
                                        userns=pod_userns.oci() if pod_userns is not None else None)
            container = await self.db.run(self.containers.create, self._container(record, config, spec, runtime))
            times.mark("container")
            self.exchange.publish(NAMESPACE, "/containers/create", container_events.ContainerCreate(
                id=container.id, image=container.image,
                runtime=container_events.ContainerCreate.Runtime(name=container.runtime.name)))
            record = await self.note(record.with_step(STEP_SNAPSHOT))
            store = self._snapshot_store(record)
            mounts, parent = await userns_mod.prepare_rootfs(store, self.db, image.chain_id, pod_userns, record.id,
                                                             os.path.join(self.state, "cri", "mnt"))
            self.exchange.publish(NAMESPACE, "/snapshot/prepare", snapshot_events.SnapshotPrepare(
                key=record.id, parent=parent, snapshotter=store.name))
            times.mark("snapshot")
        finally:
            await asyncio.wait([made])  # the undo must not race the writes (nor leave them unretrieved)
            if not made.cancelled():
                made.exception()
        made.result()
        times.mark("files_shm_wait")
        failpoints.hit(failpoints.SANDBOX_RUN_AFTER_SNAPSHOT)
        record = await self.note(record.with_step(STEP_TASK))
        task = await self.tasks.create(container, mounts, Stdio(), None)
        times.mark("task_create")
        failpoints.hit(failpoints.SANDBOX_RUN_AFTER_TASK_CREATE)
        return record, task

    async def _network_from_task(self, record: SandboxRecord, config: api.PodSandboxConfig,
                                 pid: int) -> SandboxRecord:
        """A user-namespaced pod's network: runc made the namespace in the created pause process
        (see ``netns.pin_from_pid``); pin it, then CNI ADD, before the process starts. The steps
        are recorded first as for other pods, so undo and reconcile are the same."""
        record = await self.put(record.with_step(STEP_NETNS))
        path = await asyncio.to_thread(netns_mod.pin_from_pid, self.state, pid)
        record = await self.put(dataclasses.replace(record, netns=path))
        failpoints.hit(failpoints.SANDBOX_RUN_AFTER_NETNS)
        record = await self.put(record.with_step(STEP_CNI))
        network = await self.cni.setup(self._pod_request(record, config))
        record = await self.put(dataclasses.replace(record, ips=tuple(ip.ip for ip in network.ips())))
        failpoints.hit(failpoints.SANDBOX_RUN_AFTER_CNI)
        return record

    def _pod_request(self, record: SandboxRecord, config: api.PodSandboxConfig | None) -> PodRequest:
        if config is None:
            config = api.PodSandboxConfig.FromString(record.config)
        meta = config.metadata
        ports = tuple(
            PortMapping(p.host_port, p.container_port, api.Protocol.Name(p.protocol).lower(), p.host_ip)
            for p in config.port_mappings
        )
        dns = None
        if config.HasField("dns_config"):
            d = config.dns_config
            dns = DnsConfig(tuple(d.servers), tuple(d.searches), tuple(d.options))
        return PodRequest(record.id, record.netns, meta.namespace, meta.name, meta.uid, ports, dns)

    def _snapshot_store(self, record: SandboxRecord) -> SnapshotStore:
        store = self.snapshots.get(record.snapshotter or self.snapshotter)
        if store is None:
            raise InvalidArgument(f"snapshotter not loaded: {record.snapshotter}")
        return store

    def _container(self, record: SandboxRecord, config: api.PodSandboxConfig, spec: dict[str, Any],
                   runtime: str) -> Container:
        labels = {k: v for k, v in config.labels.items() if v}
        labels[KIND_LABEL] = KIND_SANDBOX
        metadata = {"ID": record.id, "Name": record.name, "NetNSPath": record.netns,
                    "RuntimeHandler": record.runtime_handler}
        return Container(
            id=record.id,
            labels=MappingProxyType(labels),
            image=record.image,
            runtime=Runtime(name=runtime),
            spec=AnyValue(SPEC_URL, spec_json(spec)),
            snapshotter=record.snapshotter,
            snapshot_key=record.id,
            extensions=MappingProxyType({METADATA_EXTENSION: metadata_extension(METADATA_URL, metadata, config)}),
        )

    # -- stop and remove ----------------------------------------------------------------------

    async def stop(self, sandbox_id: str) -> None:
        """StopPodSandbox: kill the pause task, DEL the network, remove the netns. A missing
        sandbox is fine (the CRI asks stop to be idempotent)."""
        try:
            record = self.get(sandbox_id)
        except NotFound:
            return
        async with self._lock(record.id):
            record = self.store.get(record.id)
            if record.phase == CREATING:
                raise InvalidArgument(f'sandbox "{record.id}" is being created')
            await self.stop_steps(record)
            steps = tuple(s for s in record.steps if s not in STOP_STEPS)
            await self.put(dataclasses.replace(record, phase=STOPPED, steps=steps))
        self._notify(record.id, api.CONTAINER_STOPPED_EVENT)

    async def remove(self, sandbox_id: str) -> None:
        """RemovePodSandbox: stop it if it is not, then remove its container, snapshot, files
        and record. A missing sandbox is fine."""
        try:
            record = self.get(sandbox_id)
        except NotFound:
            return
        async with self._lock(record.id):
            record = self.store.get(record.id)
            if record.phase == CREATING:
                raise InvalidArgument(f'sandbox "{record.id}" is being created')
            await self.teardown(record, remove=True)
        self._locks.pop(record.id, None)
        self._notify(record.id, api.CONTAINER_DELETED_EVENT)

    async def stop_steps(self, record: SandboxRecord, *, best_effort: bool = False) -> None:
        """Undo the steps StopPodSandbox undoes, last made first; each one idempotent.

        Strict (StopPodSandbox, as containerd's): a failed CNI DEL fails the stop and keeps the
        netns, so that the retry can DEL again with it. ``best_effort`` (undoing a failed or
        half-made RunPodSandbox): every step is tried, failures are logged, and whatever is
        left (a CNI cache entry, a netns file) is found again by the start-up reconcile."""
        steps = set(record.steps)
        work: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            (f"before-stop hook {n}", functools.partial(hook, record.id)) for n, hook in enumerate(self.before_stop)
        ]
        if STEP_TASK in steps:
            work.append((STEP_TASK, functools.partial(self.kill_task, record.id)))
        if STEP_SHM in steps and record.shm:
            work.append((STEP_SHM, functools.partial(asyncio.to_thread, unmount_shm, record.shm)))
        if STEP_CNI in steps:
            work.append((STEP_CNI, functools.partial(self.cni.teardown, self._pod_request(record, None))))
        if STEP_NETNS in steps and record.netns:
            work.append((STEP_NETNS, functools.partial(asyncio.to_thread, netns_mod.remove, record.netns)))
        for step, undo in work:
            try:
                await undo()
            except (CtrpyError, OSError) as exc:
                if not best_effort:
                    raise
                log.error("undoing a sandbox step failed", id=record.id, step=step, error=str(exc))

    async def teardown(self, record: SandboxRecord, *, remove: bool, best_effort: bool = False) -> None:
        await self.stop_steps(record, best_effort=best_effort)
        if not remove:
            return
        steps = set(record.steps)
        if STEP_SNAPSHOT in steps:
            store = self._snapshot_store(record)
            try:
                await store.remove(record.id)
            except NotFound:
                pass
            else:
                self.exchange.publish(NAMESPACE, "/snapshot/remove",
                                      snapshot_events.SnapshotRemove(key=record.id, snapshotter=store.name))
        if STEP_CONTAINER in steps:
            await self.delete_container(record.id)
        await asyncio.to_thread(self._remove_files, record.id)
        await asyncio.to_thread(self.store.delete, record.id)

    async def delete_container(self, container_id: str) -> None:
        try:
            await self.db.run(self.containers.delete, container_id)
        except NotFound:
            return
        self.exchange.publish(NAMESPACE, "/containers/delete", container_events.ContainerDelete(id=container_id))

    def _remove_files(self, sandbox_id: str) -> None:
        shutil.rmtree(self.store.files_dir(sandbox_id), ignore_errors=True)
        shm_parent = os.path.dirname(self.shm_dir(sandbox_id))
        unmount_shm(self.shm_dir(sandbox_id))
        shutil.rmtree(shm_parent, ignore_errors=True)

    async def kill_task(self, container_id: str) -> None:
        """SIGKILL the pause task, wait for it, delete it (containerd stops a sandbox so)."""
        try:
            task = self.tasks.get(container_id)
        except NotFound:
            return
        if task.client is not None:
            with contextlib.suppress(NotFound):
                await task.client.kill(signal.SIGKILL, all=True)
            with contextlib.suppress(NotFound, TimeoutError):
                await asyncio.wait_for(self.tasks.wait(container_id), STOP_TIMEOUT)
        with contextlib.suppress(NotFound):
            await self.tasks.delete(container_id)

    # -- status -------------------------------------------------------------------------------

    async def ready(self, record: SandboxRecord) -> bool:
        """READY: made, not stopped, and its pause process running."""
        if record.phase != READY:
            return False
        try:
            task = self.tasks.get(record.id)
        except NotFound:
            return False
        if task.client is None:
            return False
        try:
            state = await task.client.state()
        except CtrpyError:
            return False
        return state.status == 2  # RUNNING

    def ready_now(self, record: SandboxRecord) -> bool:
        """READY as memory knows it, for the list calls (the kubelet's PLEG polls them; asking
        every pause shim each time would cost a round trip per pod): made, not stopped, its
        task's shim alive and no exit of its pause process reported (the shim reports it at
        once, as containerd's sandbox status follows its exit events)."""
        if record.phase != READY:
            return False
        try:
            task = self.tasks.get(record.id)
        except NotFound:
            return False
        return task.client is not None and task.dead is None and not task.exit_reported

    def network_closed(self, record: SandboxRecord) -> bool:
        return not record.netns or not netns_mod.is_pinned(record.netns)

    # -- start-up -----------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Reload the records and clean what a crash left (:mod:`.sandbox_reconcile`)."""
        from .sandbox_reconcile import reconcile

        await reconcile(self)


def check_userns(config: api.PodSandboxConfig) -> None:
    """Refuse, before anything is made, a user namespace configuration containerd refuses or
    runc 1.1 cannot run: a user-namespaced pod cannot share the host's network, PID or IPC
    namespace (runc could not mount its /sys, /proc or mqueue there; the kubelet forbids the
    combination too)."""
    options = config.linux.security_context.namespace_options
    if userns_mod.pod_userns(options) is None:
        return
    shared = [kind for kind, mode in (("network", options.network), ("pid", options.pid), ("ipc", options.ipc))
              if mode == api.NODE]
    if shared:
        raise InvalidArgument(f"a pod with a user namespace cannot use the host's {' and '.join(shared)} "
                              "namespace")


def _sysctls_need_interfaces(config: api.PodSandboxConfig) -> bool:
    """Whether a sysctl of the pod names a network interface (``net.ipv4.conf.eth0.*``): runc
    sets it when it creates the pause container, so the CNI ADD must have made the interface."""
    for key in config.linux.sysctls:
        parts = key.replace("/", ".").split(".")
        if len(parts) > 3 and parts[0] == "net" and parts[2] in ("conf", "neigh") and parts[3] not in ("all", "default"):
            return True
    return False



def _write_files(directory: str, config: api.PodSandboxConfig, shm: str) -> None:
    """The pod's hostname, hosts and resolv.conf, and its shm mount when it has one."""
    podspec.write_files(directory, config)
    if shm:
        _mount_shm(shm)


def _mount_shm(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    options = ("nosuid", "nodev", "noexec", "mode=1777", f"size={podspec.DEFAULT_SHM_SIZE}")
    mount(Mount("tmpfs", "shm", options=options), path)


def unmount_shm(path: str) -> None:
    if os.path.exists(path):
        with contextlib.suppress(OSError):
            unmount_all(path, detach=True)
