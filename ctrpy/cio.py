"""Client-side stdio of a task or an exec process: FIFOs, and copying to and from them.

As with ctr, the client makes a fresh directory (``/run/ctrpy/fifo/<random>`` by default, or
under ``--fifo-dir``) holding the FIFOs ``<id>-stdin``, ``<id>-stdout`` and ``<id>-stderr``
(no stderr with a terminal), and passes their paths in Tasks.Create or Tasks.Exec; the daemon's
shim opens the other ends. :class:`FIFOSet` makes, finds again (``load``, from the paths
Tasks.Get returns) and removes them. :data:`NULL_IO` sends no paths; :func:`log_uri` puts one
``file://``, ``binary://`` or ``ctrpy-crilog://`` URI in both stdout and stderr and makes no
FIFOs.

:class:`Attached` copies between this process's stdin/stdout/stderr and the FIFOs, one thread
per stream:

- output FIFOs are opened for reading at once, non-blocking, and polled: a FIFO reports
  end-of-file only after a writer came and went, so opening before the shim does is safe;
- the stdin FIFO is opened read-write, which never blocks and keeps what we write buffered for
  the shim. Copying stdin starts only when :meth:`Attached.start_stdin` is called, once the
  task exists: at end of input the FIFO is closed and the ``on_eof`` callback (Tasks.CloseIO)
  runs, and it is registered before the first byte is read (ctr's race G18 cannot happen);
- every thread can be woken and stopped; :meth:`Attached.wait` waits until the outputs have
  reached end-of-file, which the shim guarantees once the process has exited.

:class:`Held` only holds our ends open while a detached process is created and started.

:class:`Console` is the local terminal for ``-t``: raw mode and its size.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import stat
import struct
import sys
import tempfile
import termios
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass

from ctrpy.errors import InvalidArgument

DEFAULT_FIFO_DIR = "/run/ctrpy/fifo"
CHUNK = 32 * 1024
# When told to stop, an output thread still copies what is buffered in the FIFO (a pipe holds
# 64 KiB by default), but no more than this from a writer that keeps writing.
DRAIN_LIMIT = 1 << 20
FIFO_MODE = 0o700


@dataclass(frozen=True)
class Config:
    """Where a process's stdio goes, as Tasks.Create and Tasks.Exec carry it."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    def paths(self) -> tuple[str, str, str]:
        return self.stdin, self.stdout, self.stderr


NULL_IO = Config()


def log_uri(uri: str) -> Config:
    """Both outputs to ``uri`` (``file:///path``, ``binary:///path?args``, or
    ``ctrpy-crilog:///path`` for a log in Kubernetes' CRI format); no stdin.

    Raises InvalidArgument for other schemes."""
    if not uri.startswith(("file://", "binary://", "ctrpy-crilog://")):
        raise InvalidArgument(f'log uri "{uri}": must be file://, binary:// or ctrpy-crilog://')
    return Config(stdout=uri, stderr=uri)


