"""Driving one process (a task's init, or an exec) from the CLI, as ctr does.

Shared by ``run``, ``tasks start|attach|exec|rm`` and ``containers rm``:

- :func:`make_io`: FIFOs (or none, or a log URI) and the threads that copy our stdio;
- :func:`attach_and_wait`: Wait issued before Start, then either the terminal's size sent
  (initially and on SIGWINCH) or our signals forwarded as Tasks.Kill, until the process exits;
- :func:`delete_task` / :func:`delete_exec`: refuse a process that has not stopped, let the
  output drain, delete it, and remove its FIFOs.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from ctrpy import cio, errors
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2 as api
from ctrpy.api.containerd.types.task import task_pb2
from ctrpy.client import Client

# Signals forwarded to the process in attached, non-terminal mode. ctr forwards nearly every
# signal it receives; these are the ones that mean something to a container and not just to
# this process (SIGCHLD, SIGPIPE and job control stay ours).
FORWARDED = (
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
    signal.SIGALRM, signal.SIGWINCH,
)


def status_name(status: int) -> str:
    """``RUNNING``, ``STOPPED``... as ctr prints a task's status."""
    try:
        return task_pb2.Status.Name(status)  # type: ignore[arg-type]
    except ValueError:
        return "UNKNOWN"


def warn(message: str) -> None:
    print(f"ctrpy: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class IOOptions:
    """How a new process's stdio is set up (``--null-io``, ``--log-uri``, ``--fifo-dir``)."""

    null_io: bool = False
    log_uri: str = ""
    fifo_dir: str | None = None


class ProcessIO:
    """The stdio of one process on our side: its FIFOs (if any) and the copying (if attached)."""

    def __init__(self, config: cio.Config, fifos: cio.FIFOSet | None = None,
                 attached: cio.Attached | cio.Held | None = None) -> None:
        self.config = config
        self.fifos = fifos
        self.attached = attached

    def start_stdin(self, on_eof: Callable[[], None] | None) -> None:
        if isinstance(self.attached, cio.Attached):
            self.attached.start_stdin(on_eof)

    def wait(self) -> None:
        if isinstance(self.attached, cio.Attached):
            self.attached.wait()

    def close(self, remove: bool = True) -> None:
        """Stop copying; with ``remove``, remove the FIFOs."""
        if self.attached is not None:
            self.attached.close(remove=remove)
            self.attached = None
        elif remove and self.fifos is not None:
            self.fifos.remove()


def make_io(process_id: str, *, terminal: bool, options: IOOptions, attach: bool = True) -> ProcessIO:
    """The stdio for a new process named ``process_id`` (a container id or an exec id).

    FIFOs are made unless ``--null-io`` or ``--log-uri``; when ``attach``, copying our stdin,
    stdout and stderr (stdout only, with a terminal) starts at once, except stdin, which starts
    with :meth:`ProcessIO.start_stdin`; otherwise our ends are only held open until
    :meth:`ProcessIO.close`. Raises InvalidArgument for conflicting options.
    """
    if terminal and options.null_io:
        raise errors.InvalidArgument("tty and null-io cannot be used together")
    if options.null_io:
        return ProcessIO(cio.NULL_IO)
    if options.log_uri:
        if terminal:
            raise errors.InvalidArgument("can't use log-uri with tty")
        return ProcessIO(cio.log_uri(options.log_uri))
    fifos = cio.FIFOSet.new(process_id, terminal=terminal, fifo_dir=options.fifo_dir)
    try:
        if not attach:
            return ProcessIO(fifos.config, fifos, cio.Held(fifos))
        cio.stdout_flush()
        streams = cio.Streams(stdin=0, stdout=1, stderr=None if terminal else 2)
        return ProcessIO(fifos.config, fifos, cio.Attached(fifos, streams))
    except BaseException:
        fifos.remove()
        raise


def get_process(client: Client, container_id: str, exec_id: str = "") -> task_pb2.Process:
    """Tasks.Get; raises NotFound when there is no such task or process."""
    return client.call(client.tasks.Get, api.GetRequest(container_id=container_id, exec_id=exec_id)).process


class Waiter:
    """A Tasks.Wait call in flight (issued before Start, as ctr does)."""

    def __init__(self, client: Client, container_id: str, exec_id: str = "") -> None:
        # Wait can take as long as the process lives: never a deadline.
        self._future = client.tasks.Wait.future(
            api.WaitRequest(container_id=container_id, exec_id=exec_id), metadata=client.metadata)

    def result(self) -> int:
        """The exit status; raises the error kind of a failed Wait."""
        try:
            response: api.WaitResponse = self._future.result()
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None
        return response.exit_status

    def cancel(self) -> None:
        self._future.cancel()


class _SignalWorker:
    """Runs signal-driven gRPC calls outside the signal handler, in one thread."""

    def __init__(self, signals: tuple[int, ...], act: Callable[[int], bool]) -> None:
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._act = act
        self._previous: dict[int, Any] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="ctrpy-signals")
        self._thread.start()
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self._queue.put(signum)

    def _run(self) -> None:
        active = True
        while (signum := self._queue.get()) is not None:
            if active:
                active = self._act(signum)

    def stop(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self._queue.put(None)
        self._thread.join(5)


@contextlib.contextmanager
def forward_signals(client: Client, container_id: str, exec_id: str = "") -> Iterator[None]:
    """Forward our signals to the process as Tasks.Kill for the length of the block; stop
    forwarding once the process is gone (NotFound)."""

    def kill(signum: int) -> bool:
        try:
            client.call(client.tasks.Kill, api.KillRequest(container_id=container_id, exec_id=exec_id,
                                                            signal=signum))
        except errors.NotFound:
            return False
        except errors.CtrpyError as exc:
            warn(f"forward signal {signal.Signals(signum).name}: {exc.message}")
        return True

    worker = _SignalWorker(FORWARDED, kill)
    try:
        yield
    finally:
        worker.stop()


def resize(client: Client, container_id: str, exec_id: str, console: cio.Console) -> None:
    """Send the terminal's size (Tasks.ResizePty); failures are only reported."""
    width, height = console.size()
    try:
        client.call(client.tasks.ResizePty, api.ResizePtyRequest(
            container_id=container_id, exec_id=exec_id, width=width, height=height))
    except errors.CtrpyError as exc:
        warn(f"resize pty: {exc.message}")


@contextlib.contextmanager
def console_resize(client: Client, container_id: str, exec_id: str, console: cio.Console | None) -> Iterator[None]:
    """Send the terminal's size now and whenever it changes (SIGWINCH), for the block."""
    if console is None:
        yield
        return
    resize(client, container_id, exec_id, console)

    def act(signum: int) -> bool:
        resize(client, container_id, exec_id, console)
        return True

    worker = _SignalWorker((signal.SIGWINCH,), act)
    try:
        yield
    finally:
        worker.stop()


def attach_and_wait(client: Client, container_id: str, exec_id: str, waiter: Waiter,
                    console: cio.Console | None) -> int:
    """Until the process exits: keep the pty's size up to date (terminal), or forward our
    signals to the process (no terminal). Returns the exit status."""
    guard = (console_resize(client, container_id, exec_id, console) if console is not None
             else forward_signals(client, container_id, exec_id))
    with guard:
        return waiter.result()


def close_stdin(client: Client, container_id: str, exec_id: str = "") -> Callable[[], None]:
    """The end-of-input callback: Tasks.CloseIO{stdin=true}, errors ignored (as ctr does)."""

    def close() -> None:
        with contextlib.suppress(errors.CtrpyError):
            client.call(client.tasks.CloseIO,
                        api.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=True))

    return close


