"""The task manager: which task runs in which shim, and what happens when a shim goes away.

A task is keyed by (namespace, container id). Its shim is the source of truth for process
state; ctrpyd keeps only the client, the bundle, and a watch on the shim's pid (a pidfd on the
event loop). Three ways a task ends:

- Delete: the shim runs ``runc delete``, unmounts, answers with the exit status and publishes
  /tasks/delete; ctrpyd then shuts the shim down and removes the bundle.
- The shim dies (SIGKILL, crash): the pidfd fires, ctrpyd runs ``ctrpy-shim delete`` on the
  bundle (status from the bundle's ``exit`` file, else 255), publishes /tasks/exit unless the
  shim had already reported it, and keeps a *tombstone* so that Get says STOPPED and Delete
  works, as for any stopped task.
- ctrpyd restarts: :meth:`recover` reconnects to every live shim by its bundle's address and
  treats dead ones as above. A shim that was deleting its task when ctrpyd died finishes that
  delete and reports /tasks/delete to the new ctrpyd, which then completes it on its side.

The shims themselves publish the task events (create, start, exit, delete, exec, pause, oom)
to ctrpyd's Events service, in order; ctrpyd publishes only what no shim can: the exit of a
shim that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from ctrpy import namespaces
from ctrpy.api.containerd.events import task_pb2 as task_events
from ctrpy.api.containerd.types.runc.options import oci_pb2
from ctrpy.errors import AlreadyExists, CtrpyError, InvalidArgument, NotFound, Unavailable
from ctrpy.mount import Mount
from ctrpy.records import AnyValue, Container
from ctrpy.shim import files
from ctrpy.shim.files import ExitInfo

from .. import failpoints
from ..events import Envelope, Exchange
from ..runtime import Bundle, ProcessState, ShimClient, ShimLauncher, Stdio, recover
from ..runtime.client import RawAny
from ..timeline import Step, timelines
from . import known

log = structlog.get_logger(__name__)

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
# What the CRI puts on its containers (containerd's keys): the record's kind label, the spec's
# container type and sandbox id annotations.
CRI_KIND_LABEL = "io.cri-containerd.kind"
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
POD_KINDS = ("sandbox", "container")


@dataclass
class Task:
    """One task: a live shim (``client``), or a tombstone (``dead``) after its shim died."""

    namespace: str
    id: str
    bundle: Bundle
    client: ShimClient | None
    stdio: Stdio = field(default_factory=Stdio)
    pid: int = 0
    dead: ExitInfo | None = None
    exit_reported: bool = False
    deleting: bool = False
    pidfd: int | None = None
    buried: asyncio.Event = field(default_factory=asyncio.Event)
    pod: str = ""  # the CRI pod whose shim the task may share ("": a shim of its own)
    runtime_binary: str = ""
    # The init process's state as its shim last told it, and when: (moves, client.changes) at
    # the time; ``moves`` counts the events saying it may have moved since (see .known).
    moves: int = 0
    state: ProcessState | None = None
    state_at: tuple[int, int] = (-1, -1)


def _checked_spec(container: Container) -> tuple[bytes, dict[str, Any]]:
    """The container's OCI spec, as stored and parsed, checked enough that runc is not handed
    nonsense."""
    if container.spec is None:
        raise InvalidArgument(f'container "{container.id}" has no spec')
    try:
        spec = json.loads(container.spec.value)
    except ValueError as exc:
        raise InvalidArgument(f'container "{container.id}": spec is not JSON: {exc}') from None
    if not isinstance(spec, dict):
        raise InvalidArgument(f'container "{container.id}": spec is not a JSON object')
    root = spec.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str) or not root["path"]:
        raise InvalidArgument(f'container "{container.id}": spec has no root.path')
    if not isinstance(spec.get("process"), dict):
        raise InvalidArgument(f'container "{container.id}": spec has no process')
    # Literally here; the shim checks again, resolved inside the mounted rootfs. Imported here:
    # the ctrpy.oci package brings the client and the image model, ~0.7 MiB an idle daemon need not hold.
    from ctrpy.oci.mounts import check_mounts

    check_mounts(container.id, spec.get("mounts"))
    return container.spec.value, spec


class TaskNotFound(NotFound):
    """A container without a task, in containerd's exact words: its tasks service says
    ``task <id> not found`` without the kind suffix the other errors carry."""

    @property
    def message(self) -> str:
        return self.subject


class TaskManager:
    """All tasks of one ctrpyd. Every method runs on the event loop."""

    def __init__(
        self,
        state_dir: Path,
        launcher: ShimLauncher,
        exchange: Exchange,
        runtimes: dict[str, str],
        *,
        shim_per_pod: bool = False,
    ) -> None:
        """``shim_per_pod``: a CRI pod's containers share the shim of its sandbox task
        (``[cri] shim_per_pod``); every other task gets a shim of its own."""
        self.shim_per_pod = shim_per_pod
        self.state_dir = state_dir
        self.launcher = launcher
        self.exchange = exchange
        self.runtimes = runtimes
        self._tasks: dict[tuple[str, str], Task] = {}
        self._creating: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[None]] = set()
        exchange.observers.append(self._observe)

    # --- lookup ---------------------------------------------------------------------------

    def get(self, container_id: str) -> Task:
        """The task of ``container_id`` in the call's namespace; NotFound when there is none.

        A lookup does not validate the id (as containerd, which answers NotFound for an id
        that could never have been created); the words are containerd's."""
        task = self._tasks.get((namespaces.require(), container_id))
        if task is None:
            raise TaskNotFound(f"task {container_id} not found")
        return task

    def live(self, container_id: str) -> tuple[Task, ShimClient]:
        """The task and its shim client; a task whose shim died has finished."""
        task = self.get(container_id)
        if task.client is None:
            raise NotFound(f"process already finished: task {container_id}")
        return task, task.client

    def list(self) -> list[Task]:
        namespace = namespaces.require()
        return [task for (ns, _), task in sorted(self._tasks.items()) if ns == namespace]

    # --- state ----------------------------------------------------------------------------

    def known_state(self, task: Task) -> ProcessState | None:
        """The init process's state without asking its shim, when nothing can have moved it
        since the shim last told it and the shim can answer (see :mod:`.known`); else None."""
        client = task.client
        if client is None or task.state is None or task.state_at != (task.moves, client.changes):
            return None
        if not known.shim_can_answer(client.shim_pid):
            return None  # stopped or stuck: only a call says whether it answers (UNKNOWN if not)
        return task.state

    async def state(self, task: Task, exec_id: str = "") -> ProcessState:
        """A live task's process as Get and List show it: the init process from memory when
        :meth:`known_state` has it, else from the shim within the state deadline (the answer
        kept unless something that may move the process crossed it)."""
        client = task.client
        if client is None:
            raise NotFound(f"process already finished: task {task.id}")
        if not exec_id and (found := self.known_state(task)) is not None:
            return found
        mark = (task.moves, client.changes)
        log.debug("state asked of the shim", ns=task.namespace, id=task.id, exec_id=exec_id)
        state = await client.state(exec_id)
        if not exec_id and mark == (task.moves, client.changes):
            task.state, task.state_at = state, mark
        return state

    # --- creation -------------------------------------------------------------------------

    def runtime_binary(self, container: Container, options: RawAny | None) -> str:
        """The runtime binary: the options' ``binary_name``, else the runtime name's binary."""
        if options is not None and options.type_url.endswith(RUNC_OPTIONS_URL):
            parsed = oci_pb2.Options.FromString(options.value)
            if parsed.binary_name:
                return parsed.binary_name
        binary = self.runtimes.get(container.runtime.name)
        if binary is None:
            raise NotFound(f"runtime {container.runtime.name!r} is not configured")
        return binary

    async def create(
        self,
        container: Container,
        rootfs: Sequence[Mount],
        stdio: Stdio,
        options: AnyValue | None,
    ) -> Task:
        """Write the bundle, start a shim, and create the task in it (``runc create``)."""
        namespace = namespaces.require()
        key = (namespace, container.id)
        if key in self._tasks or key in self._creating:
            raise AlreadyExists(f"task {container.id}")
        self._creating.add(key)
        try:
            spec, parsed = _checked_spec(container)
            raw_options = None
            chosen = options or container.runtime.options
            if chosen is not None:
                raw_options = RawAny(chosen.type_url, chosen.value)
            binary = self.runtime_binary(container, raw_options)
            timelines.begin(namespace, container.id, container.snapshot_key, container.image)  # see ..timeline
            began = time.monotonic_ns()
            pod = _pod_of(parsed) if self.shim_per_pod and container.labels.get(CRI_KIND_LABEL) in POD_KINDS else ""
            bundle = await asyncio.to_thread(Bundle.create, self.state_dir, namespace, container.id, spec)
            failpoints.hit(failpoints.TASKS_CREATE_AFTER_BUNDLE)
            timelines.add(namespace, container.id, [Step("bundle", began, time.monotonic_ns())])
            client: ShimClient | None = None
            pid = 0
            try:
                if sibling := self._pod_shim(namespace, pod, binary):
                    client = self.launcher.join_shim(bundle, sibling)
                    try:
                        pid = await client.create(bundle.path, list(rootfs), stdio, raw_options)
                    except Unavailable:  # the pod's shim is exiting or gone: one of its own, then
                        log.info("pod shim unavailable", id=container.id, pod=pod)
                        await client.close()
                        client = None
                if client is None:
                    shim_began = time.monotonic_ns()
                    client = await self.launcher.start_shim(bundle, runtime_binary=binary)
                    timelines.add(namespace, container.id, [Step("shim start", shim_began, time.monotonic_ns())])
                    pid = await client.create(bundle.path, list(rootfs), stdio, raw_options)
            except BaseException:
                await self._discard(bundle, client)
                raise
            task = Task(namespace, container.id, bundle, client, stdio=stdio, pid=pid, pod=pod,
                        runtime_binary=binary)
            self._tasks[key] = task
            self._watch(task)
            return task
        finally:
            self._creating.discard(key)

    def _pod_shim(self, namespace: str, pod: str, binary: str) -> ShimClient | None:
        """The client of a live shim serving a task of ``pod`` with the same runtime binary
        (the sandbox's first), or None: the task then gets a shim of its own."""
        if not pod:
            return None
        found = [(t.id != pod, t.id, t.client) for t in self._tasks.values()
                 if t.namespace == namespace and t.pod == pod and t.client is not None
                 and t.pidfd is not None and t.client.shim_pid and t.runtime_binary == binary]
        return min(found, key=lambda item: item[:2])[2] if found else None

    async def _discard(self, bundle: Bundle, client: ShimClient | None) -> None:
        """Undo a failed create: stop the shim (or, in a pod's shim, drop the task from it), clean
        the bundle (mounts included)."""
        if client is not None:
            with contextlib.suppress(CtrpyError):
                await client.shutdown(now=True)
            await client.close()
        try:
            await self.launcher.delete_shim(bundle)
        except CtrpyError as exc:
            log.error("cleaning up a failed create", id=bundle.id, error=exc.message)

    async def wait(self, container_id: str, exec_id: str = "") -> ExitInfo:
        """Wait for a process to exit; a shim dying meanwhile ends the wait with its exit.

        No deadline bounds the wait itself, but a shim that does not answer within the call
        deadline when the wait begins (stopped, stuck) fails it with DeadlineExceeded; a wait
        the shim took keeps waiting while the shim is stuck, and completes with the exit the
        shim reports once it runs again (:meth:`ShimClient.wait`). Other calls never wait
        behind it: nothing here is locked.
        """
        task = self.get(container_id)
        if task.client is not None:
            try:
                return await task.client.wait(exec_id)
            except Unavailable:
                if exec_id:
                    raise
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the caller's own cancellation
                # Not ours: the shim died, and _shim_died closed its client under the call.
                if exec_id:
                    raise Unavailable(f"shim of task {container_id} is gone") from None
        await task.buried.wait()
        assert task.dead is not None
        return task.dead

    # --- deletion -------------------------------------------------------------------------

    async def delete(self, container_id: str) -> ExitInfo:
        """Delete a stopped task; its shim exits and its bundle goes."""
        task = self.get(container_id)
        began = time.monotonic_ns()
        if task.client is None:
            await task.buried.wait()  # a shim that just died: its cleanup comes first
            assert task.dead is not None
            self._forget(task)
            timelines.add(task.namespace, task.id, [Step("task delete", began, time.monotonic_ns())])
            self.exchange.publish(
                task.namespace,
                "/tasks/delete",
                task_events.TaskDelete(
                    container_id=task.id, pid=task.dead.pid, exit_status=task.dead.exit_status,
                    exited_at=_timestamp(task.dead.exited_at_ns), id=task.id,
                ),
            )
            return task.dead
        task.deleting = True
        try:
            info = await task.client.delete()
        except NotFound:  # a delete that outlived a ctrpyd crash finished in the shim: finish here
            info = task.bundle.exit() or ExitInfo(task.pid, 255, time.time_ns())
        except BaseException:
            task.deleting = False
            raise
        self._forget(task)
        with contextlib.suppress(CtrpyError):
            await task.client.shutdown()
        await task.client.close()
        await asyncio.to_thread(_remove_bundle, task.bundle)
        timelines.add(task.namespace, task.id, [Step("task delete", began, time.monotonic_ns())])
        return info

    def _forget(self, task: Task) -> None:
        self._tasks.pop((task.namespace, task.id), None)
        if task.pidfd is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(task.pidfd)
                os.close(task.pidfd)
            task.pidfd = None

    # --- shim deaths ----------------------------------------------------------------------

    def _watch(self, task: Task) -> None:
        pid = task.bundle.shim_pid()
        if pid is None:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._spawn(self._shim_died(task))
            return
        task.pidfd = fd
        asyncio.get_running_loop().add_reader(fd, lambda: self._spawn(self._shim_died(task)))

    def _spawn(self, coroutine: object) -> None:
        job = asyncio.ensure_future(coroutine)  # type: ignore[call-overload]
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _shim_died(self, task: Task) -> None:
        if task.pidfd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(task.pidfd)
            os.close(task.pidfd)
            task.pidfd = None
        if self._tasks.get((task.namespace, task.id)) is not task or task.client is None:
            return  # deleted on purpose, or already handled
        log.warning("shim died", ns=task.namespace, id=task.id)
        client, task.client = task.client, None
        await client.close()
        await self._clean_after_shim(task)

    async def _clean_after_shim(self, task: Task) -> None:
        """Run ``ctrpy-shim delete`` for a task whose shim is gone (its client already None),
        then bury it. Until then Get shows the exit that the bundle holds (else 255)."""
        task.dead = task.bundle.exit() or ExitInfo(task.pid, 255, time.time_ns())
        try:
            info = await self.launcher.delete_shim(task.bundle)
        except CtrpyError as exc:
            log.error("cleaning up after a dead shim failed", id=task.id, error=exc.message)
            info = task.dead
        self._bury(task, info)

    def _bury(self, task: Task, info: ExitInfo) -> None:
        """Keep a tombstone for a task whose shim is gone, and report its exit once."""
        task.dead = info
        task.buried.set()
        if not task.exit_reported:
            task.exit_reported = True
            self.exchange.publish(
                task.namespace,
                "/tasks/exit",
                task_events.TaskExit(
                    container_id=task.id, id=task.id, pid=info.pid, exit_status=info.exit_status,
                    exited_at=_timestamp(info.exited_at_ns),
                ),
            )

    def _observe(self, envelope: Envelope) -> None:
        moved = known.moved(envelope)
        if moved is not None and (task := self._tasks.get((envelope.namespace, moved))) is not None:
            task.moves += 1  # the state kept for it may be stale: the next Get or List asks
        if envelope.topic == "/tasks/delete" and envelope.event.type_url.endswith("TaskDelete"):
            try:
                deleted = task_events.TaskDelete.FromString(envelope.event.value)
            except DecodeError:  # Publish is open to any client: a malformed event means nothing
                return
            task = self._tasks.get((envelope.namespace, deleted.container_id))
            if task is not None and task.client is not None and not task.deleting and deleted.pid == task.pid:
                # Not a delete of ours: one asked of the shim before ctrpyd restarted, which
                # the shim has just finished (and is telling the new ctrpyd about).
                self._spawn(self._deleted_by_shim(task, task.client))
            return
        if envelope.topic != "/tasks/exit" or not envelope.event.type_url.endswith("TaskExit"):
            return
        try:
            event = task_events.TaskExit.FromString(envelope.event.value)
        except DecodeError:
            return
        task = self._tasks.get((envelope.namespace, event.container_id))
        if event.id in ("", event.container_id):
            # The exit the event reports, on the timeline's clock (the event itself may reach
            # ctrpyd after the client, released by Wait, has deleted the task).
            exited_ns = event.exited_at.seconds * 1_000_000_000 + event.exited_at.nanos or time.time_ns()
            timelines.exited(envelope.namespace, event.container_id,
                             time.monotonic_ns() - max(0, time.time_ns() - exited_ns))
        if task is not None and event.id in ("", event.container_id) and _reported_by_shim(task, event):
            task.exit_reported = True

    async def _deleted_by_shim(self, task: Task, client: ShimClient) -> None:
        """Finish on ctrpyd's side a delete that the shim finished on its own."""
        try:
            await client.state()
            return  # the task is still there: the event was about something else
        except NotFound:
            pass
        except CtrpyError:
            return  # the shim is going away: its death is handled by the pidfd watch
        if self._tasks.get((task.namespace, task.id)) is not task or task.deleting:
            return
        task.deleting = True
        log.info("task deleted by its shim across a restart", ns=task.namespace, id=task.id)
        self._forget(task)
        with contextlib.suppress(CtrpyError):
            await client.shutdown()
        await client.close()
        try:
            await asyncio.to_thread(_remove_bundle, task.bundle)
        except CtrpyError as exc:
            log.error("bundle left behind", id=task.id, error=exc.message)

    # --- restart --------------------------------------------------------------------------

    async def recover(self) -> None:
        """Find the shims of tasks created before this ctrpyd started.

        A live shim with a task gives that task back. A live shim without one (its create never
        finished, or its task was deleted while ctrpyd was down) is shut down and its bundle
        removed. A dead shim leaves a tombstone with the exit from its bundle (else 255), unless
        its bundle never held a task (no init.pid: the create never got that far), which goes.
        Their exits, now or soon (from shims that queued them while ctrpyd was down), are kept
        for clients that re-subscribe after the restart (``Exchange.replay_exits``).
        """
        binary = self.runtimes.get("io.containerd.runc.v2", "runc")
        found_shims = await recover(self.state_dir, runtime_binary=binary, timeouts=self.launcher.timeouts)
        self.exchange.replay_exits((found.bundle.namespace, found.bundle.id) for found in found_shims)
        for found in found_shims:
            key = (found.bundle.namespace, found.bundle.id)
            if found.client is not None:
                await self._adopt(found.bundle, found.client, found.state)
            elif found.exit is not None and not found.had_task:
                log.info("half-created task cleaned up", ns=key[0], id=key[1])
            elif found.exit is not None:
                task = Task(key[0], key[1], found.bundle, None)
                self._tasks[key] = task
                self._bury(task, found.exit)
                log.info("task's shim was gone", ns=key[0], id=key[1], exit_status=found.exit.exit_status)
            else:
                log.error("task left behind", ns=key[0], id=key[1], error=found.error)

    async def _adopt(self, bundle: Bundle, client: ShimClient, state: ProcessState | None) -> None:
        """Take over the task of a live shim found at start-up, given what it answered about the
        task (None: it holds none; a shim that did not answer counts as dead, see :meth:`recover`)."""
        key = (bundle.namespace, bundle.id)
        if state is None:
            log.info("shim without a task shut down", ns=key[0], id=key[1])
            await self._discard(bundle, client)
            return
        task = Task(key[0], key[1], bundle, client, stdio=state.stdio, pid=state.pid)
        if self.shim_per_pod:
            task.pod, task.runtime_binary = _recorded_pod(bundle)
        # Known from here: nothing moved it since (no event can arrive before ctrpyd serves,
        # and one that arrives later counts in task.moves).
        task.state, task.state_at = state, (task.moves, client.changes)
        self._tasks[key] = task
        self._watch(task)
        log.info("task recovered", ns=key[0], id=key[1], pid=state.pid)

    async def close(self) -> None:
        """Stop watching and close the clients; the shims and their containers keep running."""
        for task in list(self._tasks.values()):
            if task.pidfd is not None:
                with contextlib.suppress(ValueError, OSError):
                    asyncio.get_running_loop().remove_reader(task.pidfd)
                    os.close(task.pidfd)
                task.pidfd = None
            if task.client is not None:
                await task.client.close()
        for job in list(self._background):
            job.cancel()

    def keys(self) -> Iterable[tuple[str, str]]:
        return self._tasks.keys()

    def all(self) -> Sequence[Task]:
        """Every task of every namespace (tombstones included), for the metrics scrape."""
        return list(self._tasks.values())


