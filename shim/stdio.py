"""A process's stdio: the client's FIFOs, files and logging binaries, and the copying between them.

Where each of stdin, stdout and stderr goes is given as a path or URI:

- ``""``: /dev/null.
- a FIFO path (what ``ctr`` passes; ``fifo://`` too): the client holds the write end of stdin
  and the read ends of stdout and stderr. The shim opens each FIFO read-write, which never
  blocks and keeps the FIFO usable when the client goes away (output then waits in the FIFO;
  stdin only ends with CloseIO, as with containerd). The container gets pipes; the shim copies
  FIFO -> stdin pipe and stdout/stderr pipe -> FIFO on the event loop.
- ``file:///path``, or a path that is a regular file: appended to; the container writes it
  directly.
- ``binary:///path/to/logger?key=value``: the logger is started with the container's stdout
  and stderr as its fds 3 and 4, ``CONTAINER_ID`` and ``CONTAINER_NAMESPACE`` in its
  environment, and fd 5 to close once it is ready (containerd's logging protocol).
- ``ctrpy-crilog:///path/to/file.log?max_line_size=N``: the shim itself writes the output to
  the file in the CRI log format (:mod:`ctrpy.shim.crilog`); the container gets pipes (or its
  terminal), which the shim reads. Usually in both stdout and stderr; the two share the file.

With a terminal, runc hands the pty master to the shim over a console socket; the shim copies
stdin -> master and master -> stdout, and applies window sizes to the master.

A stdin of ``ctrpy-attach://?stdin=0|1&stdin_once=0|1`` (init process only) makes the shim serve
attach clients (:mod:`ctrpy.shim.attachproto`): the output the shim reads (for a CRI log, or for
nothing when stdout and stderr are empty) is also sent to them, and with ``stdin=1`` the
container's stdin is a pipe (or the terminal) that they write to.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import signal
import socket
import stat
import struct
import termios
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlparse

from ctrpy.errors import CtrpyError, InvalidArgument

from . import aio, attachproto, crilog
from .attachserver import AttachServer
from .reaper import Child, Reaper

LOGGER_READY_TIMEOUT = 10.0
CONSOLE_TIMEOUT = 10.0


@dataclass(frozen=True)
class StdioPaths:
    """Where a process's stdio goes, as given by the client (returned unchanged by State)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        raise CtrpyError(f'stdio "{path}": no such file or directory') from None


