"""The container a shim owns: its init process, its exec processes, and what happens on exit.

Events the shim publishes to ctrpyd (topic: message), in the order they happen, through one
queue (:mod:`ctrpy.shim.events`):

    /tasks/create        TaskCreate        after ``runc create``
    /tasks/start         TaskStart         after ``runc start``
    /tasks/exec-added    TaskExecAdded     on Exec
    /tasks/exec-started  TaskExecStarted   after ``runc exec``
    /tasks/paused        TaskPaused        after ``runc pause``
    /tasks/resumed       TaskResumed       after ``runc resume``
    /tasks/oom           TaskOOM           when the memory cgroup counts a new OOM kill
    /tasks/exit          TaskExit          once the exit is reaped, output drained, ``exit`` written
    /tasks/delete        TaskDelete        after the init process is deleted

A process's exit is handled in this order: reap (:mod:`ctrpy.shim.reaper`), drain its output
to the client, write ``<bundle>/exit`` (init only), mark it STOPPED and release Wait, then
publish TaskExit, never before the process's own start event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Sequence

from ctrpy import mount as mounts
from ctrpy.api.containerd.events import task_pb2 as events
from ctrpy.api.containerd.types import mount_pb2
from ctrpy.errors import AlreadyExists, CtrpyError, FailedPrecondition, InvalidArgument, NotFound
from ctrpy.oci.mounts import check_mounts

from . import attachproto, files
from .config import ShimConfig
from .events import Publisher, timestamp
from .files import ExitInfo
from .oom import OomWatcher, memory_cgroup
from .process import Process, exec_process_json, has_own_pid_namespace, prepare_config
from .reaper import Reaper
from .runc import Runc, RuntimeConfig
from .states import State, check
from .stdio import ProcessIO, StdioPaths
from .steps import Steps

log = logging.getLogger("ctrpy.shim")

# How long an exit waits for the process's output to reach the client before it is reported
# anyway (a daemonized child may hold the pipe open).
DRAIN_TIMEOUT = 2.0
# How long deleting a created container waits for runc's init process to be reaped.
REAP_TIMEOUT = 5.0


class Task:
    """One container. Every method runs on the event loop; errors are ctrpy.errors kinds."""

    def __init__(
        self, config: ShimConfig, reaper: Reaper, publisher: Publisher, *, dispatch_exits: bool = True
    ) -> None:
        """``dispatch_exits``: take the reaper's exits for this task alone; a shim serving several
        tasks (:class:`~ctrpy.shim.tasks.Tasks`) hands every exit to each through :meth:`on_exit`."""
        self.config = config
        self.reaper = reaper
        self.publisher = publisher
        self.init: Process | None = None
        self.execs: dict[str, Process] = {}
        self.rootfs: tuple[mounts.Mount, ...] = ()
        self.runc: Runc | None = None
        self._by_pid: dict[int, Process] = {}
        self._oom: OomWatcher | None = None
        self._kill_all_on_exit = False
        self._exit_tasks: set[asyncio.Task[None]] = set()
        self.steps = Steps()  # of the last Create or Start, for ctrpyd's timeline
        if dispatch_exits:
            reaper.on_exit = self.on_exit

    # ---- lookup ---------------------------------------------------------------------------

    def _check_id(self, container_id: str) -> None:
        if container_id != self.config.id:
            raise NotFound(f'task "{container_id}"')

    def process(self, container_id: str, exec_id: str = "") -> Process:
        """The init process (empty ``exec_id``) or an exec; raises NotFound."""
        self._check_id(container_id)
        if not exec_id:
            if self.init is None or self.init.state is State.DELETED:
                raise NotFound(f'task "{container_id}"')
            return self.init
        proc = self.execs.get(exec_id)
        if proc is None:
            raise NotFound(f"process does not exist {exec_id}")  # containerd's shim's words
        return proc

    def _runtime(self) -> Runc:
        if self.runc is None:
            raise FailedPrecondition(f'task "{self.config.id}" is not created')
        return self.runc

    # ---- create and start -----------------------------------------------------------------

    async def create(
        self,
        container_id: str,
        rootfs: Sequence[mounts.Mount],
        stdio: StdioPaths,
        runtime: RuntimeConfig | None = None,
    ) -> int:
        """Mount the rootfs, open stdio, ``runc create``; returns the init pid."""
        self._check_id(container_id)
        if self.init is not None:
            raise AlreadyExists(f'task "{container_id}"')
        bundle = self.config.bundle
        runtime = runtime or RuntimeConfig(
            self.config.runtime_binary, self.config.runtime_root, os.path.join(bundle, files.RUNC_LOG)
        )
        os.makedirs(runtime.root, mode=0o711, exist_ok=True)
        files.write_runtime(bundle, files.RuntimeInfo(runtime.binary, runtime.root))
        try:
            spec = prepare_config(bundle)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"bundle config.json: {exc}") from None
        self._kill_all_on_exit = not has_own_pid_namespace(spec)
        proc = Process(container_id, "", stdio)
        self.init = proc
        self.runc = Runc(runtime, self.reaper)
        rootfs_dir = os.path.join(bundle, files.ROOTFS)
        self.rootfs = tuple(rootfs)
        try:
            self.steps.restart()
            if self.rootfs:
                os.makedirs(rootfs_dir, exist_ok=True)
                try:
                    with self.steps.timed("rootfs mount"):
                        mounts.mount_all(self.rootfs, rootfs_dir)
                except OSError as exc:
                    raise CtrpyError(f"failed to mount rootfs component: {exc}") from None
            # runc resolves mount destinations inside the rootfs: judge them as it will.
            check_mounts(container_id, spec.get("mounts"), _root_path(bundle, spec))
            pid, early = await self._run_process(proc, create=True)
        except BaseException:
            self.init = None
            self._unmount_rootfs()
            raise
        self._watch_oom(pid)
        self.publisher.publish(
            "/tasks/create",
            events.TaskCreate(
                container_id=container_id,
                bundle=bundle,
                rootfs=[mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options)
                        for m in self.rootfs],
                io=events.TaskIO(stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr,
                                 terminal=stdio.terminal),
                pid=pid,
            ),
        )  # fmt: skip
        if early is not None:
            self._on_exit_of(proc, early)
        return pid

    async def _run_process(self, proc: Process, *, create: bool) -> tuple[int, int | None]:
        """Open stdio and run ``runc create``/``runc exec``; returns (pid, early exit status).

        The pid is registered with the reaper before anything else can run, and an exit that
        happened before runc returned is handed back instead of being lost.
        """
        runc = self._runtime()
        bundle = self.config.bundle
        io = ProcessIO(
            proc.stdio,
            namespace=self.config.namespace,
            container_id=self.config.id,
            reaper=self.reaper,
            console_dir=self.config.socket_dir,
            attach_socket=attachproto.socket_for(self.config.socket_path) if create else "",
        )
        if create:
            with self.steps.timed("stdio"):
                await io.open()
        else:
            await io.open()
        proc.io = io
        if proc.stdin_closed:
            io.close_stdin()
        pid_file = os.path.join(bundle, files.INIT_PID if create else f"exec-{proc.exec_id}.pid")
        process_file = os.path.join(bundle, f"exec-{proc.exec_id}.json")
        registered = False
        early: int | None = None
        try:
            with self.reaper.collect() as early_exits:
                if create:
                    with self.steps.timed("runc create"):
                        await runc.create(
                            proc.container_id,
                            bundle,
                            pid_file,
                            stdio=io.child_fds,
                            console_socket=io.console_socket,
                        )
                else:
                    files.write_atomic(process_file, exec_process_json(proc.spec))
                    await runc.exec(
                        proc.container_id, process_file, pid_file, stdio=io.child_fds,
                        console_socket=io.console_socket,
                    )  # fmt: skip
                pid = _read_pid_file(pid_file)
                early = early_exits.get(pid)
                proc.pid = pid
                if early is None:
                    self._by_pid[pid] = proc
                registered = True
            await io.started()
        except BaseException:
            proc.io = None
            self._by_pid.pop(proc.pid, None)
            await io.close()
            if registered and create:
                await _quietly(runc.delete(proc.container_id, force=True))
            elif registered and proc.pid and early is None:
                _signal(proc.pid, 9)
            raise
        finally:
            if not create:
                for path in (process_file, pid_file):
                    _unlink(path)
        return pid, early

    async def start(self, container_id: str, exec_id: str = "") -> int:
        """``runc start`` (init) or ``runc exec`` (exec); returns the pid."""
        proc = self.process(container_id, exec_id)
        runc = self._runtime()
        proc.move("start")
        proc.start_done.clear()
        try:
            if proc.is_init:
                self.steps.restart()
                with self.steps.timed("runc start"):
                    await runc.start(container_id)
                self.publisher.publish(
                    "/tasks/start", events.TaskStart(container_id=container_id, pid=proc.pid)
                )
                return proc.pid
            pid, early = await self._run_process(proc, create=False)
            self.publisher.publish(
                "/tasks/exec-started",
                events.TaskExecStarted(container_id=container_id, exec_id=exec_id, pid=pid),
            )
            if early is not None:
                self._on_exit_of(proc, early)
            return pid
        except BaseException:
            if proc.state is State.RUNNING:
                proc.state = State.CREATED
            raise
        finally:
            proc.start_done.set()

    async def exec(self, container_id: str, exec_id: str, stdio: StdioPaths, spec: bytes) -> None:
        """Add an exec process (started by :meth:`start`); raises AlreadyExists for a used id."""
        init = self.process(container_id)
        check(init.state, "exec")
        if exec_id in self.execs:
            raise AlreadyExists(f'id "{exec_id}"')
        try:
            json.loads(spec)
        except ValueError as exc:
            raise InvalidArgument(f"exec spec is not JSON: {exc}") from None
        self.execs[exec_id] = Process(container_id, exec_id, stdio, spec)
        self.publisher.publish(
            "/tasks/exec-added", events.TaskExecAdded(container_id=container_id, exec_id=exec_id)
        )

    # ---- exits ----------------------------------------------------------------------------

    def on_exit(self, pid: int, status: int) -> None:
        """Reaper callback for every non-runc exit (pids of other tasks are ignored)."""
        proc = self._by_pid.get(pid)
        if proc is not None:
            self._on_exit_of(proc, status)

    def _on_exit_of(self, proc: Process, status: int) -> None:
        self._by_pid.pop(proc.pid, None)
        info = ExitInfo(proc.pid, status, files.now_ns())
        job = asyncio.get_running_loop().create_task(self._handle_exit(proc, info))
        self._exit_tasks.add(job)
        job.add_done_callback(self._exit_tasks.discard)

    async def _handle_exit(self, proc: Process, info: ExitInfo) -> None:
        if proc.is_init:
            if self._oom is not None:
                self._oom.check()
            if self.runc is not None:
                if proc.state is State.PAUSED:
                    await _quietly(self.runc.resume(proc.container_id))
                if self._kill_all_on_exit:
                    await _quietly(self.runc.kill(proc.container_id, 9, all_processes=True))
        if proc.io is not None:
            await proc.io.drain(DRAIN_TIMEOUT)
        if proc.is_init:
            try:  # with the OOM kill _on_oom marked (the check above saw the last one)
                oom = files.oom_recorded(self.config.bundle)
                files.write_exit(self.config.bundle, ExitInfo(info.pid, info.exit_status, info.exited_at_ns, oom))
            except OSError as exc:
                log.error("writing the exit file failed: %s", exc)
        await proc.start_done.wait()
        proc.set_exited(info)
        self.publisher.publish(
            "/tasks/exit",
            events.TaskExit(
                container_id=proc.container_id,
                id=proc.id,
                pid=info.pid,
                exit_status=info.exit_status,
                exited_at=timestamp(info.exited_at_ns),
            ),
        )

    def _on_oom(self) -> None:
        try:  # on disk first: ctrpyd may be down, and reads it when it records the exit
            files.record_oom(self.config.bundle)
        except OSError as exc:
            log.error("recording the OOM kill failed: %s", exc)
        self.publisher.publish("/tasks/oom", events.TaskOOM(container_id=self.config.id))

    def _watch_oom(self, pid: int) -> None:
        found = memory_cgroup(pid)
        if found is None:
            return
        self._oom = OomWatcher(found[0], found[1], self._on_oom)
        try:
            self._oom.start(asyncio.get_running_loop())
        except OSError as exc:
            log.warning("cannot watch for OOM events in %s: %s", found[0], exc)

    async def wait(self, container_id: str, exec_id: str = "") -> ExitInfo:
        """Return once the process has exited."""
        proc = self.process(container_id, exec_id)
        await proc.exited.wait()
        assert proc.exit is not None
        return proc.exit

    # ---- delete ---------------------------------------------------------------------------

    async def delete(self, container_id: str, exec_id: str = "") -> ExitInfo:
        """Delete a created or stopped process; for init also ``runc delete`` and unmount."""
        proc = self.process(container_id, exec_id)
        check(proc.state, "delete")
        if not proc.is_init:
            del self.execs[exec_id]
            proc.move("delete")
            if proc.io is not None:
                await proc.io.close()
            return proc.exit or ExitInfo(proc.pid, 0, 0)
        runc = self._runtime()
        try:
            await runc.delete(container_id, force=True)
            if not proc.exited.is_set() and proc.pid:
                # runc killed the created container's init; let the exit be handled first.
                try:
                    await asyncio.wait_for(proc.exited.wait(), REAP_TIMEOUT)
                except TimeoutError:
                    proc.set_exited(ExitInfo(proc.pid, files.UNKNOWN_EXIT_STATUS, files.now_ns()))
        finally:
            for p in [proc, *self.execs.values()]:
                if p.io is not None:
                    await p.io.close()
            if self._oom is not None:
                self._oom.close()
                self._oom = None
            self._unmount_rootfs()
        proc.move("delete")
        info = proc.exit or ExitInfo(proc.pid, files.UNKNOWN_EXIT_STATUS, files.now_ns())
        self.publisher.publish(
            "/tasks/delete",
            events.TaskDelete(
                container_id=container_id,
                pid=info.pid,
                exit_status=info.exit_status,
                exited_at=timestamp(info.exited_at_ns),
                id=container_id,
            ),
        )
        return info

    def _unmount_rootfs(self) -> None:
        if not self.rootfs:
            return
        rootfs_dir = os.path.join(self.config.bundle, files.ROOTFS)
        try:
            mounts.unmount_recursive(rootfs_dir)
        except OSError as exc:
            log.error("unmounting %s failed: %s", rootfs_dir, exc)

    @property
    def deleted(self) -> bool:
        """Whether there is no task (never created, or deleted)."""
        return self.init is None or self.init.state is State.DELETED

    # ---- signals, pause, resources --------------------------------------------------------

    async def kill(self, container_id: str, exec_id: str, signal: int, all_processes: bool) -> None:
        """Signal one process (or all, for init); NotFound once it has finished."""
        proc = self.process(container_id, exec_id)
        check(proc.state, "kill")
        if proc.state is State.STOPPED:
            if proc.is_init and all_processes:
                # As containerd's shim: runc signals whatever is left in the container's
                # cgroup, and a stopped container with nothing left is not an error.
                await self._runtime().kill(container_id, signal, all_processes=True)
                return
            raise NotFound("process already finished")
        if proc.is_init:
            await self._runtime().kill(container_id, signal, all_processes=all_processes)
            return
        if not proc.pid:
            raise FailedPrecondition(f'process "{exec_id}" is not started')
        if not _signal(proc.pid, signal):
            raise NotFound("process already finished")

    async def pause(self, container_id: str) -> None:
        """Freeze the container (``runc pause``)."""
        proc = self.process(container_id)
        proc.move("pause")
        try:
            await self._runtime().pause(container_id)
        except BaseException:
            if proc.state is State.PAUSED:
                proc.state = State.RUNNING
            raise
        self.publisher.publish("/tasks/paused", events.TaskPaused(container_id=container_id))

    async def resume(self, container_id: str) -> None:
        """Thaw the container (``runc resume``)."""
        proc = self.process(container_id)
        proc.move("resume")
        try:
            await self._runtime().resume(container_id)
        except BaseException:
            if proc.state is State.RUNNING:
                proc.state = State.PAUSED
            raise
        self.publisher.publish("/tasks/resumed", events.TaskResumed(container_id=container_id))

    async def pids(self, container_id: str) -> list[tuple[int, str]]:
        """(pid, exec id or "") of every process in the container."""
        proc = self.process(container_id)
        check(proc.state, "pids")
        exec_ids = {p.pid: p.exec_id for p in self.execs.values() if p.pid}
        return [(pid, exec_ids.get(pid, "")) for pid in await self._runtime().ps(container_id)]

    async def update(self, container_id: str, resources: bytes) -> None:
        """``runc update`` with OCI LinuxResources JSON."""
        proc = self.process(container_id)
        check(proc.state, "update")
        await self._runtime().update(container_id, resources)

    async def stats(self, container_id: str) -> dict[str, object]:
        """runc's stats data for the container."""
        proc = self.process(container_id)
        check(proc.state, "stats")
        return await self._runtime().stats(container_id)

    def close_io(self, container_id: str, exec_id: str) -> None:
        """CloseIO: close the process's stdin once buffered input is delivered."""
        proc = self.process(container_id, exec_id)
        proc.stdin_closed = True
        if proc.io is not None:
            proc.io.close_stdin()

    def reopen_log(self, container_id: str, exec_id: str = "") -> None:
        """Reopen the process's CRI log file by its path (after rotation). FailedPrecondition
        unless the process runs (a paused one counts, as it does for the CRI); a process
        without a CRI log has nothing to reopen."""
        proc = self.process(container_id, exec_id)
        if proc.state not in (State.RUNNING, State.PAUSED):
            what = f'process "{exec_id}"' if exec_id else f'container "{container_id}"'
            raise FailedPrecondition(f"{what} is not running")
        if proc.io is not None:
            proc.io.reopen_logs()

    def resize(self, container_id: str, exec_id: str, width: int, height: int) -> None:
        """Set the window size of the process's pty; a process without one has nothing to
        resize, and (as with containerd's shim) that is not an error."""
        proc = self.process(container_id, exec_id)
        check(proc.state, "resize")
        if proc.io is None or not proc.stdio.terminal:
            return
        proc.io.resize(width, height)

    async def close(self) -> None:
        """Release stdio and watchers when the shim exits (the container is left alone)."""
        for job in list(self._exit_tasks):
            job.cancel()
        for p in [*([self.init] if self.init else []), *self.execs.values()]:
            if p.io is not None:
                await p.io.close()
        if self._oom is not None:
            self._oom.close()


def _read_pid_file(path: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise CtrpyError(f"failed to read the runtime's pid file {path}: {exc}") from None


def _signal(pid: int, signal: int) -> bool:
    try:
        os.kill(pid, signal)
        return True
    except ProcessLookupError:
        return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def _quietly(job: Awaitable[object]) -> None:
    """Await a best-effort runtime call, logging instead of raising."""
    try:
        await job
    except CtrpyError as exc:
        log.warning("%s", exc)


def _root_path(bundle: str, spec: dict[str, object]) -> str | None:
    """The container's root filesystem on the host: the spec's ``root.path``, relative to the
    bundle unless absolute; None when the spec has none (runc will refuse it)."""
    root = spec.get("root")
    path = root.get("path") if isinstance(root, dict) else None
    if not isinstance(path, str) or not path:
        return None
    return os.path.join(bundle, path)
