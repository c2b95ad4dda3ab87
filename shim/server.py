"""The shim's server: ``ctrpy.shim.v1.TaskService`` over ttrpc on the shim's own unix socket.

ttrpc, not gRPC, because there is a shim per container: gRPC's server costs each shim its
threads, megabytes of private memory and milliseconds of start-up (:mod:`ctrpy.ttrpc`). The
servicer is thin: it finds the request's :class:`~ctrpy.shim.task.Task` by its id (a shim may
serve a pod's tasks, :mod:`ctrpy.shim.tasks`), converts the request, calls the task and
converts the answer; the ctrpy.errors kinds it raises become ttrpc statuses in the server.
:func:`serve` is the shim's life: reaper, publisher, tasks, server; write ``address`` and
``shim.pid``; report readiness; serve until the Shutdown of its last task; drain events;
remove the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import any_pb2

from ctrpy import mount as mounts
from ctrpy import ttrpc
from ctrpy.api.containerd.types.runc.options import oci_pb2
from ctrpy.api.containerd.types.task import task_pb2 as task_types
from ctrpy.api.ctrpy.shim.v1 import shim_pb2 as pb
from ctrpy.errors import AlreadyExists, CtrpyError, Unavailable

from . import files
from .config import ShimConfig
from .events import Publisher, pack, timestamp
from .metrics import to_metrics
from .process import Process
from .reaper import Reaper
from .runc import RuntimeConfig
from .states import State
from .stdio import StdioPaths
from .tasks import Tasks

log = logging.getLogger("ctrpy.shim")

VERSION = "ctrpy-shim 0.1.0"
SERVICE = "ctrpy.shim.v1.TaskService"
RUNC_OPTIONS = "containerd.runc.v1.Options"
PROCESS_DETAILS = "containerd.runc.v1.ProcessDetails"
SHUTDOWN_GRACE = 2.0
LISTEN_BACKLOG = 128
EVENT_FLUSH_TIMEOUT = 10.0

R = TypeVar("R")


async def _to_the_end(job: Awaitable[R]) -> R:
    """Run an operation that changes the container to its end even when the caller goes away.

    The ttrpc server cancels a handler whose client disconnects (ctrpyd killed) or whose
    timeout passes (a slow runc on a loaded machine). Cancelled half-way, a create would forget
    a ``runc create`` that still finishes, and a delete would stop between ``runc delete`` and
    the unmount: the container and the shim would disagree. Shielded, the operation completes
    and the shim's state says what runc did, for ctrpyd's next call or its restart.
    """
    task = asyncio.ensure_future(job)
    _finishing.add(task)  # referenced until done, even once the handler is gone
    task.add_done_callback(_finished)
    return await asyncio.shield(task)


_finishing: set[asyncio.Future[Any]] = set()


def _finished(task: asyncio.Future[Any]) -> None:
    _finishing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("operation ended with %r", task.exception())  # the caller, if still there, has it


def runtime_config(config: ShimConfig, options: any_pb2.Any) -> RuntimeConfig:
    """The runtime to use: the shim's defaults, overridden by containerd.runc.v1.Options."""
    log_path = os.path.join(config.bundle, files.RUNC_LOG)
    runtime = RuntimeConfig(config.runtime_binary, config.runtime_root, log_path)
    if not options.type_url.endswith(RUNC_OPTIONS):
        return runtime
    opts = oci_pb2.Options()
    opts.ParseFromString(options.value)
    return RuntimeConfig(
        binary=opts.binary_name or runtime.binary,
        root=os.path.join(opts.root, config.namespace) if opts.root else runtime.root,
        log=log_path,
        systemd_cgroup=opts.systemd_cgroup,
        no_pivot_root=opts.no_pivot_root,
        no_new_keyring=opts.no_new_keyring,
    )


def _state(proc: Process, bundle: str) -> pb.StateResponse:
    response = pb.StateResponse(
        id=proc.container_id,
        exec_id=proc.exec_id,
        bundle=bundle,
        pid=proc.pid,
        status=proc.state.value if proc.state is not State.DELETED else task_types.STOPPED,
        stdin=proc.stdio.stdin,
        stdout=proc.stdio.stdout,
        stderr=proc.stdio.stderr,
        terminal=proc.stdio.terminal,
    )
    if proc.exit is not None:
        response.exit_status = proc.exit.exit_status
        response.exited_at.CopyFrom(timestamp(proc.exit.exited_at_ns))
    return response