class ProcessIO:
    """Opens, copies and closes one process's stdio. Used from the event loop only.

    Life: :meth:`open` (before runc), :attr:`child_fds` / :attr:`console_socket` go to runc,
    :meth:`started` once runc returned (closes runc's ends, receives the pty master, starts
    copying), :meth:`close_stdin` for CloseIO, :meth:`drain` when the process exited,
    :meth:`close` on delete.
    """

    def __init__(
        self,
        paths: StdioPaths,
        *,
        namespace: str,
        container_id: str,
        reaper: Reaper,
        console_dir: str,
        attach_socket: str = "",
    ) -> None:
        self.paths = paths
        self._attach_socket = attach_socket  # where attach clients connect (init process only)
        self._attach_options: attachproto.Options | None = None
        self._attach_stdin = -1  # the stdin pipe's write end, until the attach server has it
        self._attach: AttachServer | None = None
        self._attach_jobs: set[asyncio.Task[None]] = set()
        self._namespace = namespace
        self._container_id = container_id
        self._reaper = reaper
        self._console_dir = console_dir
        self.child_fds: dict[int, int] = {}  # fd number in runc -> our fd
        self.console_socket: str | None = None
        self._listener: socket.socket | None = None
        self._after_start: list[int] = []  # closed once runc has its copies
        self._owned: list[int] = []  # closed by close()
        self._stdin_src = -1  # FIFO (or file) we read stdin from
        self._stdin_dst = -1  # pipe to the container (non-terminal)
        self._stdin_is_fifo = False
        self._outputs: list[tuple[int, int]] = []  # (pipe read end, sink) to copy
        self._tty_sink = -1
        self._master = -1
        self._logger: Child | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._stdin_pump: asyncio.Task[None] | None = None
        self._stdin_closing = False
        self._stdin_wake: asyncio.Future[None] | None = None
        self._logs: dict[str, crilog.LogFile] = {}  # CRI log files by path
        self._log_sources: list[tuple[int, bytes, crilog.LogFile | None, int]] = []  # (pipe, stream, file, max)
        self._tty_log: tuple[crilog.LogFile, int] | None = None  # the terminal's CRI log, max line

    # ---- opening --------------------------------------------------------------------------

    async def open(self) -> None:
        """Open every path; raises a CtrpyError kind (and closes what it opened) on failure."""
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        p = self.paths
        if attachproto.is_uri(p.stdin):
            self._open_attach(p.stdin)
        elif p.stdin:
            self._open_stdin(p.stdin)
        self._open_cri_logs()
        if p.stdout.startswith("binary://") or p.stderr.startswith("binary://"):
            out_sink, err_sink = await self._start_logger(p.stdout or p.stderr)
        else:
            out_sink = self._open_sink(p.stdout, "stdout")
            if p.terminal:
                err_sink = -1  # a terminal has one output stream
            elif p.stderr == p.stdout and p.stdout and not _is_fifo_uri(p.stdout):
                err_sink = out_sink  # one file, written directly by the container
            else:
                err_sink = self._open_sink(p.stderr, "stderr")
        attach_only = self._attach_options is not None
        if p.terminal:
            if self._tty_log is None and not (attach_only and out_sink < 0):
                self._tty_sink = out_sink if out_sink >= 0 else self._own(os.open(os.devnull, os.O_WRONLY))
            self._listen_console()
            return
        for number, sink, path in ((1, out_sink, p.stdout), (2, err_sink, p.stderr)):
            if sink < 0 and attach_only and not crilog.is_uri(path):
                self._attach_only_source(number)
            if sink < 0:
                continue
            if _is_fifo_uri(path):
                r, w = os.pipe()
                self._owned.append(r)
                self._after_start.append(w)
                self.child_fds[number] = w
                self._outputs.append((r, sink))
            else:
                # A file or a logger's pipe: the container writes it directly, and our copy
                # goes once runc has its own (a logger then sees EOF when the container ends).
                self.child_fds[number] = sink
                if sink in self._owned:
                    self._owned.remove(sink)
                    self._after_start.append(sink)

    def _own(self, fd: int) -> int:
        self._owned.append(fd)
        return fd

    def _open_cri_logs(self) -> None:
        """Open the CRI log files that stdout/stderr name, and the pipes the shim reads."""
        p = self.paths
        if not (crilog.is_uri(p.stdout) or crilog.is_uri(p.stderr)):
            return
        if p.stdout.startswith("binary://") or p.stderr.startswith("binary://"):
            raise InvalidArgument("a logging binary and a CRI log cannot be combined")
        streams = [(1, crilog.STDOUT, p.stdout)] + ([] if p.terminal else [(2, crilog.STDERR, p.stderr)])
        for number, stream, uri in streams:
            if not crilog.is_uri(uri):
                continue
            target = crilog.parse_uri(uri)
            log_file = self._logs.get(target.path)
            if log_file is None:
                log_file = self._logs[target.path] = crilog.LogFile(target.path)
            if p.terminal:
                self._tty_log = (log_file, target.max_line_size)
                continue
            r, w = os.pipe()
            self._owned.append(r)
            self._after_start.append(w)
            self.child_fds[number] = w
            self._log_sources.append((r, stream, log_file, target.max_line_size))

    def _open_attach(self, uri: str) -> None:
        """Serve attach clients; with their stdin, the container's stdin is a pipe we hold."""
        if not self._attach_socket:
            raise InvalidArgument("attach is served for a container's init process only")
        self._attach_options = attachproto.parse_uri(uri)
        if self._attach_options.stdin and not self.paths.terminal:
            r, w = os.pipe()
            self._after_start.append(r)
            self._attach_stdin = self._own(w)
            self.child_fds[0] = r

    def _attach_only_source(self, number: int) -> None:
        """An output that goes to attach clients only: a pipe the shim reads."""
        r, w = os.pipe()
        self._owned.append(r)
        self._after_start.append(w)
        self.child_fds[number] = w
        self._log_sources.append((r, crilog.STDOUT if number == 1 else crilog.STDERR, None, 0))

    def _open_stdin(self, path: str) -> None:
        path = _strip(path)
        try:
            if _is_fifo(path):
                self._stdin_src = self._own(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
                self._stdin_is_fifo = True
            else:
                self._stdin_src = self._own(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            raise CtrpyError(f'failed to open stdin "{path}": {exc.strerror}') from None
        if not self.paths.terminal:
            r, w = os.pipe()
            self._after_start.append(r)
            # Our end never blocks: a full pipe (the process not reading its stdin while its
            # output waits for us) must not stop the event loop that drains that output.
            aio.set_nonblocking(w)
            self._stdin_dst = self._own(w)
            self.child_fds[0] = r

    def _open_sink(self, path: str, what: str) -> int:
        """An fd that output is written to: a FIFO, a file, or -1 for none (and for a CRI
        log, which :meth:`_open_cri_logs` has opened)."""
        if not path or crilog.is_uri(path):
            return -1
        if path.startswith("file://"):
            target = urlparse(path).path
            os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        else:
            target = _strip(path)
            is_fifo = _is_fifo(target)
            flags = (os.O_RDWR | os.O_NONBLOCK if is_fifo else os.O_WRONLY | os.O_APPEND) | os.O_CLOEXEC
        try:
            fd = os.open(target, flags, 0o644)
        except OSError as exc:
            raise CtrpyError(f'failed to open {what} "{path}": {exc.strerror}') from None
        return self._own(fd)

    async def _start_logger(self, uri: str) -> tuple[int, int]:
        parsed = urlparse(uri)
        if not parsed.path:
            raise InvalidArgument(f'logging binary URI "{uri}" has no path')
        argv = [parsed.path]
        for key, value in parse_qsl(parsed.query, keep_blank_values=True):
            argv += [key, value] if value else [key]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ready_r, ready_w = os.pipe()
        env = {"CONTAINER_ID": self._container_id, "CONTAINER_NAMESPACE": self._namespace}
        try:
            self._logger = self._reaper.spawn(argv, fds={3: out_r, 4: err_r, 5: ready_w}, env=env)
        except OSError as exc:
            for fd in (out_r, out_w, err_r, err_w, ready_r, ready_w):
                aio.close_fd(fd)
            raise CtrpyError(f'failed to start logging binary "{parsed.path}": {exc.strerror}') from None
        for fd in (out_r, err_r, ready_w):
            os.close(fd)
        try:
            aio.set_nonblocking(ready_r)
            await asyncio.wait_for(aio.read_some(ready_r, 1), LOGGER_READY_TIMEOUT)
        except (TimeoutError, OSError):
            pass  # a logger that never says it is ready still gets its pipes
        finally:
            os.close(ready_r)
        return self._own(out_w), self._own(err_w)

    def _listen_console(self) -> None:
        path = os.path.join(self._console_dir, f"pty-{secrets.token_hex(6)}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(1)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        self.console_socket = path

    # ---- running --------------------------------------------------------------------------

    async def started(self) -> None:
        """runc has started the process: close its ends, get the pty master, start copying."""
        for fd in self._after_start:
            aio.close_fd(fd)
        self._after_start.clear()
        if self.paths.terminal:
            self._master = self._own(await self._receive_master())
            aio.set_nonblocking(self._master)
        await self._start_attach()
        if self.paths.terminal:
            if self._tty_log is not None:
                log_file, max_line = self._tty_log
                pump = self._pump_log(self._master, crilog.STDOUT, log_file, max_line)
            elif self._tty_sink < 0:  # attach clients only
                pump = self._pump_log(self._master, crilog.STDOUT, None, 0)
            else:
                pump = self._pump_out(self._master, self._tty_sink)
            self._pumps.append(asyncio.create_task(pump))
        for fd, stream, source_log, max_line in self._log_sources:
            aio.set_nonblocking(fd)
            self._pumps.append(asyncio.create_task(self._pump_log(fd, stream, source_log, max_line)))
        for src, sink in self._outputs:
            aio.set_nonblocking(src)
            self._pumps.append(asyncio.create_task(self._pump_out(src, sink)))
        if self._stdin_src >= 0:
            dst = self._master if self.paths.terminal else self._stdin_dst
            self._stdin_pump = asyncio.create_task(self._pump_in(self._stdin_src, dst))

    async def _start_attach(self) -> None:
        """Listen for attach clients; the stdin pipe (or the terminal) becomes theirs."""
        options = self._attach_options
        if options is None:
            return
        stdin, owns = -1, False
        if options.stdin and self.paths.terminal:
            stdin = self._master
        elif self._attach_stdin >= 0:
            stdin, owns = self._attach_stdin, True
            self._owned.remove(stdin)
            self._attach_stdin = -1
            aio.set_nonblocking(stdin)
            if self._stdin_closing:  # CloseIO came first
                aio.close_fd(stdin)
                stdin = -1
        self._attach = AttachServer(self._attach_socket, tty=self.paths.terminal, stdin=stdin,
                                    stdin_once=options.stdin_once, owns_stdin=owns)
        await self._attach.start()

    async def _receive_master(self) -> int:
        listener = self._listener
        if listener is None:
            raise CtrpyError("no console socket")
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), CONSOLE_TIMEOUT)
            with conn:
                conn.settimeout(CONSOLE_TIMEOUT)
                _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        except (OSError, TimeoutError) as exc:
            raise CtrpyError(f"failed to receive the console master: {exc}") from None
        finally:
            self._close_console_socket()
        if not fds:
            raise CtrpyError("the runtime sent no console master")
        for extra in fds[1:]:
            aio.close_fd(extra)
        return fds[0]

    def _close_console_socket(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.console_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.console_socket)
            self.console_socket = None

    async def _pump_out(self, src: int, sink: int) -> None:
        try:
            while True:
                data = await aio.read_some(src)
                if not data:
                    return
                await aio.write_all(sink, data)
        except OSError:
            return
        finally:
            if src != self._master:
                self._close_owned(src)
            self._close_owned(sink)

    async def _pump_log(self, src: int, stream: bytes, log_file: crilog.LogFile | None, max_line: int) -> None:
        """Copy one output stream into a CRI log, line by line, until end of file (or close()),
        and to the attach clients as it comes.

        The unterminated rest is written as partial records however the copy ends.
        """
        lines = crilog.LineSplitter(max_line)
        kind = attachproto.STDOUT if stream == crilog.STDOUT else attachproto.STDERR
        try:
            while True:
                data = await aio.read_some(src)
                if not data:
                    return
                if log_file is not None:
                    log_file.write(stream, lines.feed(data))
                if self._attach is not None:
                    self._attach.output(kind, data)
        except OSError:
            return
        finally:
            if log_file is not None:
                log_file.write(stream, lines.finish())
            if src != self._master:
                self._close_owned(src)

    def reopen_logs(self) -> None:
        """Reopen every CRI log file by its path (after rotation); CtrpyError on failure."""
        for log_file in self._logs.values():
            log_file.reopen()

    async def _pump_in(self, src: int, dst: int) -> None:
        try:
            if not self._stdin_is_fifo:
                # A regular file: copy it and end stdin, no need to wait for CloseIO.
                while data := os.read(src, aio.CHUNK):
                    await aio.write_all(dst, data)
                return
            loop = asyncio.get_running_loop()
            while not self._stdin_closing:
                wake: asyncio.Future[None] = loop.create_future()
                self._stdin_wake = wake
                loop.add_reader(src, _wake, wake)
                try:
                    await wake  # readable, or close_stdin() was called
                finally:
                    loop.remove_reader(src)
                    self._stdin_wake = None
                while chunk := aio.read_available(src):
                    await aio.write_all(dst, chunk)
        except OSError:
            return
        finally:
            self._close_owned(src)
            if dst != self._master:
                self._close_owned(dst)

    def close_stdin(self) -> None:
        """CloseIO: deliver what is buffered in the stdin FIFO, then close the process's stdin."""
        self._stdin_closing = True
        if self._stdin_wake is not None:
            _wake(self._stdin_wake)
        if self._attach is not None and not self.paths.terminal:
            job = asyncio.ensure_future(self._attach.close_stdin())
            self._attach_jobs.add(job)
            job.add_done_callback(self._attach_jobs.discard)

    def resize(self, width: int, height: int) -> None:
        """Set the pty's window size (TIOCSWINSZ); raises CtrpyError when there is no pty yet."""
        if self._master < 0:
            raise CtrpyError("process has no terminal")
        fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until all output has been copied out."""
        pending = [t for t in self._pumps if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        if self._attach is not None:
            await self._attach.finish()  # the process is gone: its attach clients are done

    async def close(self) -> None:
        """Stop copying and close everything; stop the logging binary."""
        self.close_stdin()
        tasks = [*self._pumps] + ([self._stdin_pump] if self._stdin_pump else [])
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._attach is not None:
            await self._attach.finish()
            await asyncio.gather(*self._attach_jobs, return_exceptions=True)
        self._close_console_socket()
        for fd in self._after_start + self._owned:
            aio.close_fd(fd)
        self._after_start.clear()
        self._owned.clear()
        for log_file in self._logs.values():
            log_file.close()
        self._logs.clear()
        if self._logger is not None:
            await _stop_logger(self._logger)
            self._logger = None

    def _close_owned(self, fd: int) -> None:
        if fd in self._owned:
            self._owned.remove(fd)
            aio.close_fd(fd)


async def _stop_logger(logger: Child) -> None:
    # The logger sees EOF when the container's output closes; give it time to flush.
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            logger.kill(sig)
        try:
            await asyncio.wait_for(logger.wait(), 2.0)
            return
        except TimeoutError:
            continue


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _is_fifo_uri(path: str) -> bool:
    """Whether output to ``path`` is copied through a pipe (FIFOs) or written directly."""
    if not path or path.startswith(("binary://", "file://")) or crilog.is_uri(path):
        return False
    return _is_fifo(_strip(path))


def _strip(path: str) -> str:
    return path[len("fifo://") :] if path.startswith("fifo://") else path
