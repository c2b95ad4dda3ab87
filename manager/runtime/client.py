"""ctrpyd's client for one shim: ``ctrpy.shim.v1.TaskService`` over ttrpc on the shim's unix socket.

ttrpc, containerd's protocol for its shims, rather than gRPC: a shim is one per container, and a
gRPC server costs each about 2 MiB and several ms of start-up (see :mod:`ctrpy.ttrpc`).

Methods mirror the shim's RPCs, take and return plain values and frozen dataclasses, and raise
the ctrpy.errors kind that the shim's status code stands for (``ctrpy.errors.from_status``): a
deleted task is NotFound, a request the task's state forbids is FailedPrecondition, a runtime
failure carries runc's message. A shim that is gone raises Unavailable.

Every call carries a deadline (:class:`ShimTimeouts`), because a shim can stop answering without
going away: stopped by SIGSTOP, stuck in the kernel, swapped out. Such a call raises
DeadlineExceeded with a message that names the shim (task, namespace, pid, address), so the
caller knows which task is stuck and nothing waits on that shim for longer than its deadline.
Only Wait has no deadline on its answer, since a process may run for as long as it likes; see
:meth:`ShimClient.wait` for how a stuck shim still fails it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from google.protobuf import any_pb2
from google.protobuf.message import Message

from ctrpy import ttrpc
from ctrpy.api.containerd.types import mount_pb2
from ctrpy.api.containerd.types.runc.options import oci_pb2
from ctrpy.api.ctrpy.shim.v1 import shim_pb2 as pb
from ctrpy.errors import CtrpyError, DeadlineExceeded, Unavailable
from ctrpy.mount import Mount
from ctrpy.shim import steps as shim_steps
from ctrpy.shim.files import ExitInfo
from ctrpy.ttrpc import socket_path

from .. import tracing
from ..timeline import Step, timelines

M = TypeVar("M", bound=Message)

log = structlog.get_logger("ctrpy.runtime")

PROCESS_SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
#: The shim's ttrpc service (proto/ctrpy/shim/v1/shim.proto).
SERVICE = "ctrpy.shim.v1.TaskService"
CALL_TIMEOUT = 30.0
STATE_TIMEOUT = 2.0  # containerd's io.containerd.timeout.task.state
#: How long a Wait may go unanswered before the shim is probed with a Connect (see wait()).
PROBE_AFTER = 0.05
# Calls that never move a process (ShimClient.changes does not count them).
_READS = (pb.StateRequest, pb.ConnectRequest, pb.StatsRequest, pb.PidsRequest)


@dataclass(frozen=True)
class ShimTimeouts:
    """Deadlines, in seconds, for ctrpyd's calls to a shim (ctrpyd's ``[shim]`` configuration).

    ``call`` bounds every call but Wait's answer (Create, Start, Kill, Delete, Pids, ...): long
    enough for runc under load. ``state`` bounds State, which Tasks.List and Tasks.Get make for
    every task they show: short, as in containerd, so that one stuck shim shows as UNKNOWN at
    once instead of holding up the listing.
    """

    call: float = CALL_TIMEOUT
    state: float = STATE_TIMEOUT


DEFAULT_TIMEOUTS = ShimTimeouts()


@dataclass(frozen=True)
class Stdio:
    """Where a process's stdio goes: FIFO paths, ``file://``/``binary://``/``ctrpy-crilog://``
    URIs, or ""."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True)
class ProcessState:
    """What the shim reports about one process (StateResponse)."""

    id: str
    exec_id: str
    bundle: str
    pid: int
    status: int  # containerd.v1.types.Status: 1 CREATED, 2 RUNNING, 3 STOPPED, 4 PAUSED
    stdio: Stdio
    exit_status: int
    exited_at_ns: int


@dataclass(frozen=True)
class ProcessEntry:
    """One process of a container: host pid and exec id ("" when it is not an exec process)."""

    pid: int
    exec_id: str = ""


@dataclass(frozen=True)
class RawAny:
    """An opaque ``google.protobuf.Any``: type URL and serialized value."""

    type_url: str
    value: bytes


@dataclass(frozen=True)
class ShimInfo:
    """What Connect reports: the shim's pid, the init pid (0 before Create), the version."""

    shim_pid: int
    task_pid: int
    version: str