def _check_stopped(process: task_pb2.Process) -> None:
    status = process.status
    if status in (task_pb2.STOPPED, task_pb2.UNKNOWN):
        return
    if status == task_pb2.CREATED and process.pid == 0:
        return  # creation failed half-way: nothing runs
    raise errors.FailedPrecondition(f"task must be stopped before deletion: {status_name(status).lower()}")


def kill_and_wait(client: Client, container_id: str, exec_id: str = "") -> None:
    """``rm -f``: SIGKILL every process (Wait issued first), then wait for the exit."""
    waiter = Waiter(client, container_id, exec_id)
    try:
        client.call(client.tasks.Kill, api.KillRequest(container_id=container_id, exec_id=exec_id,
                                                        signal=signal.SIGKILL, all=not exec_id))
    except errors.FailedPrecondition:
        pass  # already stopped
    except errors.NotFound:
        pass  # gone, or exiting: Wait tells
    waiter.result()


def delete_task(client: Client, container_id: str, *, force: bool = False,
                io: ProcessIO | None = None) -> api.DeleteResponse:
    """Delete a container's task (ctr's ``task.Delete``): it must be stopped (with ``force``
    it is killed first); our copy of its output drains; the FIFOs are removed afterwards (ours,
    or those Tasks.Get names). Raises NotFound without a task, FailedPrecondition when it runs.
    """
    if force:
        with contextlib.suppress(errors.NotFound):
            kill_and_wait(client, container_id)
    process = get_process(client, container_id)
    _check_stopped(process)
    if io is not None:
        io.wait()
    response: api.DeleteResponse = client.call(client.tasks.Delete, api.DeleteTaskRequest(container_id=container_id))
    if io is not None:
        io.close()
    else:
        cio.FIFOSet.load(_config(process)).remove()
    return response


def delete_exec(client: Client, container_id: str, exec_id: str, *, force: bool = False,
                io: ProcessIO | None = None) -> api.DeleteResponse:
    """Delete an exec process, as :func:`delete_task` does for a task."""
    if force:
        with contextlib.suppress(errors.NotFound):
            kill_and_wait(client, container_id, exec_id)
    process = get_process(client, container_id, exec_id)
    _check_stopped(process)
    if io is not None:
        io.wait()
    response: api.DeleteResponse = client.call(
        client.tasks.DeleteProcess, api.DeleteProcessRequest(container_id=container_id, exec_id=exec_id))
    if io is not None:
        io.close()
    else:
        cio.FIFOSet.load(_config(process)).remove()
    return response


def _config(process: task_pb2.Process) -> cio.Config:
    return cio.Config(process.stdin, process.stdout, process.stderr, process.terminal)


def loaded_io(process: task_pb2.Process) -> ProcessIO:
    """Our stdio attached again to the FIFOs of an existing process (``tasks attach``)."""
    config = _config(process)
    fifos = cio.FIFOSet.load(config)
    paths = [p for p in config.paths() if p]
    if not paths or not all(cio.is_fifo(p) for p in paths):
        raise errors.FailedPrecondition(f"task {process.id}: its stdio are not FIFOs; nothing to attach to")
    cio.stdout_flush()
    streams = cio.Streams(stdin=0, stdout=1, stderr=None if config.terminal else 2)
    return ProcessIO(config, fifos, cio.Attached(fifos, streams))
