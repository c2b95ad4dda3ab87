"""The shim's one reaper: every child is started here and every exit is collected here.

The shim is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so besides the processes it starts
(runc, logging binaries) it also inherits the container's processes once runc has exited. A
single SIGCHLD-driven loop calls ``waitpid(-1, WNOHANG)`` until nothing is left, so no other
``waitpid`` can steal a status. Each exit goes to exactly one place:

- a child started by :meth:`Reaper.spawn` resolves its :class:`Child` (``await child.wait()``);
- any other pid (a container process) goes to the ``on_exit`` callback, and is also recorded
  by every open :meth:`Reaper.collect` window. A window closes the race where a container
  process exits before runc has returned from ``create``/``start``/``exec`` and before the
  shim knows the pid: open the window, run runc, read the pid file, look the pid up in the
  window, then close it (nothing awaits in between, so no exit can slip through).

Children are started with ``posix_spawn``: no Python runs in the child, SIGPIPE and SIGXFSZ
(which Python ignores) are reset to their defaults, and only the descriptors named in ``fds``
reach the child (Python opens everything close-on-exec).
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

PR_SET_CHILD_SUBREAPER = 36

ExitCallback = Callable[[int, int], None]


def exit_status(wait_status: int) -> int:
    """A ``waitpid`` status as an exit status: the exit code, or 128 + signal number."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def set_child_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants; raises OSError on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


class Child:
    """A process started by :meth:`Reaper.spawn`."""

    def __init__(self, pid: int, argv: Sequence[str], done: asyncio.Future[int]) -> None:
        self.pid = pid
        self.argv = tuple(argv)
        self._done = done

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (128 + signal when killed), else None."""
        return self._done.result() if self._done.done() else None

    async def wait(self) -> int:
        """Wait for the child to exit and return its exit status."""
        return await asyncio.shield(self._done)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the child unless it has already been reaped."""
        if not self._done.done():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


class Reaper:
    """Starts children and dispatches every exit; see the module docstring."""

    def __init__(self, on_exit: ExitCallback | None = None) -> None:
        self.on_exit = on_exit
        self._children: dict[int, asyncio.Future[int]] = {}
        self._windows: list[dict[int, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become a child subreaper and handle SIGCHLD on ``loop``."""
        set_child_subreaper()
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        # Children may have exited before the handler was in place.
        self.reap()

    def close(self) -> None:
        """Stop handling SIGCHLD."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_signal_handler(signal.SIGCHLD)
        self._loop = None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        fds: Mapping[int, int] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start ``argv`` (looked up in PATH) with ``fds`` mapping child fd -> our fd.

        Child descriptors not in ``fds`` among 0, 1 and 2 are /dev/null. Raises OSError when
        the program cannot be started (``FileNotFoundError`` for a missing binary).
        """
        if self._loop is None:
            raise RuntimeError("reaper is not installed")
        wanted = dict(fds or {})
        opened: list[int] = []
        try:
            for target in (0, 1, 2):
                if target not in wanted:
                    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    opened.append(null)
                    wanted[target] = null
            actions: list[tuple[int, int, int]] = []
            # Sources are first duplicated above every target, so that moving them onto their
            # targets never overwrites another source. Just above, not at some high number: a
            # descriptor past the table's 64 slots makes the kernel grow the table of this
            # multi-threaded process, and that waits for an RCU grace period (7-17 ms here).
            floor = max(wanted) + 1
            for target, source in sorted(wanted.items()):
                high = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, floor)
                opened.append(high)
                actions.append((os.POSIX_SPAWN_DUP2, high, target))
            pid = os.posix_spawnp(
                argv[0],
                list(argv),
                dict(env) if env is not None else dict(os.environ),
                file_actions=actions,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                setsigmask=(),
            )
        finally:
            for fd in opened:
                os.close(fd)
        done: asyncio.Future[int] = self._loop.create_future()
        self._children[pid] = done
        return Child(pid, argv, done)

    @contextmanager
    def collect(self) -> Iterator[dict[int, int]]:
        """Record the exits of non-children (pid -> status) for the length of a ``with`` block."""
        window: dict[int, int] = {}
        self._windows.append(window)
        try:
            yield window
        finally:
            self._windows.remove(window)

    def reap(self) -> None:
        """Collect every exited child and dispatch each exit (the SIGCHLD handler)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._dispatch(pid, exit_status(status))

    def _dispatch(self, pid: int, status: int) -> None:
        done = self._children.pop(pid, None)
        if done is not None:
            if not done.done():
                done.set_result(status)
            return
        for window in self._windows:
            window[pid] = status
        if self.on_exit is not None:
            self.on_exit(pid, status)
