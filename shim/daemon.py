"""Turning the current process into a detached shim, by forking.

:func:`fork_shim` forks twice: the first child calls ``setsid`` and forks the shim, then exits
at once, so the shim is in its own session, is nobody's child (it is re-parented to init or the
nearest subreaper) and survives whatever started it being SIGKILLed. The shim then holds no
descriptor of its starter: 0 and 1 are /dev/null, 2 is ``<bundle>/shim.log``, and everything
else is closed except the reply descriptor. On the reply descriptor the shim writes one JSON
line, ``{"address": ..., "pid": ...}`` once it serves or ``{"error": ...}``, and closes it.

Both ways of starting a shim use this: ``ctrpy-shim start`` (reply through a pipe, then print
the address) and the template process (reply straight to the requester's connection). Forking
from a process that has already imported everything a shim runs is what makes a shim cheap: the
child shares the parent's pages, makes its own event loop and ttrpc server (no thread of its
own), and imports nothing more.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import files
from .config import PROCESS_NAME, ShimConfig
from .server import serve

PR_SET_NAME = 15
MAX_REPLY = 64 * 1024


def set_process_name(name: bytes = PROCESS_NAME) -> None:
    """Set this process's ``comm`` (what ps and /proc/PID/comm show)."""
    _libc().prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, loaded once (in the template, so its shims and spares share it)."""
    return ctypes.CDLL(None, use_errno=True)


def configure_logging() -> None:
    """Log to stderr (``shim.log`` once the shim has moved it there); a no-op the second time.

    The template calls it before forking, so that each shim inherits the configured logger
    instead of building (and paying the pages for) its own.
    """
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s ctrpy-shim: %(message)s"
    )


class Reply:
    """The shim's one reply to whoever started it, on ``fd``: its address, or an error. Called
    by the server once it serves; ``sent`` tells a failure after that from one before it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sent = False

    def __call__(self, reply: dict[str, Any]) -> None:
        self.sent = True
        write_reply(self.fd, reply)

    def error(self, exc: BaseException) -> None:
        """Report ``exc``, unless the reply went already."""
        if not self.sent:
            self({"error": str(exc) or type(exc).__name__})


def write_reply(fd: int, reply: dict[str, Any]) -> None:
    """Write one JSON line to ``fd`` and close it (errors ignored: the reader may be gone)."""
    try:
        os.write(fd, (json.dumps(reply) + "\n").encode())
    except OSError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def read_reply(fd: int) -> dict[str, Any]:
    """Read a reply written by :func:`write_reply` (blocking until it is closed)."""
    chunks: list[bytes] = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
        if sum(map(len, chunks)) > MAX_REPLY:
            break
    text = b"".join(chunks).decode(errors="replace").strip()
    if not text:
        return {"error": "shim exited before it was ready"}
    try:
        reply = json.loads(text.splitlines()[0])
    except ValueError:
        return {"error": f"unreadable reply from shim: {text[:200]}"}
    return reply if isinstance(reply, dict) else {"error": "malformed reply from shim"}


def fork_shim(config: ShimConfig, reply_fd: int, *, inherited: Sequence[socket.socket] = ()) -> None:
    """Fork a detached shim for ``config`` that reports on ``reply_fd``; returns at once.

    ``inherited`` are socket objects of the caller that the shim must drop without closing
    them for the caller. The caller still owns (and should close) its ``reply_fd``.
    """

    def become_shim() -> int:
        return _become_shim(config, reply_fd, inherited)

    fork_detached(become_shim, reply_fd)


def fork_detached(body: Callable[[], int], reply_fd: int | None = None) -> None:
    """Run ``body`` in a detached grandchild (its own session, nobody's child); returns once
    the intermediate child has exited. An exception in ``body`` is written to ``reply_fd``."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            code = body()
        except BaseException as exc:  # anything must become a reply
            if reply_fd is not None:
                write_reply(reply_fd, {"error": f"shim failed to start: {exc}"})
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def open_log(bundle: str) -> int:
    """``<bundle>/shim.log``, opened for appending."""
    return os.open(os.path.join(bundle, files.SHIM_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def detach_descriptors(inherited: Sequence[socket.socket], stderr_fd: int, keep: int) -> None:
    """0 and 1 become /dev/null, 2 ``stderr_fd``; every other descriptor but ``keep`` is
    closed. ``inherited`` are the starter's socket objects: detached first, so that their
    objects never close a descriptor number this process reuses."""
    for sock in inherited:
        sock.detach()
    null_fd = os.open(os.devnull, os.O_RDWR)
    os.dup2(null_fd, 0)
    os.dup2(null_fd, 1)
    os.dup2(stderr_fd if stderr_fd >= 0 else null_fd, 2)
    # Everything but 0-2 and ``keep`` (close_range(2) where the kernel has it).
    os.closerange(3, keep)
    os.closerange(keep + 1, max(os.sysconf("SC_OPEN_MAX"), keep + 2))


def _become_shim(config: ShimConfig, reply_fd: int, inherited: Sequence[socket.socket]) -> int:
    if not os.path.isdir(config.bundle):
        for sock in inherited:
            sock.detach()
        write_reply(reply_fd, {"error": f'bundle "{config.bundle}" does not exist'})
        return 1
    detach_descriptors(inherited, open_log(config.bundle), reply_fd)
    os.chdir(config.bundle)
    os.umask(0o022)
    set_process_name()
    configure_logging()
    report = Reply(reply_fd)
    try:
        asyncio.run(serve(config, report))
    except BaseException as exc:
        logging.getLogger("ctrpy.shim").exception("shim failed")
        report.error(exc)
        return 1
    return 0


def start(config: ShimConfig) -> dict[str, Any]:
    """``ctrpy-shim start``: fork the shim and wait for its reply (``address``/``pid`` or ``error``)."""
    r, w = os.pipe()
    try:
        fork_shim(config, w)
    finally:
        os.close(w)
    try:
        return read_reply(r)
    finally:
        os.close(r)
