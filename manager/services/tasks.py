"""containerd.services.tasks.v1.Tasks: the running side of containers, through the shims.

A shim that stops answering (stopped, stuck in the kernel, swapped out) holds up only the calls
about its own task, each for at most its deadline (``[shim]`` in the configuration): List and Get
show its task as containerd does, status UNKNOWN and pid 0, after the short state deadline;
the calls that act on it fail with DeadlineExceeded naming the shim. List and Get answer an
init process's state from memory while nothing can have moved it since its shim last told it
(ctrpy.manager.tasks.known), and ask the shim otherwise: a listing of many running tasks makes
no round trip. List asks the shims it must (and Metrics all shims) at once, so a stuck one
costs one deadline, not one per task after it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog
from google.protobuf import empty_pb2, timestamp_pb2

from ctrpy import filters, identifiers
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2 as api
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2_grpc as api_grpc
from ctrpy.api.containerd.types.runc.options import oci_pb2
from ctrpy.api.containerd.types.task import task_pb2
from ctrpy.errors import CtrpyError, DeadlineExceeded, InvalidArgument, NotFound
from ctrpy.manager.metadata.containers import ContainerStore
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.runtime import ProcessState, ShimClient, Stdio
from ctrpy.manager.tasks.manager import Task, TaskManager
from ctrpy.shim.files import ExitInfo

from . import convert

PROCESS_DETAILS_URL = "containerd.runc.v1.ProcessDetails"

log = structlog.get_logger(__name__)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp | None:
    if not ns:
        return None
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


# Go's zero time.Time: containerd's Get and List always set a process's exited_at, to this
# while it has not exited.
GO_ZERO_TIME = timestamp_pb2.Timestamp(seconds=-62135596800)


def _exited_at(ns: int) -> timestamp_pb2.Timestamp:
    return _timestamp(ns) or GO_ZERO_TIME


def _delete_response(info: ExitInfo, exec_id: str = "") -> api.DeleteResponse:
    return api.DeleteResponse(
        id=exec_id, pid=info.pid, exit_status=info.exit_status, exited_at=_timestamp(info.exited_at_ns)
    )


def _shown(state: ProcessState, process_id: str) -> task_pb2.Process:
    """A live process as Get and List show it (see :meth:`TasksServicer._process`)."""
    return task_pb2.Process(
        id=process_id,
        pid=state.pid,
        status=state.status,  # type: ignore[arg-type]
        stdin=state.stdio.stdin,
        stdout=state.stdio.stdout,
        stderr=state.stdio.stderr,
        terminal=state.stdio.terminal,
        exit_status=state.exit_status,
        exited_at=_exited_at(state.exited_at_ns),
    )


def _tombstone(task: Task) -> task_pb2.Process:
    """The init process of a task whose shim is gone: stopped, with the exit kept for it."""
    assert task.dead is not None
    return task_pb2.Process(
        id=task.id, pid=task.dead.pid, status=task_pb2.STOPPED,
        exit_status=task.dead.exit_status, exited_at=_exited_at(task.dead.exited_at_ns),
    )  # fmt: skip


class TasksServicer(api_grpc.TasksServicer):
    def __init__(self, db: Database, containers: ContainerStore, tasks: TaskManager) -> None:
        self.db, self.containers, self.tasks = db, containers, tasks

    async def _task(self, container_id: str) -> Task:
        """The task of ``container_id``; NotFound in containerd's words, which name a missing
        container (it looks the container up first) apart from a container without a task."""
        try:
            return self.tasks.get(container_id)
        except NotFound:
            await self.db.run(self.containers.get, container_id)
            raise

    async def _live(self, container_id: str) -> ShimClient:
        """The shim client of ``container_id``'s task (NotFound as :meth:`_task`)."""
        await self._task(container_id)
        return self.tasks.live(container_id)[1]

    def _known(self, task: Task) -> task_pb2.Process | None:
        """The task's init process as :meth:`_process` shows it, when that needs no call to
        its shim (a tombstone, or a state the task manager knows); else None."""
        if task.client is None:
            return _tombstone(task)
        state = self.tasks.known_state(task)
        return None if state is None else _shown(state, task.id)

    async def _process(self, task: Task, exec_id: str = "") -> task_pb2.Process:
        """A process as Get and List show it: the shim's state (the init process's from
        memory while nothing can have moved it, see ctrpy.manager.tasks.known), or the
        tombstone's exit.

        As containerd's: ``container_id`` is left empty and ``exited_at`` always set (Go's zero
        time until the process exits); ctrpy's CLI reads neither."""
        if task.client is None:
            return _tombstone(task)
        try:
            state = await self.tasks.state(task, exec_id)
        except DeadlineExceeded as exc:
            if exec_id:
                raise  # only the shim knows whether that exec process exists
            log.warning("shim not answering; task shown as UNKNOWN", ns=task.namespace, id=task.id, error=exc.message)
            return task_pb2.Process(id=task.id, exited_at=GO_ZERO_TIME)  # containerd's: UNKNOWN, pid 0
        return _shown(state, exec_id or task.id)

    async def Create(self, request: api.CreateTaskRequest, context: object) -> api.CreateTaskResponse:
        if request.HasField("checkpoint") and request.checkpoint.digest:
            raise NotImplementedError("restoring from a checkpoint needs CRIU, which ctrpy does not support")
        container = await self.db.run(self.containers.get, request.container_id)
        task = await self.tasks.create(
            container,
            [convert.mount_from_proto(m) for m in request.rootfs],
            Stdio(request.stdin, request.stdout, request.stderr, request.terminal),
            convert.any_from_proto(request.options, request.HasField("options")),
        )
        return api.CreateTaskResponse(container_id=task.id, pid=task.pid)

    async def Start(self, request: api.StartRequest, context: object) -> api.StartResponse:
        client = await self._live(request.container_id)
        return api.StartResponse(pid=await client.start(request.exec_id))

    async def Delete(self, request: api.DeleteTaskRequest, context: object) -> api.DeleteResponse:
        await self._task(request.container_id)
        return _delete_response(await self.tasks.delete(request.container_id))

    async def DeleteProcess(self, request: api.DeleteProcessRequest, context: object) -> api.DeleteResponse:
        client = await self._live(request.container_id)  # containerd looks the task up first
        if not request.exec_id:
            raise InvalidArgument("exec id must be set: delete the init process with Delete")
        return _delete_response(await client.delete(request.exec_id), request.exec_id)

    async def Get(self, request: api.GetRequest, context: object) -> api.GetResponse:
        task = await self._task(request.container_id)
        return api.GetResponse(process=await self._process(task, request.exec_id))

    async def List(self, request: api.ListTasksRequest, context: object) -> api.ListTasksResponse:
        match = filters.parse_all([request.filter] if request.filter else [])
        chosen = [t for t in self.tasks.list() if match.match(filters.adaptor_from_fields({"id": t.id}))]
        # From memory where it can be; the shims of the others are asked all at once.
        shown = [self._known(task) for task in chosen]
        asked = [task for task, process in zip(chosen, shown, strict=True) if process is None]
        answers = iter(await asyncio.gather(*(self._process(task) for task in asked), return_exceptions=True))
        processes = []
        for process in shown:
            found = process if process is not None else next(answers)
            if isinstance(found, CtrpyError):
                continue  # deleted or gone while listing
            if isinstance(found, BaseException):
                raise found
            processes.append(found)
        return api.ListTasksResponse(tasks=processes)

    async def Kill(self, request: api.KillRequest, context: object) -> empty_pb2.Empty:
        client = await self._live(request.container_id)
        await client.kill(request.signal, exec_id=request.exec_id, all=request.all)
        return empty_pb2.Empty()

    async def Exec(self, request: api.ExecProcessRequest, context: object) -> empty_pb2.Empty:
        # containerd's order: an empty exec id, then the task, then the id's syntax.
        if not request.exec_id:
            raise InvalidArgument("exec id cannot be empty")
        client = await self._live(request.container_id)
        identifiers.validate(request.exec_id)
        if not request.HasField("spec"):
            raise InvalidArgument("exec spec must be set")
        stdio = Stdio(request.stdin, request.stdout, request.stderr, request.terminal)
        await client.exec(request.exec_id, stdio, request.spec.value)
        return empty_pb2.Empty()

    async def ResizePty(self, request: api.ResizePtyRequest, context: object) -> empty_pb2.Empty:
        client = await self._live(request.container_id)
        await client.resize_pty(request.width, request.height, request.exec_id)
        return empty_pb2.Empty()

    async def CloseIO(self, request: api.CloseIORequest, context: object) -> empty_pb2.Empty:
        client = await self._live(request.container_id)
        if request.stdin:
            await client.close_io(request.exec_id)
        return empty_pb2.Empty()

    async def Pause(self, request: api.PauseTaskRequest, context: object) -> empty_pb2.Empty:
        client = await self._live(request.container_id)
        await client.pause()
        return empty_pb2.Empty()

    async def Resume(self, request: api.ResumeTaskRequest, context: object) -> empty_pb2.Empty:
        client = await self._live(request.container_id)
        await client.resume()
        return empty_pb2.Empty()

    async def ListPids(self, request: api.ListPidsRequest, context: object) -> api.ListPidsResponse:
        client = await self._live(request.container_id)
        response = api.ListPidsResponse()
        for entry in await client.pids():
            info = response.processes.add(pid=entry.pid)
            if entry.exec_id:
                info.info.type_url = PROCESS_DETAILS_URL
                info.info.value = oci_pb2.ProcessDetails(exec_id=entry.exec_id).SerializeToString()
        return response

    async def Checkpoint(
        self, request: api.CheckpointTaskRequest, context: object
    ) -> api.CheckpointTaskResponse:
        await self._task(request.container_id)
        raise NotImplementedError("checkpoint needs CRIU, which ctrpy does not support")

    async def Update(self, request: api.UpdateTaskRequest, context: object) -> empty_pb2.Empty:
        client = await self._live(request.container_id)
        if not request.HasField("resources"):
            raise InvalidArgument("resources must be set")
        await client.update(request.resources.value, dict(request.annotations))
        return empty_pb2.Empty()

    async def Metrics(self, request: api.MetricsRequest, context: object) -> api.MetricsResponse:
        match = filters.parse_all(request.filters)
        response = api.MetricsResponse()
        chosen = [
            (task.id, task.client) for task in self.tasks.list()
            if task.client is not None and match.match(filters.adaptor_from_fields({"id": task.id}))
        ]  # fmt: skip
        found = await asyncio.gather(*(client.stats() for _, client in chosen), return_exceptions=True)
        for (task_id, _), stats in zip(chosen, found, strict=True):
            if isinstance(stats, CtrpyError):
                continue  # gone, or stuck past the call deadline
            if isinstance(stats, BaseException):
                raise stats
            metric = response.metrics.add(id=task_id, timestamp=convert.datetime_to_timestamp(datetime.now(UTC)))
            metric.data.type_url = stats.type_url
            metric.data.value = stats.value
        return response

    async def Wait(self, request: api.WaitRequest, context: object) -> api.WaitResponse:
        await self._task(request.container_id)
        info = await self.tasks.wait(request.container_id, request.exec_id)
        return api.WaitResponse(exit_status=info.exit_status, exited_at=_timestamp(info.exited_at_ns))