def is_fifo(path: str) -> bool:
    """Whether ``path`` exists and is a FIFO."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


class FIFOSet:
    """The FIFOs of one process, and how to remove them."""

    def __init__(self, config: Config, directory: str | None = None) -> None:
        self.config = config
        self.directory = directory

    @classmethod
    def new(cls, process_id: str, *, terminal: bool, fifo_dir: str | None = None) -> FIFOSet:
        """Make a fresh directory under ``fifo_dir`` (default ``/run/ctrpy/fifo``) with the
        FIFOs of ``process_id``. Raises OSError."""
        root = fifo_dir or DEFAULT_FIFO_DIR
        os.makedirs(root, mode=FIFO_MODE, exist_ok=True)
        directory = tempfile.mkdtemp(dir=root, prefix="")
        try:
            config = Config(
                stdin=os.path.join(directory, f"{process_id}-stdin"),
                stdout=os.path.join(directory, f"{process_id}-stdout"),
                stderr="" if terminal else os.path.join(directory, f"{process_id}-stderr"),
                terminal=terminal,
            )
            for path in config.paths():
                if path:
                    os.mkfifo(path, FIFO_MODE)
        except BaseException:
            with contextlib.suppress(OSError):
                _remove_tree(directory)
            raise
        return cls(config, directory)

    @classmethod
    def load(cls, config: Config) -> FIFOSet:
        """The FIFOs of a process that already exists (paths from Tasks.Get)."""
        return cls(config)

    def remove(self) -> None:
        """Remove the FIFOs (only paths that are FIFOs: never a log file) and their directory
        when it is then empty. Missing ones are fine."""
        dirs = set()
        for path in self.config.paths():
            if path and is_fifo(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                dirs.add(os.path.dirname(path))
        if self.directory:
            dirs.add(self.directory)
        for directory in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(directory)


def _remove_tree(directory: str) -> None:
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


@dataclass(frozen=True)
class Streams:
    """The local ends: file descriptors to read stdin from and write outputs to (None: do not
    attach that stream)."""

    stdin: int | None = 0
    stdout: int | None = 1
    stderr: int | None = 2


class _Wake:
    """A pipe that wakes a thread out of poll()."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.is_set = False

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            with contextlib.suppress(OSError):
                os.write(self.write_fd, b"x")

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write everything to our stdout or stderr (waiting for room should it be non-blocking)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def _write_fifo(fd: int, data: bytes, wake: _Wake) -> bool:
    """Write everything to a non-blocking FIFO, waiting for room; False when woken first."""
    view = memoryview(data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.register(wake.read_fd, select.POLLIN)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            if any(ready == wake.read_fd for ready, _ in poller.poll()):
                return False
    return True


class Attached:
    """Copies this process's stdio to and from a :class:`FIFOSet`, in threads."""

    def __init__(self, fifos: FIFOSet, streams: Streams | None = None) -> None:
        self.fifos = fifos
        self.streams = streams or Streams()
        self._wake = _Wake()
        self._outputs: list[threading.Thread] = []
        self._fds: list[int] = []
        self._stdin_fifo = -1
        self._stdin_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        config = fifos.config
        try:
            if config.stdin and self.streams.stdin is not None:
                self._stdin_fifo = self._open(config.stdin, os.O_RDWR | os.O_NONBLOCK)
            for path, sink in ((config.stdout, self.streams.stdout), (config.stderr, self.streams.stderr)):
                if path and sink is not None:
                    fd = self._open(path, os.O_RDONLY | os.O_NONBLOCK)
                    thread = threading.Thread(target=self._copy_out, args=(fd, sink), daemon=True,
                                              name=f"ctrpy-cio-{os.path.basename(path)}")
                    self._outputs.append(thread)
        except BaseException:
            self._close_fds()
            self._wake.close()
            raise
        for thread in self._outputs:
            thread.start()

    def _open(self, path: str, flags: int) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd

    def _close_fds(self) -> None:
        with self._lock:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()

    def _copy_out(self, src: int, sink: int) -> None:
        poller = select.poll()
        poller.register(src, select.POLLIN)
        poller.register(self._wake.read_fd, select.POLLIN)
        draining = False
        left = DRAIN_LIMIT
        broken = False
        while True:
            if not draining and any(fd == self._wake.read_fd for fd, _ in poller.poll()):
                draining = True  # stop: copy what is there (not what keeps coming), then end
            try:
                data = os.read(src, CHUNK)
            except BlockingIOError:
                if draining:
                    return
                continue
            except OSError:
                return
            if not data:
                return
            if draining:
                left -= len(data)
                if left < 0:
                    return
            if not broken:
                try:
                    _write_all(sink, data)
                except OSError:
                    broken = True  # our output went away: keep reading so the container never blocks

    def start_stdin(self, on_eof: Callable[[], None] | None = None) -> None:
        """Start copying our stdin into the FIFO; at end of input close the FIFO and call
        ``on_eof`` (which sends Tasks.CloseIO). Call once the process exists."""
        if self._stdin_fifo < 0 or self.streams.stdin is None or self._stdin_thread is not None:
            return
        self._stdin_thread = threading.Thread(
            target=self._copy_in, args=(self.streams.stdin, self._stdin_fifo, on_eof), daemon=True,
            name="ctrpy-cio-stdin")
        self._stdin_thread.start()

    def _copy_in(self, src: int, fifo: int, on_eof: Callable[[], None] | None) -> None:
        poller = select.poll()
        poller.register(src, select.POLLIN)
        poller.register(self._wake.read_fd, select.POLLIN)
        while True:
            if any(fd == self._wake.read_fd for fd, _ in poller.poll()):
                return
            try:
                data = os.read(src, CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                data = b""  # an unreadable stdin is as good as an empty one
            if not data:
                break
            try:
                if not _write_fifo(fifo, data, self._wake):
                    return
            except OSError:
                return
        # End of input: close our end first, so that a shim reading the FIFO sees EOF after
        # everything we wrote, then tell the daemon.
        with self._lock:
            if fifo in self._fds:
                self._fds.remove(fifo)
                os.close(fifo)
        if on_eof is not None:
            with contextlib.suppress(Exception):
                on_eof()

    def wait(self) -> None:
        """Wait until every output stream has reached end-of-file."""
        for thread in self._outputs:
            thread.join()

    def cancel(self) -> None:
        """Make every thread stop soon (outputs copy what is already buffered first)."""
        self._wake.set()

    def close(self, remove: bool = True) -> None:
        """Stop copying, close our FIFO ends and (with ``remove``) remove the FIFOs. Safe to
        call more than once."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        for thread in self._outputs:
            thread.join()
        stdin_busy = False
        if self._stdin_thread is not None:
            # It stops at once unless it is still sending CloseIO; a daemon thread, let it go.
            self._stdin_thread.join(0.5)
            stdin_busy = self._stdin_thread.is_alive()
        self._close_fds()
        if not stdin_busy:
            self._wake.close()
        if remove:
            self.fifos.remove()


class Held:
    """Our ends of a :class:`FIFOSet`, opened but not copied (``run -d``).

    A shim may insist on a reader being there when it opens an output FIFO for writing
    (containerd's does), so the ends are held open while the process is created and started,
    then closed; the shim keeps the FIFOs usable for a later ``tasks attach``.
    """

    def __init__(self, fifos: FIFOSet) -> None:
        self.fifos = fifos
        self._fds: list[int] = []
        config = fifos.config
        try:
            if config.stdin:
                self._fds.append(os.open(config.stdin, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
            for path in (config.stdout, config.stderr):
                if path:
                    self._fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except BaseException:
            self.close(remove=False)
            raise

    def close(self, remove: bool = True) -> None:
        """Close our ends; with ``remove``, remove the FIFOs too."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if remove:
            self.fifos.remove()


class Console:
    """The local terminal (the first of stdin, stdout, stderr that is one)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[int | list[bytes | int]] | None = None

    @classmethod
    def current(cls) -> Console | None:
        """The terminal this process runs in, or None when it has none."""
        for fd in (0, 1, 2):
            with contextlib.suppress(OSError):
                if os.isatty(fd):
                    return cls(fd)
        return None

    def set_raw(self) -> None:
        """Raw mode (no echo, no line editing, no signals from keys), until :meth:`reset`."""
        if self._saved is None:
            self._saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSADRAIN)

    def reset(self) -> None:
        """Restore the terminal as it was before :meth:`set_raw`."""
        if self._saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def size(self) -> tuple[int, int]:
        """(width, height) in characters; (0, 0) when the terminal does not say."""
        try:
            packed = fcntl.ioctl(self.fd, termios.TIOCGWINSZ, b"\0" * 8)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                return 0, 0
            raise
        rows, cols, _, _ = struct.unpack("HHHH", packed)
        return cols, rows


def stdout_flush() -> None:
    """Flush Python's own buffered stdout/stderr before threads write to fds 1 and 2."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