def _pod_of(spec: Any) -> str:
    """The sandbox id of a CRI container's or sandbox's parsed spec ("" for anything else)."""
    annotations = spec.get("annotations") if isinstance(spec, dict) else None
    if not isinstance(annotations, dict) or annotations.get(CONTAINER_TYPE) not in POD_KINDS:
        return ""
    pod = annotations.get(SANDBOX_ID)
    return pod if isinstance(pod, str) else ""


def _recorded_pod(bundle: Bundle) -> tuple[str, str]:
    """The pod and the runtime binary of a task found at start-up, from its bundle."""
    try:
        pod = _pod_of(json.loads((bundle.path / files.CONFIG).read_bytes()))
    except (OSError, ValueError):
        pod = ""
    runtime = files.read_runtime(bundle.path)
    return pod, runtime.binary if runtime else ""


def _remove_bundle(bundle: Bundle) -> None:
    with contextlib.suppress(FileNotFoundError):
        bundle.remove()


def _reported_by_shim(task: Task, event: task_events.TaskExit) -> bool:
    """Whether a /tasks/exit event is the shim's own report of the task's exit.

    Events.Publish is open to every client, and an exit marked reported is not published
    again when the shim dies: a forged event would hide the real exit. The shim writes the
    exit to the bundle's ``exit`` file before it publishes it, and no client can know the
    exit's time to the nanosecond before it happens: the event must match that file.
    """
    info = task.bundle.exit()
    exited_ns = event.exited_at.seconds * 1_000_000_000 + event.exited_at.nanos
    return (info is not None and info.pid == event.pid and info.exit_status == event.exit_status
            and info.exited_at_ns == exited_ns)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)
