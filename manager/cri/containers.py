"""CRI containers: the lifecycle of a container inside a pod sandbox.

CreateContainer, StartContainer, StopContainer, RemoveContainer, UpdateContainerResources and
ReopenContainerLog, done as containerd's CRI plugin does them (``container_*.go``):

- Create reserves ``<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>``, resolves the image
  in ``k8s.io`` (by reference or id), prepares the container's snapshot on it, builds the OCI
  spec (:mod:`.containerspec`, with the root filesystem mounted read-only to resolve users) and
  stores a containerd container record labelled ``io.cri-containerd.kind=container`` with the
  CRI metadata in its extensions, so ``ctr -n k8s.io containers ls`` shows it. No task yet.
- Start (the sandbox must be ready) creates the task through the task manager with both
  outputs sent to the CRI log file, written by the shim (``ctrpy-crilog://``), and starts it;
  the shim also serves Attach's clients and holds the stdin the config asks for
  (``ctrpy-attach://``, see :mod:`ctrpy.shim.attachproto`).
- A task's exit is recorded (finished at, exit code, reason Completed/Error/OOMKilled) and the
  task is then deleted, as containerd does, so that an exited container costs no shim.
- Stop sends the config's or image's stop signal, waits ``timeout`` seconds, then SIGKILL;
  Stop and Remove of what is stopped or gone succeed (the CRI asks for idempotence).

The record (:mod:`.container_store`) is written beside the containerd container record, and
before the snapshot and spec it names are made, so a half-made container is undone at start-up
(:meth:`Containers.recover`), as is a container record that no record names (the ``creating``
record is not fsynced: a power cut may take it) and a created record whose spec's commit was
lost; a running container whose task died while ctrpyd was down is marked exited with the exit
code its shim left. Create writes the records side by side where the order does not matter
to recovery (each waits on its own fsync): it is a chain of small writes, and each wait used to
add up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import structlog

from ctrpy import namespaces
from ctrpy.api.containerd.events import container_pb2 as container_events
from ctrpy.api.containerd.events import task_pb2 as task_events
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import (
    AlreadyExists,
    CtrpyError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from ctrpy.mount import Mount, mounted, unmount_all
from ctrpy.oci.layout import spec_json
from ctrpy.records import AnyValue, Container, Runtime
from ctrpy.shim.attachproto import uri as attach_uri
from ctrpy.shim.crilog import uri as crilog_uri
from ctrpy.shim.files import ExitInfo, oom_recorded

from .. import failpoints
from ..diff.mounts import readonly_mounts
from ..events import Envelope, Exchange
from ..metadata.containers import ContainerStore as MetaContainers
from ..metadata.db import Database, deferred_sync
from ..metadata.snapshots import SnapshotStore
from ..runtime import Stdio
from ..runtime.bundle import Bundle
from ..tasks.manager import TaskManager
from . import containerspec, userns
from .container_store import CREATED, CREATING, EXITED, RUNNING, ContainerRecord, ContainerStore
from .creations import UNCLAIMED_TTL, Creations
from .metadataext import metadata_extension
from .sandbox_store import READY, SandboxRecord
from .sandboxes import NAMESPACE, Sandboxes
from .steptimes import StepTimes

if TYPE_CHECKING:
    from .images import CriImage, CriImages

log = structlog.get_logger(__name__)

KIND_LABEL = "io.cri-containerd.kind"
#: The spec a container record holds until its own is built (it needs the snapshot).
PLACEHOLDER_SPEC = b"{}"
KIND_CONTAINER = "container"
METADATA_EXTENSION = "io.cri-containerd.container.metadata"
METADATA_URL = "github.com/containerd/cri/pkg/store/container/Metadata"
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

#: containerd's reasons (pkg/cri/server/helpers.go) and the exit code of a failed start.
REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_OOM = "OOMKilled"
REASON_START_ERROR = "StartError"
START_ERROR_EXIT = 128
UNKNOWN_EXIT = 255

#: How long a SIGKILLed container may take to be reported exited before Stop gives up.
KILL_WAIT = 60.0
#: How long an exit's watcher waits for the shim's /tasks/exit event, which follows its
#: /tasks/oom event, before recording the exit without it.
EXIT_EVENT_WAIT = 2.0
RECOVER_TIMEOUT = 10.0

#: Called with (container id, sandbox id, CRI event type) for GetContainerEvents.
Listener = Callable[[str, str, int], None]


def container_name(meta: api.ContainerMetadata, pod: api.PodSandboxMetadata) -> str:
    """The reserved name, as containerd makes it."""
    return f"{meta.name}_{pod.name}_{pod.namespace}_{pod.uid}_{meta.attempt}"


def exit_reason(exit_code: int, oom_killed: bool) -> str:
    if oom_killed:
        return REASON_OOM
    return REASON_COMPLETED if exit_code == 0 else REASON_ERROR


def signal_number(name: str) -> int:
    """``SIGTERM``, ``TERM`` or ``15`` as a number (an unknown name: SIGTERM)."""
    if name.isdigit():
        return int(name)
    wanted = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
    try:
        return int(signal.Signals[wanted])
    except KeyError:
        return int(signal.SIGTERM)


class Containers:
    """Every CRI container of one ctrpyd. Methods run on the event loop in ``k8s.io``."""

    def __init__(
        self,
        *,
        root: str,
        state: str,
        db: Database,
        containers: MetaContainers,
        snapshots: Mapping[str, SnapshotStore],
        snapshotter: str,
        tasks: TaskManager,
        exchange: Exchange,
        sandboxes: Sandboxes,
        images: Callable[[], Awaitable[CriImages]],
        max_log_line_size: int,
        unclaimed_timeout: float = UNCLAIMED_TTL,
    ) -> None:
        self.store = ContainerStore.under(root)
        self.state = state
        self.db, self.meta, self.snapshots = db, containers, snapshots
        self.snapshotter = snapshotter
        self.tasks, self.exchange, self.sandboxes = tasks, exchange, sandboxes
        self.images = images
        self.max_log_line_size = max_log_line_size
        self.listeners: list[Listener] = []
        self._names: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._exit_seen: dict[str, asyncio.Event] = {}
        self._oom: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._creations = Creations("container", lambda gone: self._spawn(self._remove_quietly(gone)),
                                    ttl=unclaimed_timeout)

    def attach(self) -> None:
        """Hook into the event exchange and the sandboxes (once, after :meth:`recover`)."""
        self.exchange.observers.append(self._observe)
        self.sandboxes.before_stop.append(self._stop_pod_containers)
        self.sandboxes.listeners.append(self._sandbox_event)

    # -- helpers ------------------------------------------------------------------------------

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    async def _put(self, record: ContainerRecord, *, durable: bool = True) -> ContainerRecord:
        """Write ``record`` (:meth:`RecordDir.put`). ``durable=False`` for the two writes a power
        cut makes moot: the ``creating`` intent (:meth:`_make`; the start-up sweep of
        :meth:`recover` removes a container that no record names) and the ``running`` mark (a
        power cut takes the task with it; the container is then created again, startable). A
        crash of ctrpyd keeps both, fsynced or not. Two fsyncs each were a tenth of a
        CreateContainer on a busy disk."""
        return await asyncio.to_thread(self.store.put, record, durable=durable)

    def _notify(self, record: ContainerRecord, event: int) -> None:
        for listener in list(self.listeners):
            try:
                listener(record.id, record.sandbox_id, event)
            except Exception as exc:  # a listener's bug must not fail the call
                log.error("container event listener failed", error=str(exc))

    def _spawn(self, coroutine: Any) -> None:
        async def run() -> None:
            with namespaces.using(NAMESPACE):
                await coroutine

        job = asyncio.get_running_loop().create_task(run())
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    def get(self, container_id: str) -> ContainerRecord:
        """The record of ``container_id``, or of the only container whose id starts with it."""
        record = self.store.find(container_id)
        if record is not None and record.phase != CREATING:
            return record
        if container_id:
            found = [r for r in self.list() if r.id.startswith(container_id)]
            if len(found) == 1:
                return found[0]
        raise NotFound(f'an error occurred when try to find container "{container_id}"')

    def list(self) -> list[ContainerRecord]:
        return [r for r in self.store.all() if r.phase != CREATING]

    def snapshot_store(self, record: ContainerRecord) -> SnapshotStore:
        store = self.snapshots.get(record.snapshotter or self.snapshotter)
        if store is None:
            raise InvalidArgument(f"snapshotter not loaded: {record.snapshotter}")
        return store

    @staticmethod
    def config_of(record: ContainerRecord) -> api.ContainerConfig:
        return api.ContainerConfig.FromString(record.config)

    # -- create -------------------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: api.ContainerConfig,
                     sandbox_config: api.PodSandboxConfig | None = None) -> str:
        """CreateContainer: the new container's id. The log directory is the request's pod
        config's (as containerd takes it), else the one the pod was run with."""
        times = StepTimes("CreateContainer")
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox.phase != READY:
            raise FailedPrecondition(f'sandbox "{sandbox.id}" is not ready: cannot create a container in it')
        meta = config.metadata
        if not meta.name:
            raise InvalidArgument("container config must include metadata with a name")
        if not config.image.image:
            raise InvalidArgument("container config must name an image")
        pod = api.PodSandboxConfig.FromString(sandbox.config)
        name = container_name(meta, pod.metadata)
        request = sandbox.id.encode() + b"\0" + config.SerializeToString(deterministic=True)
        retried = await self._creations.retry(name, request)
        if retried is not None:
            return retried  # the kubelet's retry after its deadline: see .creations
        taken = self._names.get(name)
        if taken is not None:
            raise AlreadyExists(f'failed to reserve container name "{name}": name "{name}" is reserved for "{taken}"')
        container_id = secrets.token_hex(32)
        self._names[name] = container_id
        return await self._creations.run(name, request, self._create(container_id, name, sandbox, pod, config,
                                                                       sandbox_config, times))

    async def _create(self, container_id: str, name: str, sandbox: SandboxRecord, pod: api.PodSandboxConfig,
                      config: api.ContainerConfig, sandbox_config: api.PodSandboxConfig | None,
                      times: StepTimes) -> str:
        """The creation itself, a task of its own (see :mod:`.creations`); undone if it fails."""
        try:
            times.mark("checks")
            store = await self.images()
            try:
                image = await store.resolve(config.image.image)
            except NotFound:
                raise NotFound(f'failed to resolve image "{config.image.image}": not found') from None
            times.mark("image")
            log_directory = (sandbox_config.log_directory if sandbox_config is not None else "") or pod.log_directory
            record = self._new_record(container_id, name, sandbox, log_directory, config, image)
            try:
                record = await self._make(record, config, sandbox, pod, image, times)
            except BaseException as exc:
                log.warning("CreateContainer failed: undoing", id=container_id, error=str(exc))
                await asyncio.shield(self._undo_quietly(record))
                raise
        except BaseException:
            self._names.pop(name, None)
            raise
        self._notify(record, api.CONTAINER_CREATED_EVENT)
        return container_id

    def _new_record(self, container_id: str, name: str, sandbox: SandboxRecord, log_directory: str,
                    config: api.ContainerConfig, image: CriImage) -> ContainerRecord:
        tags, digests = image.repo_tags, image.repo_digests
        log_path = ""
        if log_directory and config.log_path:
            log_path = os.path.join(log_directory, config.log_path)
            if not os.path.isabs(log_path):
                raise InvalidArgument(f'container log path "{log_path}" is not absolute')
        info = containerspec.ImageInfo(config.image.image, image.facts.config)
        return ContainerRecord(
            id=container_id, name=name, sandbox_id=sandbox.id,
            config=config.SerializeToString(deterministic=True), created_at_ns=time.time_ns(),
            image=tags[0] if tags else config.image.image, image_id=image.id,
            image_ref=digests[0] if digests else image.id,
            snapshotter=sandbox.snapshotter or self.snapshotter, log_path=log_path,
            stop_signal=containerspec.stop_signal(config, info),
        )  # fmt: skip

    def sandbox_info(self, sandbox: SandboxRecord, pod: api.PodSandboxConfig) -> containerspec.SandboxInfo:
        files = {name: path for name, path in self.sandboxes.files(sandbox.id).items() if os.path.exists(path)}
        return containerspec.SandboxInfo(id=sandbox.id, config=pod, pid=sandbox.pid, netns=sandbox.netns,
                                         files=MappingProxyType(files), shm=sandbox.shm)

    def _target_pid(self, config: api.ContainerConfig) -> int | None:
        options = config.linux.security_context.namespace_options
        if options.pid != api.TARGET or not options.target_id:
            return None
        target = self.store.find(options.target_id)
        return target.pid if target is not None and target.phase == RUNNING else None

    async def _make(self, record: ContainerRecord, config: api.ContainerConfig, sandbox: SandboxRecord,
                    pod: api.PodSandboxConfig, image: CriImage, times: StepTimes) -> ContainerRecord:
        """The container record and the snapshot side by side (the record, committed first,
        keeps the snapshot from the garbage collector, as the sandbox layer does), then the
        spec, which needs the rootfs.

        Our ``creating`` record (the intent) is written beside the container record: a crash
        that leaves the container record without it is swept at start-up (:meth:`recover`),
        one that leaves the intent alone is undone from it."""
        info = containerspec.ImageInfo(config.image.image, image.facts.config)
        runtime = self.sandboxes.runtime_name(sandbox.runtime_handler)
        image_labels = info.run.get("Labels")
        labels = {k: v for k, v in image_labels.items() if v} if isinstance(image_labels, dict) else {}
        labels.update({k: v for k, v in config.labels.items() if v})
        labels[KIND_LABEL] = KIND_CONTAINER
        metadata = {"ID": record.id, "Name": record.name, "SandboxID": record.sandbox_id,
                    "ImageRef": record.image_id, "LogPath": record.log_path, "StopSignal": record.stop_signal}
        container = Container(
            id=record.id, labels=MappingProxyType(labels), image=record.image, runtime=Runtime(name=runtime),
            spec=AnyValue(SPEC_URL, PLACEHOLDER_SPEC), snapshotter=record.snapshotter, snapshot_key=record.id,
            extensions=MappingProxyType({METADATA_EXTENSION: metadata_extension(METADATA_URL, metadata, config)}),
        )  # fmt: skip
        times.mark("labels")
        store = self.snapshot_store(record)
        pod_userns = userns.pod_userns(pod.linux.security_context.namespace_options)
        # The container record and the snapshot's row skip their fsync: the spec's commit
        # below is fsynced before the call answers, and makes them durable with it.
        # The three go side by side. The container record is handed to the database thread
        # (one thread, first come first served) before the snapshot's first lookup, so it is
        # committed before the snapshot's row: the collector never sees the snapshot without
        # the container that holds it, and the snapshot's directories are made meanwhile.
        with deferred_sync():
            outcome = await asyncio.gather(
                asyncio.to_thread(self.store.put, record, durable=False),
                self.db.run(self.meta.create, container),
                userns.prepare_rootfs(store, self.db, image.facts.chain_id, pod_userns, record.id,
                                      os.path.join(self.state, "cri", "mnt")),
                return_exceptions=True)
        for result in outcome:
            if isinstance(result, BaseException):
                raise result  # each is undone by the caller's teardown, whichever were made
        created = cast(Container, outcome[1])
        mounts = cast(tuple[list[Mount], str], outcome[2])[0]
        times.mark("intent_container_snapshot")
        failpoints.hit(failpoints.CRI_CONTAINER_CREATE_AFTER_SNAPSHOT)
        await failpoints.stall(failpoints.CRI_CONTAINER_CREATE_AFTER_SNAPSHOT)
        box = self.sandbox_info(sandbox, pod)
        volumes = os.path.join(self.store.files_dir(record.id), "volumes")
        spec = await asyncio.to_thread(self._spec, record.id, config, box, info, mounts, volumes,
                                       self._target_pid(config))
        if pod_userns is not None:
            await asyncio.to_thread(userns.own_new_volumes, volumes, pod_userns)
        times.mark("spec")
        user = spec.get("process", {}).get("user", {})
        record = dataclasses.replace(
            record, phase=CREATED, uid=int(user.get("uid", 0)), gid=int(user.get("gid", 0)),
            additional_gids=tuple(int(g) for g in user.get("additionalGids") or ()))
        # The spec's commit and the created record's write side by side (each waits on its own
        # fsync): a crash that keeps the record but not the spec leaves a created container
        # whose spec is still the placeholder, which recover() undoes as half-made. Both are
        # awaited whatever happens, so an undo never races a write still in flight.
        outcome = await asyncio.gather(
            self.db.run(self.meta.update, dataclasses.replace(created, spec=AnyValue(SPEC_URL, spec_json(spec))),
                        ["spec"]),
            asyncio.to_thread(self.store.put, record, remember=False), return_exceptions=True)
        updated, written = outcome
        if isinstance(updated, BaseException):
            raise updated
        if isinstance(written, BaseException):
            raise written
        created = updated
        self.store.cache(record)
        self.exchange.publish(NAMESPACE, "/containers/create", container_events.ContainerCreate(
            id=created.id, image=created.image,
            runtime=container_events.ContainerCreate.Runtime(name=created.runtime.name)))
        times.mark("spec_and_record")
        times.log(id=record.id)
        return record

    def _spec(self, container_id: str, config: api.ContainerConfig, box: containerspec.SandboxInfo,
              info: containerspec.ImageInfo, mounts: Sequence[Mount], volumes: str, target_pid: int | None) -> Any:
        """The spec, with the root filesystem mounted read-only meanwhile (users, volumes), or
        read where it lies when it is a single directory (:func:`_fresh_rootfs_dir`)."""
        lone = _fresh_rootfs_dir(mounts)
        if lone is not None:
            return containerspec.container_spec(container_id, config, box, info, lone, namespace=NAMESPACE,
                                                volumes_dir=volumes, target_pid=target_pid)
        parent = os.path.join(self.state, "cri", "mnt")
        os.makedirs(parent, mode=0o700, exist_ok=True)
        target = tempfile.mkdtemp(prefix=f"{container_id[:12]}-", dir=parent)
        try:
            with mounted(readonly_mounts(mounts), target) as rootfs:
                return containerspec.container_spec(container_id, config, box, info, rootfs, namespace=NAMESPACE,
                                                    volumes_dir=volumes, target_pid=target_pid)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(target)

    async def _undo_quietly(self, record: ContainerRecord) -> None:
        try:
            await self._teardown(record)
        except CtrpyError as exc:
            log.error("undoing a failed container left something behind", id=record.id, error=exc.message)

    async def _teardown(self, record: ContainerRecord) -> None:
        """Remove the task, snapshot, container record, files and record; each step idempotent."""
        with contextlib.suppress(NotFound):
            await self.tasks.delete(record.id)
        store = self.snapshot_store(record)
        try:
            await store.remove(record.id)
        except NotFound:
            pass
        try:
            await self.db.run(self.meta.delete, record.id)
        except NotFound:
            pass
        else:
            self.exchange.publish(NAMESPACE, "/containers/delete", container_events.ContainerDelete(id=record.id))
        await asyncio.to_thread(shutil.rmtree, self.store.files_dir(record.id), True)
        await asyncio.to_thread(self.store.delete, record.id)

    # -- start --------------------------------------------------------------------------------

    async def start(self, container_id: str) -> None:
        """StartContainer: create and start the task; the sandbox must be ready. The start runs
        to its end as a task of its own even when the caller gives up (its deadline passed): cut
        in the middle, it would leave a task that no record names and a container that can
        neither start again nor be told running; the kubelet learns the outcome from its lists."""
        record = self.get(container_id)
        job = asyncio.get_running_loop().create_task(self._start(record.id))
        self._background.add(job)  # held while it runs, even when its caller is gone
        job.add_done_callback(self._background.discard)
        job.add_done_callback(_retrieve)
        await asyncio.shield(job)

    async def _start(self, container_id: str) -> None:
        times = StepTimes("StartContainer")
        record = self.store.get(container_id)
        async with self._lock(record.id):
            record = self.store.get(record.id)
            if record.phase != CREATED:
                raise FailedPrecondition(f'container "{record.id}" is in {_state_name(record)} state')
            sandbox = self.sandboxes.get(record.sandbox_id)
            # From memory, as containerd's sandbox store answers it: a State round trip to the
            # pause shim was a millisecond of every start (more when the machine is busy).
            if not self.sandboxes.ready_now(sandbox):
                raise FailedPrecondition(f'sandbox container "{sandbox.id}" is not running')
            times.mark("sandbox_ready")
            config = self.config_of(record)
            # Side by side: one waits on the database thread, the other on the snapshotter's.
            container, mounts = await asyncio.gather(self.db.run(self.meta.get, record.id),
                                                     self.snapshot_store(record).mounts(record.id))
            stdio = self._stdio(record, config)
            times.mark("container_mounts")
            try:
                task = await self.tasks.create(container, mounts, stdio, None)
                times.mark("task_create")
                failpoints.hit(failpoints.CRI_CONTAINER_START_AFTER_TASK_CREATE)
                assert task.client is not None
                try:
                    pid = await task.client.start()
                    times.mark("task_start")
                except BaseException:
                    with contextlib.suppress(CtrpyError):
                        await self.tasks.delete(record.id)
                    raise
            except CtrpyError as exc:
                await self._put(dataclasses.replace(
                    record, phase=EXITED, finished_at_ns=time.time_ns(), exit_code=START_ERROR_EXIT,
                    reason=REASON_START_ERROR, message=exc.message))
                self._exited.setdefault(record.id, asyncio.Event()).set()
                raise
            self._exited[record.id] = asyncio.Event()
            self._exit_seen[record.id] = asyncio.Event()
            record = await self._put(dataclasses.replace(record, phase=RUNNING, pid=pid,
                                                         started_at_ns=time.time_ns()), durable=False)
            self._spawn(self._watch(record.id))
        self._notify(record, api.CONTAINER_STARTED_EVENT)
        times.mark("running")
        times.log(id=record.id)

    def _stdio(self, record: ContainerRecord, config: api.ContainerConfig) -> Stdio:
        # The shim serves Attach's clients (and holds the stdin the config asks for).
        stdin = attach_uri(stdin=config.stdin, stdin_once=config.stdin_once)
        if not record.log_path:
            return Stdio(stdin=stdin, terminal=config.tty)
        target = crilog_uri(record.log_path, self.max_log_line_size)
        return Stdio(stdin=stdin, stdout=target, stderr="" if config.tty else target, terminal=config.tty)

    # -- exits --------------------------------------------------------------------------------

    def _observe(self, envelope: Envelope) -> None:
        """OOM kills and exits that the shims report: an OOM comes before the exit it caused."""
        if envelope.namespace != NAMESPACE:
            return
        if envelope.topic == "/tasks/oom" and envelope.event.type_url.endswith("TaskOOM"):
            oom = task_events.TaskOOM.FromString(envelope.event.value)
            if self.store.find(oom.container_id) is not None:
                self._oom.add(oom.container_id)
        elif envelope.topic == "/tasks/exit" and envelope.event.type_url.endswith("TaskExit"):
            exit_event = task_events.TaskExit.FromString(envelope.event.value)
            if exit_event.id in ("", exit_event.container_id):
                seen = self._exit_seen.get(exit_event.container_id)
                if seen is not None:
                    seen.set()

    async def _watch(self, container_id: str) -> None:
        """Wait for the task's exit, record it, delete the task. A wait that fails (ctrpyd is
        shutting down, the shim is stuck) records nothing: the next start-up looks again."""
        delay = 1.0
        while True:
            try:
                info = await self.tasks.wait(container_id)
                break
            except NotFound:
                info = ExitInfo(0, UNKNOWN_EXIT, time.time_ns())
                break
            except DeadlineExceeded:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except CtrpyError as exc:
                log.info("container exit not watched", id=container_id, error=exc.message)
                return
        seen = self._exit_seen.get(container_id)
        if seen is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.wait(), EXIT_EVENT_WAIT)
        await self._record_exit(container_id, info)

    async def _record_exit(self, container_id: str, info: ExitInfo, message: str = "") -> None:
        async with self._lock(container_id):
            record = self.store.find(container_id)
            if record is None or record.phase != RUNNING:
                return
            # The event, or what the shim wrote (an OOM while ctrpyd was down: its replayed event
            # may come after the exit is recorded, or never if the shim died too; a dead shim's
            # bundle is gone, its exit file read into ``info``).
            oom = container_id in self._oom or info.oom_killed or await asyncio.to_thread(
                oom_recorded, Bundle.at(self.state, NAMESPACE, container_id).path)
            record = await self._put(dataclasses.replace(
                record, phase=EXITED, finished_at_ns=info.exited_at_ns or time.time_ns(),
                exit_code=info.exit_status, oom_killed=oom, reason=exit_reason(info.exit_status, oom),
                message=message))
            self._oom.discard(container_id)
            self._exit_seen.pop(container_id, None)
            with contextlib.suppress(NotFound):
                try:
                    await self.tasks.delete(container_id)
                except CtrpyError as exc:
                    log.warning("deleting an exited container's task failed", id=container_id, error=exc.message)
            self._exited.setdefault(container_id, asyncio.Event()).set()
        self._notify(record, api.CONTAINER_STOPPED_EVENT)

    # -- stop and remove ----------------------------------------------------------------------

    async def stop(self, container_id: str, timeout: float) -> None:
        """StopContainer: the stop signal, ``timeout`` seconds, then SIGKILL. A container that
        is not running, or is gone, is fine."""
        try:
            record = self.get(container_id)
        except NotFound:
            return
        if record.phase != RUNNING:
            return
        exited = self._exited.setdefault(record.id, asyncio.Event())
        if timeout > 0:
            await self._kill(record.id, signal_number(record.stop_signal))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), timeout)
        if not exited.is_set():
            await self._kill(record.id, int(signal.SIGKILL))
            try:
                await asyncio.wait_for(exited.wait(), KILL_WAIT)
            except TimeoutError:
                raise DeadlineExceeded(f'container "{record.id}" did not exit within {KILL_WAIT:g}s of SIGKILL') \
                    from None

    async def _kill(self, container_id: str, signum: int) -> None:
        try:
            _, client = self.tasks.live(container_id)
            await client.kill(signum)
        except NotFound:
            pass  # exited meanwhile: the watcher records it

    async def remove(self, container_id: str) -> None:
        """RemoveContainer: stop it (at once) if it runs, then remove it. Gone is fine."""
        try:
            record = self.get(container_id)
        except NotFound:
            return
        if record.phase == RUNNING:
            await self.stop(record.id, 0)
        async with self._lock(record.id):
            record_now = self.store.find(record.id)
            if record_now is None:
                return
            await self._teardown(record_now)
            self._names.pop(record_now.name, None)
            self._creations.forget(record_now.name)
            self._exited.pop(record.id, None)
        self._locks.pop(record.id, None)
        self._notify(record_now, api.CONTAINER_DELETED_EVENT)

    async def _stop_pod_containers(self, sandbox_id: str) -> None:
        """StopPodSandbox stops the pod's containers first, at once (containerd's timeout 0)."""
        for record in self.list():
            if record.sandbox_id == sandbox_id and record.phase == RUNNING:
                try:
                    await self.stop(record.id, 0)
                except CtrpyError as exc:
                    log.error("stopping a container of a stopping pod failed", id=record.id, error=exc.message)

    def _sandbox_event(self, container_id: str, sandbox_id: str, event: int) -> None:
        """A removed pod takes its containers with it (containerd removes them first; the
        sandbox layer offers no hook before its removal, so here they follow it)."""
        if event == api.CONTAINER_DELETED_EVENT:
            for record in self.list():
                if record.sandbox_id == sandbox_id:
                    self._spawn(self._remove_quietly(record.id))

    async def _remove_quietly(self, container_id: str) -> None:
        try:
            await self.remove(container_id)
        except CtrpyError as exc:
            log.error("removing a container of a removed pod failed", id=container_id, error=exc.message)

    # -- update and logs ----------------------------------------------------------------------

    async def update_resources(self, container_id: str, resources: api.LinuxContainerResources,
                               annotations: Mapping[str, str]) -> None:
        """UpdateContainerResources: into the running task's cgroup through the shim's Update
        (as ``ctr`` does), then into the stored spec (a created container starts with it). As
        containerd, the new values are merged into the spec's and the merged cgroup values are
        sent; a memory limit without a swap limit gets swap equal to it when swap is accounted
        (else runc could not lower the memory+swap limit below the new memory limit)."""
        record = self.get(container_id)
        async with self._lock(record.id):
            record = self.store.get(record.id)
            if record.phase == EXITED:
                raise FailedPrecondition(f'container "{record.id}" is in exited state: cannot update resources')
            container = await self.db.run(self.meta.get, record.id)
            assert container.spec is not None
            spec = json.loads(container.spec.value)
            wanted = oci_resources(resources)
            if resources.memory_limit_in_bytes and not resources.memory_swap_limit_in_bytes \
                    and containerspec.host_facts().swap:
                wanted["memory"]["swap"] = resources.memory_limit_in_bytes
            current = spec.setdefault("linux", {}).setdefault("resources", {})
            for key, value in wanted.items():
                if isinstance(value, dict) and isinstance(current.get(key), dict):
                    current[key].update(value)
                else:
                    current[key] = value
            if resources.oom_score_adj:
                spec.setdefault("process", {})["oomScoreAdj"] = max(0, min(1000, resources.oom_score_adj))
            if record.phase == RUNNING:
                _, client = self.tasks.live(record.id)
                cgroup = {k: current[k] for k in ("cpu", "memory", "hugepageLimits", "unified") if k in current}
                await client.update(json.dumps(cgroup).encode(), annotations)
            await self.db.run(self.meta.update, dataclasses.replace(container, spec=AnyValue(
                SPEC_URL, spec_json(spec))), ["spec"])
            config = self.config_of(record)
            config.linux.resources.CopyFrom(resources)
            await self._put(dataclasses.replace(record, config=config.SerializeToString(deterministic=True)))

    async def reopen_log(self, container_id: str) -> None:
        """ReopenContainerLog: the shim reopens the log file after the kubelet renamed it."""
        record = self.get(container_id)
        if record.phase != RUNNING:
            raise FailedPrecondition("container is not running")
        _, client = self.tasks.live(record.id)
        await client.reopen_log()

    # -- start-up -----------------------------------------------------------------------------

    async def recover(self) -> None:
        """Reload the records and square them with the recovered tasks (see module docstring)."""
        with namespaces.using(NAMESPACE):
            await asyncio.to_thread(self._clean_scratch)
            records = await asyncio.to_thread(self.store.load)
            for record in records:
                try:
                    await asyncio.wait_for(self._recover_one(record), RECOVER_TIMEOUT)
                except (CtrpyError, OSError, TimeoutError) as exc:
                    log.error("container recovery failed", id=record.id, error=str(exc))
                    self._names.setdefault(record.name, record.id)
            try:
                await asyncio.wait_for(self._sweep_strays({r.id for r in records}), RECOVER_TIMEOUT)
            except (CtrpyError, OSError, TimeoutError) as exc:
                log.error("removing containers without a record failed", error=str(exc))

    async def _sweep_strays(self, known: set[str]) -> None:
        """CRI containers that no record names: their ``creating`` intent, written without an
        fsync (:meth:`_put`), was lost to a power cut. Their task, snapshot and files go."""
        found = await self.db.run(self.meta.list, [f'labels."{KIND_LABEL}"=={KIND_CONTAINER}'])
        for container in found:
            if container.id in known:
                continue
            log.info("container without a record removed", id=container.id)
            await self._discard_task(container.id)
            store = self.snapshots.get(container.snapshotter)
            if store is not None and container.snapshot_key:
                with contextlib.suppress(NotFound):
                    await store.remove(container.snapshot_key)
            with contextlib.suppress(NotFound):
                await self.db.run(self.meta.delete, container.id)
            await asyncio.to_thread(shutil.rmtree, self.store.files_dir(container.id), True)

    def _clean_scratch(self) -> None:
        """What a crash left of calls in flight: root filesystems mounted to build a spec, and
        ExecSync's FIFOs."""
        scratch = os.path.join(self.state, "cri", "mnt")
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(scratch):
                path = os.path.join(scratch, name)
                with contextlib.suppress(OSError):
                    unmount_all(path, detach=True)
                    os.rmdir(path)
        shutil.rmtree(os.path.join(self.state, "cri", "exec"), ignore_errors=True)

    async def _recover_one(self, record: ContainerRecord) -> None:
        if record.phase == CREATING or (record.phase == CREATED and not await self._has_spec(record.id)):
            log.info("half-made container undone", id=record.id)
            await self._teardown(record)
            return
        self._names[record.name] = record.id
        if record.phase == EXITED:
            self._exited.setdefault(record.id, asyncio.Event()).set()
            return
        try:
            task = self.tasks.get(record.id)
        except NotFound:
            task = None
        if record.phase == CREATED:
            if task is not None:  # a start cut short by the crash: back to created
                await self._discard_task(record.id)
            return
        # RUNNING
        if task is None:
            await self._put(dataclasses.replace(
                record, phase=EXITED, finished_at_ns=time.time_ns(), exit_code=UNKNOWN_EXIT, reason=REASON_ERROR,
                message="the container's task was gone after a restart"))
            self._exited.setdefault(record.id, asyncio.Event()).set()
            return
        self._exited[record.id] = asyncio.Event()
        self._exit_seen[record.id] = asyncio.Event()
        if task.client is None and task.dead is not None:
            await self._record_exit(record.id, task.dead)
            return
        self._spawn(self._watch(record.id))

    async def _has_spec(self, container_id: str) -> bool:
        """Whether the container record holds its spec, not the placeholder it is created with
        (see the end of :meth:`_make`)."""
        try:
            container = await self.db.run(self.meta.get, container_id)
        except NotFound:
            return False
        return container.spec is not None and container.spec.value != PLACEHOLDER_SPEC

    async def _discard_task(self, container_id: str) -> None:
        with contextlib.suppress(NotFound):
            _, client = self.tasks.live(container_id)
            with contextlib.suppress(NotFound):
                await client.kill(int(signal.SIGKILL), all=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tasks.wait(container_id), KILL_WAIT)
        with contextlib.suppress(NotFound):
            await self.tasks.delete(container_id)