class TaskServicer:
    """ctrpy.shim.v1.TaskService over the shim's :class:`Tasks`, each request routed by its id.

    Each method is a ttrpc handler named as the RPC: ``(request, context) -> response``."""

    def __init__(self, tasks: Tasks | None, shutdown: asyncio.Event) -> None:
        self._tasks = tasks  # None while a spare shim waits to be claimed (see listen)
        self.shutdown = shutdown

    @property
    def tasks(self) -> Tasks:
        """The shim's tasks; Unavailable before the shim knows them."""
        if self._tasks is None:
            raise Unavailable("this shim serves no task yet")
        return self._tasks

    @tasks.setter
    def tasks(self, tasks: Tasks) -> None:
        self._tasks = tasks

    async def State(self, request: pb.StateRequest, context: ttrpc.Context) -> pb.StateResponse:
        task = self.tasks.get(request.id)
        return _state(task.process(request.id, request.exec_id), task.config.bundle)

    async def Create(self, request: pb.CreateRequest, context: ttrpc.Context) -> pb.CreateResponse:
        task, added = self.tasks.for_create(request.id, request.bundle)
        if request.bundle and os.path.realpath(request.bundle) != os.path.realpath(task.config.bundle):
            raise CtrpyError(f'bundle "{request.bundle}" is not this shim\'s bundle')
        rootfs = [mounts.Mount(m.type, m.source, m.target, tuple(m.options)) for m in request.rootfs]
        stdio = StdioPaths(request.stdin, request.stdout, request.stderr, request.terminal)
        runtime = runtime_config(task.config, request.options)
        try:
            pid = await _to_the_end(task.create(request.id, rootfs, stdio, runtime))
        except BaseException:
            if added and task.init is None:
                self.tasks.drop(request.id)  # a task the shim never held
            raise
        return pb.CreateResponse(pid=pid, steps=task.steps.to_proto())  # ctrpyd's timeline (steps.py)

    async def Start(self, request: pb.StartRequest, context: ttrpc.Context) -> pb.StartResponse:
        task = self.tasks.get(request.id)
        pid = await _to_the_end(task.start(request.id, request.exec_id))
        steps = task.steps.to_proto() if not request.exec_id else []  # ctrpyd's timeline (steps.py)
        return pb.StartResponse(pid=pid, steps=steps)

    async def Delete(self, request: pb.DeleteRequest, context: ttrpc.Context) -> pb.DeleteResponse:
        info = await _to_the_end(self.tasks.get(request.id).delete(request.id, request.exec_id))
        response = pb.DeleteResponse(pid=info.pid, exit_status=info.exit_status)
        if info.exited_at_ns:
            response.exited_at.CopyFrom(timestamp(info.exited_at_ns))
        return response

    async def Pids(self, request: pb.PidsRequest, context: ttrpc.Context) -> pb.PidsResponse:
        response = pb.PidsResponse()
        for pid, exec_id in await self.tasks.get(request.id).pids(request.id):
            info = response.processes.add(pid=pid)
            if exec_id:
                info.info.CopyFrom(pack(oci_pb2.ProcessDetails(exec_id=exec_id)))
        return response

    async def Pause(self, request: pb.PauseRequest, context: ttrpc.Context) -> pb.PauseResponse:
        await _to_the_end(self.tasks.get(request.id).pause(request.id))
        return pb.PauseResponse()

    async def Resume(self, request: pb.ResumeRequest, context: ttrpc.Context) -> pb.ResumeResponse:
        await _to_the_end(self.tasks.get(request.id).resume(request.id))
        return pb.ResumeResponse()

    async def Kill(self, request: pb.KillRequest, context: ttrpc.Context) -> pb.KillResponse:
        await self.tasks.get(request.id).kill(request.id, request.exec_id, request.signal, request.all)
        return pb.KillResponse()

    async def Exec(self, request: pb.ExecRequest, context: ttrpc.Context) -> pb.ExecResponse:
        stdio = StdioPaths(request.stdin, request.stdout, request.stderr, request.terminal)
        await _to_the_end(self.tasks.get(request.id).exec(request.id, request.exec_id, stdio, request.spec.value))
        return pb.ExecResponse()

    async def ResizePty(self, request: pb.ResizePtyRequest, context: ttrpc.Context) -> pb.ResizePtyResponse:
        self.tasks.get(request.id).resize(request.id, request.exec_id, request.width, request.height)
        return pb.ResizePtyResponse()

    async def CloseIO(self, request: pb.CloseIORequest, context: ttrpc.Context) -> pb.CloseIOResponse:
        if request.stdin:
            self.tasks.get(request.id).close_io(request.id, request.exec_id)
        return pb.CloseIOResponse()

    async def Update(self, request: pb.UpdateRequest, context: ttrpc.Context) -> pb.UpdateResponse:
        await self.tasks.get(request.id).update(request.id, request.resources.value)
        return pb.UpdateResponse()

    async def Wait(self, request: pb.WaitRequest, context: ttrpc.Context) -> pb.WaitResponse:
        info = await self.tasks.get(request.id).wait(request.id, request.exec_id)
        return pb.WaitResponse(exit_status=info.exit_status, exited_at=timestamp(info.exited_at_ns))

    async def Stats(self, request: pb.StatsRequest, context: ttrpc.Context) -> pb.StatsResponse:
        return pb.StatsResponse(stats=to_metrics(await self.tasks.get(request.id).stats(request.id)))

    async def Connect(self, request: pb.ConnectRequest, context: ttrpc.Context) -> pb.ConnectResponse:
        task = self.tasks.find(request.id)
        init = task.init if task is not None else None
        return pb.ConnectResponse(shim_pid=os.getpid(), task_pid=init.pid if init else 0, version=VERSION)

    async def ReopenLog(self, request: pb.ReopenLogRequest, context: ttrpc.Context) -> pb.ReopenLogResponse:
        self.tasks.get(request.id).reopen_log(request.id, request.exec_id)
        return pb.ReopenLogResponse()

    async def Shutdown(self, request: pb.ShutdownRequest, context: ttrpc.Context) -> pb.ShutdownResponse:
        if self.tasks.release(request.id, now=request.now):
            self.shutdown.set()
        return pb.ShutdownResponse()

    def methods(self) -> dict[str, ttrpc.Method]:
        """Every RPC of the service with its request type, for :meth:`ttrpc.Server.register`
        (from the service's descriptor: a method without a handler fails here, at start-up)."""
        service = pb.DESCRIPTOR.services_by_name[SERVICE.rsplit(".", 1)[1]]
        return {
            method.name: ttrpc.Method(getattr(pb, method.input_type.name), getattr(self, method.name))
            for method in service.methods
        }


