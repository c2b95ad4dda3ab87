"""containerd.services.tasks.v1.Tasks: the running side of containers, through the shims."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import empty_pb2, timestamp_pb2

from ctrpy import filters, identifiers
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2 as api
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2_grpc as api_grpc
from ctrpy.api.containerd.types.runc.options import oci_pb2
from ctrpy.api.containerd.types.task import task_pb2
from ctrpy.errors import CtrpyError, InvalidArgument
from ctrpy.manager.metadata.containers import ContainerStore
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.runtime import Stdio
from ctrpy.manager.tasks.manager import Task, TaskManager
from ctrpy.shim.files import ExitInfo

from . import convert

PROCESS_DETAILS_URL = "containerd.runc.v1.ProcessDetails"


def _timestamp(ns: int) -> timestamp_pb2.Timestamp | None:
    if not ns:
        return None
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _delete_response(info: ExitInfo, exec_id: str = "") -> api.DeleteResponse:
    return api.DeleteResponse(
        id=exec_id, pid=info.pid, exit_status=info.exit_status, exited_at=_timestamp(info.exited_at_ns)
    )


class TasksServicer(api_grpc.TasksServicer):
    def __init__(self, db: Database, containers: ContainerStore, tasks: TaskManager) -> None:
        self.db, self.containers, self.tasks = db, containers, tasks

    async def _process(self, task: Task, exec_id: str = "") -> task_pb2.Process:
        """A process as Get and List show it: the shim's state, or the tombstone's exit."""
        if task.client is None:
            assert task.dead is not None
            return task_pb2.Process(
                container_id=task.id, id=task.id, pid=task.dead.pid, status=task_pb2.STOPPED,
                exit_status=task.dead.exit_status, exited_at=_timestamp(task.dead.exited_at_ns),
            )  # fmt: skip
        state = await task.client.state(exec_id)
        return task_pb2.Process(
            container_id=task.id,
            id=exec_id or task.id,
            pid=state.pid,
            status=state.status,  # type: ignore[arg-type]
            stdin=state.stdio.stdin,
            stdout=state.stdio.stdout,
            stderr=state.stdio.stderr,
            terminal=state.stdio.terminal,
            exit_status=state.exit_status,
            exited_at=_timestamp(state.exited_at_ns),
        )

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
        _, client = self.tasks.live(request.container_id)
        return api.StartResponse(pid=await client.start(request.exec_id))

    async def Delete(self, request: api.DeleteTaskRequest, context: object) -> api.DeleteResponse:
        return _delete_response(await self.tasks.delete(request.container_id))

    async def DeleteProcess(self, request: api.DeleteProcessRequest, context: object) -> api.DeleteResponse:
        if not request.exec_id:
            raise InvalidArgument("exec id must be set: delete the init process with Delete")
        _, client = self.tasks.live(request.container_id)
        return _delete_response(await client.delete(request.exec_id), request.exec_id)

    async def Get(self, request: api.GetRequest, context: object) -> api.GetResponse:
        task = self.tasks.get(request.container_id)
        return api.GetResponse(process=await self._process(task, request.exec_id))

    async def List(self, request: api.ListTasksRequest, context: object) -> api.ListTasksResponse:
        match = filters.parse_all([request.filter] if request.filter else [])
        processes = []
        for task in self.tasks.list():
            if not match.match(filters.adaptor_from_fields({"id": task.id})):
                continue
            try:
                processes.append(await self._process(task))
            except CtrpyError:
                continue  # deleted or gone while listing
        return api.ListTasksResponse(tasks=processes)

    async def Kill(self, request: api.KillRequest, context: object) -> empty_pb2.Empty:
        _, client = self.tasks.live(request.container_id)
        await client.kill(request.signal, exec_id=request.exec_id, all=request.all)
        return empty_pb2.Empty()

    async def Exec(self, request: api.ExecProcessRequest, context: object) -> empty_pb2.Empty:
        identifiers.validate(request.exec_id)
        if not request.HasField("spec"):
            raise InvalidArgument("exec spec must be set")
        _, client = self.tasks.live(request.container_id)
        stdio = Stdio(request.stdin, request.stdout, request.stderr, request.terminal)
        await client.exec(request.exec_id, stdio, request.spec.value)
        return empty_pb2.Empty()

    async def ResizePty(self, request: api.ResizePtyRequest, context: object) -> empty_pb2.Empty:
        _, client = self.tasks.live(request.container_id)
        await client.resize_pty(request.width, request.height, request.exec_id)
        return empty_pb2.Empty()

    async def CloseIO(self, request: api.CloseIORequest, context: object) -> empty_pb2.Empty:
        _, client = self.tasks.live(request.container_id)
        if request.stdin:
            await client.close_io(request.exec_id)
        return empty_pb2.Empty()

    async def Pause(self, request: api.PauseTaskRequest, context: object) -> empty_pb2.Empty:
        _, client = self.tasks.live(request.container_id)
        await client.pause()
        return empty_pb2.Empty()

    async def Resume(self, request: api.ResumeTaskRequest, context: object) -> empty_pb2.Empty:
        _, client = self.tasks.live(request.container_id)
        await client.resume()
        return empty_pb2.Empty()

    async def ListPids(self, request: api.ListPidsRequest, context: object) -> api.ListPidsResponse:
        _, client = self.tasks.live(request.container_id)
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
        raise NotImplementedError("checkpoint needs CRIU, which ctrpy does not support")

    async def Update(self, request: api.UpdateTaskRequest, context: object) -> empty_pb2.Empty:
        if not request.HasField("resources"):
            raise InvalidArgument("resources must be set")
        _, client = self.tasks.live(request.container_id)
        await client.update(request.resources.value, dict(request.annotations))
        return empty_pb2.Empty()

    async def Metrics(self, request: api.MetricsRequest, context: object) -> api.MetricsResponse:
        match = filters.parse_all(request.filters)
        response = api.MetricsResponse()
        for task in self.tasks.list():
            if task.client is None or not match.match(filters.adaptor_from_fields({"id": task.id})):
                continue
            try:
                stats = await task.client.stats()
            except CtrpyError:
                continue
            metric = response.metrics.add(id=task.id, timestamp=convert.datetime_to_timestamp(datetime.now(UTC)))
            metric.data.type_url = stats.type_url
            metric.data.value = stats.value
        return response

    async def Wait(self, request: api.WaitRequest, context: object) -> api.WaitResponse:
        info = await self.tasks.wait(request.container_id, request.exec_id)
        return api.WaitResponse(exit_status=info.exit_status, exited_at=_timestamp(info.exited_at_ns))