#: Overlay options that do not change what a single lower layer shows when read.
_PLAIN_OVERLAY_OPTIONS = frozenset({"index=off", "userxattr", "rw", "ro"})


def _fresh_rootfs_dir(mounts: Sequence[Mount]) -> str | None:
    """The one directory a root filesystem just prepared shows, when there is one: an overlay
    of a single lower layer whose upper directory is still empty (nothing ran in it yet), or a
    lone bind mount. Building the spec only reads it (users, groups, image volumes to copy), so
    it needs no mount then: a mount, an unmount and a scratch directory less per create. Any
    other option (an id-mapped layer, several layers) takes the mount."""
    if len(mounts) != 1:
        return None
    only = mounts[0]
    if only.type == "bind" and not only.target:
        return only.source
    if only.type != "overlay" or only.target:
        return None
    dirs: dict[str, str] = {}
    for option in only.options:
        name, _, value = option.partition("=")
        if name in ("lowerdir", "upperdir", "workdir"):
            dirs[name] = value
        elif option not in _PLAIN_OVERLAY_OPTIONS:
            return None
    lower, upper = dirs.get("lowerdir", ""), dirs.get("upperdir", "")
    if not lower or ":" in lower or not upper:
        return None
    try:
        if os.listdir(upper):
            return None
    except OSError:
        return None
    return lower


def _retrieve(job: asyncio.Task[None]) -> None:
    """Take a start's failure off the task (its caller, if still there, gets it too; the
    container records it), so that a start whose caller left logs it once."""
    if not job.cancelled() and job.exception() is not None:
        log.info("StartContainer failed", error=str(job.exception()))


def _state_name(record: ContainerRecord) -> str:
    return {CREATED: "CONTAINER_CREATED", RUNNING: "CONTAINER_RUNNING", EXITED: "CONTAINER_EXITED"}.get(
        record.phase, "CONTAINER_UNKNOWN")


def oci_resources(resources: api.LinuxContainerResources) -> dict[str, Any]:
    """The OCI LinuxResources of an update: only what the request sets (containerd's
    ``toOCIResources``; an absent value leaves the current one)."""
    out: dict[str, Any] = {}
    if cpu := containerspec.cpu_resources(resources):
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if resources.memory_limit_in_bytes:
        memory["limit"] = resources.memory_limit_in_bytes
    if resources.memory_swap_limit_in_bytes:
        memory["swap"] = resources.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if resources.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in resources.hugepage_limits]
    if resources.unified:
        out["unified"] = dict(resources.unified)
    return out