def claim_socket(path: str) -> None:
    """Make ``path`` bindable: refuse when a server answers there, remove a stale socket file."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOTSOCK):
            raise
        os.unlink(path)
        return
    finally:
        probe.close()
    raise AlreadyExists(f'shim socket "{path}" is in use')


@dataclass
class Listening:
    """What a shim starts before it needs to know its task: the reaper, and the ttrpc server
    with a servicer that gets its tasks later. A spare shim (:mod:`ctrpy.shim.spare`) waits
    like this, on a socket of its own, until a Create claims it."""

    reaper: Reaper
    server: ttrpc.Server
    servicer: TaskServicer


def task_server() -> tuple[ttrpc.Server, TaskServicer]:
    """A ttrpc server for the task service, whose servicer has no tasks yet."""
    servicer = TaskServicer(None, asyncio.Event())
    server = ttrpc.Server()
    server.register(SERVICE, servicer.methods())
    return server, servicer


async def listen(socket_path: str) -> Listening:
    """Start the reaper, and a server on ``socket_path`` whose servicer has no tasks yet."""
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    server, servicer = task_server()
    claim_socket(socket_path)
    await serve_on(server, socket_path)
    return Listening(reaper, server, servicer)


async def serve_on(server: ttrpc.Server, socket_path: str) -> None:
    """Start ``server`` on a new unix socket at ``socket_path`` (removed again if it fails)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(socket_path)
    except BaseException:
        sock.close()
        raise
    try:
        sock.listen(LISTEN_BACKLOG)
        await server.start(sock)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)  # bound by us just now
        raise


async def serve(
    config: ShimConfig, report: Callable[[dict[str, Any]], None], listening: Listening | None = None
) -> None:
    """Run the shim until Shutdown. ``report`` gets ``{"address", "pid"}`` once it serves.
    ``listening`` is a spare's server, already moved to ``config.socket_path``."""
    if listening is None:
        listening = await listen(config.socket_path)
    reaper, server, shutdown = listening.reaper, listening.server, listening.servicer.shutdown
    publisher = Publisher(config.address, config.namespace)
    tasks = Tasks(config, reaper, publisher)
    listening.servicer.tasks = tasks
    try:
        files.write_atomic(os.path.join(config.bundle, files.ADDRESS), config.socket_address)
        files.write_atomic(os.path.join(config.bundle, files.SHIM_PID), str(os.getpid()))
        report({"address": config.socket_address, "pid": os.getpid()})
        await shutdown.wait()
        await server.shutdown(SHUTDOWN_GRACE)
        if not await publisher.flush(EVENT_FLUSH_TIMEOUT):
            log.error("exiting with unpublished events")
    finally:
        await server.shutdown()
        await tasks.close()
        await publisher.close()
        reaper.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.socket_path)