def runc_options(binary_name: str = "", *, root: str = "", systemd_cgroup: bool = False) -> RawAny:
    """containerd.runc.v1.Options, for :meth:`ShimClient.create`'s ``options``."""
    opts = oci_pb2.Options(binary_name=binary_name, root=root, systemd_cgroup=systemd_cgroup)
    return RawAny(RUNC_OPTIONS_URL, opts.SerializeToString())


def _ns(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def socket_answers(address: str) -> bool:
    """Whether something accepts connections at the address right now (fails fast)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(socket_path(address))
        return True
    except BlockingIOError:
        return True  # backlog full, but someone listens
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK, errno.ENOTDIR):
            return False
        raise
    finally:
        sock.close()


class ShimClient:
    """An asynchronous client for one shim; see the module docstring for errors."""

    def __init__(
        self,
        address: str,
        container_id: str,
        *,
        namespace: str = "",
        shim_pid: int = 0,
        timeouts: ShimTimeouts = DEFAULT_TIMEOUTS,
        attach_socket: str = "",
        connection: ttrpc.Client | None = None,
    ) -> None:
        """``attach_socket``: where the task serves attach clients, when it is not next to the
        shim's socket (a task added to its pod's shim has its own; see ctrpy.shim.tasks).
        ``connection``: a ttrpc client to the same shim to share (:meth:`ttrpc.Client.share`),
        for a task added to its pod's shim."""
        self.address = address
        self.id = container_id
        self.namespace = namespace
        self.shim_pid = shim_pid
        self.attach_socket = attach_socket  # "": next to the shim's socket
        self.timeouts = timeouts
        self.call_timeout = timeouts.call
        # Calls made that may move a process (any but _READS), counted as each ends: a State
        # answer given while this changed may be stale (see ctrpy.manager.tasks.known).
        self.changes = 0
        # Dials at the first call; after a lost connection the next call dials again.
        self._ttrpc = connection.share() if connection is not None else ttrpc.Client(address)

    @classmethod
    async def connect(
        cls,
        address: str,
        container_id: str,
        *,
        timeout: float = 2.0,
        namespace: str = "",
        shim_pid: int = 0,
        timeouts: ShimTimeouts = DEFAULT_TIMEOUTS,
        attach_socket: str = "",
    ) -> ShimClient:
        """A client whose shim has answered Connect; raises Unavailable quickly when it is gone."""
        if not os.path.exists(socket_path(address)) or not socket_answers(address):
            raise Unavailable(f'shim for task "{container_id}" at {address}')
        client = cls(address, container_id, namespace=namespace, shim_pid=shim_pid, timeouts=timeouts,
                     attach_socket=attach_socket)
        try:
            await client.info(timeout=timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def close(self) -> None:
        """Close the connection, or let go of it when shared (the shim keeps running)."""
        await self._ttrpc.close()

    def join(self, container_id: str, attach_socket: str) -> ShimClient:
        """A client for task ``container_id`` added to this client's shim, on its connection."""
        return ShimClient(self.address, container_id, namespace=self.namespace, shim_pid=self.shim_pid,
                          timeouts=self.timeouts, attach_socket=attach_socket, connection=self._ttrpc)

    async def __aenter__(self) -> ShimClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def describe(self) -> str:
        """Which shim this is, for messages: task, namespace, pid (when known) and address."""
        where = [f'namespace "{self.namespace}"'] if self.namespace else []
        if self.shim_pid:
            where.append(f"pid {self.shim_pid}")
        where.append(self.address)
        return f'shim of task "{self.id}" ({", ".join(where)})'

    async def _call(self, request: Message, response_type: type[M], timeout: float | None = -1.0) -> M:
        """One call within ``timeout`` (-1: the call deadline; None: none); the method is the
        request's name without ``Request``."""
        deadline = self.call_timeout if timeout == -1.0 else timeout
        method = type(request).__name__.removesuffix("Request")
        try:
            if tracing.enabled():  # a CLIENT span, traceparent sent, the shim's steps recorded
                return await tracing.shim_call(SERVICE, method, lambda metadata: self._ttrpc.call(
                    SERVICE, method, request, response_type, timeout=deadline, metadata=metadata))
            return await self._ttrpc.call(SERVICE, method, request, response_type, timeout=deadline)
        except DeadlineExceeded:
            if deadline is None:  # not ours: the shim's own answer
                raise
            raise DeadlineExceeded(f"{self.describe()} did not answer {method} within {deadline:g}s") from None
        finally:
            if not isinstance(request, _READS):
                self.changes += 1

    async def info(self, *, timeout: float | None = -1.0) -> ShimInfo:
        """Connect: the shim's pid, the init pid and the shim's version."""
        r = await self._call(pb.ConnectRequest(id=self.id), pb.ConnectResponse, timeout)
        return ShimInfo(r.shim_pid, r.task_pid, r.version)

    async def create(
        self,
        bundle: str | os.PathLike[str],
        rootfs: Sequence[Mount],
        stdio: Stdio,
        options: RawAny | None = None,
    ) -> int:
        """Create the task (mount rootfs, open stdio, runc create); returns the init pid."""
        request = pb.CreateRequest(
            id=self.id,
            bundle=os.fspath(bundle),
            rootfs=[
                mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options)
                for m in rootfs
            ],
            terminal=stdio.terminal,
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
        )
        if options is not None:
            request.options.CopyFrom(any_pb2.Any(type_url=options.type_url, value=options.value))
        began = time.monotonic_ns()
        response = await self._call(request, pb.CreateResponse)
        self._timed("shim create", began, response.steps)
        return response.pid

    async def start(self, exec_id: str = "") -> int:
        """Start the init process or an exec process; returns its pid."""
        began = time.monotonic_ns()
        response = await self._call(pb.StartRequest(id=self.id, exec_id=exec_id), pb.StartResponse)
        if not exec_id:
            self._timed("shim start call", began, response.steps)
        return response.pid

    def _timed(self, call: str, began: int, sent: Iterable[pb.Step]) -> None:
        """Add the shim's steps of a Create or Start (sent in the answer) to the task's start-up
        timeline, or, from a shim that sent none, the call as ctrpyd saw it."""
        steps = [Step(name, start, end, "shim") for name, start, end in shim_steps.from_proto(sent)]
        timelines.add(self.namespace, self.id, steps or [Step(call, began, time.monotonic_ns())])

    async def delete(self, exec_id: str = "") -> ExitInfo:
        """Delete a created or stopped process; returns how it ended."""
        r = await self._call(pb.DeleteRequest(id=self.id, exec_id=exec_id), pb.DeleteResponse)
        return ExitInfo(r.pid, r.exit_status, _ns(r.exited_at))

    async def exec(self, exec_id: str, stdio: Stdio, spec: bytes) -> None:
        """Add an exec process; ``spec`` is the OCI process JSON. Start runs it."""
        request = pb.ExecRequest(
            id=self.id,
            exec_id=exec_id,
            terminal=stdio.terminal,
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            spec=any_pb2.Any(type_url=PROCESS_SPEC_URL, value=spec),
        )
        await self._call(request, pb.ExecResponse)

    async def kill(self, signal: int, *, exec_id: str = "", all: bool = False) -> None:
        """Send ``signal`` to a process (``all``: every process of the container)."""
        await self._call(pb.KillRequest(id=self.id, exec_id=exec_id, signal=signal, all=all), pb.KillResponse)

    async def pids(self) -> list[ProcessEntry]:
        """The container's processes, exec processes tagged with their exec id."""
        r = await self._call(pb.PidsRequest(id=self.id), pb.PidsResponse)
        entries = []
        for p in r.processes:
            exec_id = ""
            if p.info.type_url.endswith("containerd.runc.v1.ProcessDetails"):
                details = oci_pb2.ProcessDetails()
                details.ParseFromString(p.info.value)
                exec_id = details.exec_id
            entries.append(ProcessEntry(p.pid, exec_id))
        return entries

    async def pause(self) -> None:
        """Freeze the container."""
        await self._call(pb.PauseRequest(id=self.id), pb.PauseResponse)

    async def resume(self) -> None:
        """Thaw the container."""
        await self._call(pb.ResumeRequest(id=self.id), pb.ResumeResponse)

    async def close_io(self, exec_id: str = "") -> None:
        """Close a process's stdin once what was written to it is delivered."""
        await self._call(pb.CloseIORequest(id=self.id, exec_id=exec_id, stdin=True), pb.CloseIOResponse)

    async def resize_pty(self, width: int, height: int, exec_id: str = "") -> None:
        """Set a process's terminal size."""
        request = pb.ResizePtyRequest(id=self.id, exec_id=exec_id, width=width, height=height)
        await self._call(request, pb.ResizePtyResponse)

    async def update(self, resources: bytes, annotations: Mapping[str, str] | None = None) -> None:
        """Change resource limits; ``resources`` is OCI LinuxResources JSON."""
        request = pb.UpdateRequest(
            id=self.id,
            resources=any_pb2.Any(type_url=RESOURCES_URL, value=resources),
            annotations=dict(annotations or {}),
        )
        await self._call(request, pb.UpdateResponse)

    async def wait(self, exec_id: str = "") -> ExitInfo:
        """Wait until the process exits; returns its exit (pid left 0).

        The answer has no deadline: a process may run for as long as it likes. Reaching the
        shim does: alongside a Wait not answered within :data:`PROBE_AFTER` seconds, a Connect
        must be answered within the call deadline, else the Wait is given up with
        DeadlineExceeded (a shim that is stopped or stuck cannot tell when the process exits).
        A Wait the shim has answered Connect for keeps waiting
        for as long as the process runs, even if the shim stops answering later: once the shim
        runs again it reports the exit, and the Wait completes.
        """
        request = pb.WaitRequest(id=self.id, exec_id=exec_id)
        waiting = asyncio.ensure_future(self._call(request, pb.WaitResponse, None))
        probe: asyncio.Future[ShimInfo] | None = None
        try:
            # A Wait answered at once (a process that is already gone or exits right after its
            # Start, as `ctr run --rm true`) needs no probe: the shim is not asked twice.
            await asyncio.wait((waiting,), timeout=PROBE_AFTER)
            if waiting.done():
                r = await waiting
                return ExitInfo(0, r.exit_status, _ns(r.exited_at))
            probe = asyncio.ensure_future(self.info())
            await asyncio.wait((waiting, probe), return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                try:
                    await probe
                    log.debug("shim took the wait", ns=self.namespace, id=self.id, exec_id=exec_id)
                except DeadlineExceeded:
                    raise DeadlineExceeded(
                        f"{self.describe()} did not answer Wait within {self.call_timeout:g}s"
                    ) from None
                except CtrpyError:
                    pass  # the Wait itself says what is wrong (a dead shim, an unknown exec)
            r = await waiting
        finally:
            for job in (waiting, probe):
                if job is None:
                    continue
                if not job.done():
                    job.cancel()
                elif not job.cancelled():
                    job.exception()  # retrieved: a failure of the other one is not an error
        return ExitInfo(0, r.exit_status, _ns(r.exited_at))

    async def stats(self) -> RawAny:
        """The container's cgroup metrics (io.containerd.cgroups.v1.Metrics or v2)."""
        r = await self._call(pb.StatsRequest(id=self.id), pb.StatsResponse)
        return RawAny(r.stats.type_url, r.stats.value)

    async def state(self, exec_id: str = "", *, deadline: float | None = None) -> ProcessState:
        """Describe one process, within ``deadline`` seconds (None: the short state deadline of
        :class:`ShimTimeouts`, for listings; callers that must not mistake a slow shim for a
        stuck one pass a longer one)."""
        request = pb.StateRequest(id=self.id, exec_id=exec_id)
        r = await self._call(request, pb.StateResponse, self.timeouts.state if deadline is None else deadline)
        return ProcessState(
            id=r.id,
            exec_id=r.exec_id,
            bundle=r.bundle,
            pid=r.pid,
            status=int(r.status),
            stdio=Stdio(r.stdin, r.stdout, r.stderr, r.terminal),
            exit_status=r.exit_status,
            exited_at_ns=_ns(r.exited_at) if r.HasField("exited_at") else 0,
        )

    async def reopen_log(self, exec_id: str = "") -> None:
        """Make the shim reopen the process's CRI log (``ctrpy-crilog://`` stdio) by its path,
        after the file was renamed for rotation: CRI's ReopenContainerLog. FailedPrecondition
        when the process is not running, NotFound when the task is gone; a process whose
        output goes elsewhere has nothing to reopen (no error)."""
        await self._call(pb.ReopenLogRequest(id=self.id, exec_id=exec_id), pb.ReopenLogResponse)

    async def shutdown(self, *, now: bool = False) -> None:
        """Ask the shim to exit (it does once its task is deleted, or at once with ``now``)."""
        try:
            await self._call(pb.ShutdownRequest(id=self.id, now=now), pb.ShutdownResponse)
        except Unavailable:
            pass  # it went away before answering: that is what was asked
