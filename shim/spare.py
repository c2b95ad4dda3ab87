"""A spare shim: forked by the template ahead of time, claimed by the next Create.

A shim forked on request spends most of its start-up on things that do not depend on its task:
the double fork, an asyncio loop, the reaper, the ttrpc server. A spare does all of that
before anyone asks, listening on a socket of its own (``<socket dir>/spare-<pid>``), and waits
on a ``SOCK_SEQPACKET`` pair shared with its template. (Over gRPC it also called itself once, to
get the server's lazily made parts made: 2-3 ms of the Create that claimed it. Over ttrpc that
call measured no faster and 0.2 MiB bigger, ``bench/shim_cost.md``, so it went.) A claim is
one message on that pair: the
fork request's JSON line, with the requester's connection as an ``SCM_RIGHTS`` descriptor. What
the shim must learn then is all in the request: its id and namespace (its socket path follows),
its bundle (log, working directory, ``address`` and ``shim.pid``), ctrpyd's address (events).
The listening socket is renamed to the task's socket path, which keeps it serving (a unix
socket is found by its inode), so nothing is bound after the claim. Shims are not put in
cgroups of their own, so the spare has nothing to move.

Until it is claimed a spare is no task's shim: its ``comm`` is ``ctrpy-spare`` (a claimed one
renames itself ``ctrpy-shim``), which is how leak checks tell it apart. It exits when the pair
reaches end of file unclaimed: when its template exits, and so with ctrpyd.

Template side (:class:`SpareSlot`): the spare writes ``ready`` on the pair once it listens, and
only a ready spare is handed a request; otherwise the template forks the shim as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Sequence

from .config import ShimConfig
from .daemon import (
    Reply,
    configure_logging,
    detach_descriptors,
    fork_detached,
    open_log,
    set_process_name,
)
from .server import Listening, claim_socket, listen, serve

SPARE_NAME = b"ctrpy-spare"
# The spare's socket in the shims' socket directory is SPARE_PREFIX + its pid.
SPARE_PREFIX = "spare-"
READY = b"ready"
MAX_CLAIM = 64 * 1024
# Spares that die before they are ready, in a row, after which the template forks on request only.
MAX_FAILURES = 3

log = logging.getLogger("ctrpy.shim")


def spare_socket(socket_dir: str, pid: int) -> str:
    """Where the spare with ``pid`` listens until it is claimed."""
    return os.path.join(socket_dir, f"{SPARE_PREFIX}{pid}")


class SpareSlot:
    """The template's one spare: forks it, hands it a request, replaces it."""

    def __init__(self, socket_dir: str) -> None:
        self.socket_dir = socket_dir
        self.ctl: socket.socket | None = None
        self.ready = False
        self.failures = 0

    def fork(self, inherited: Sequence[socket.socket]) -> None:
        """Fork a new spare (unless too many died unready); ``self.ctl`` is its pair's end."""
        if self.ctl is not None or self.failures >= MAX_FAILURES:
            return
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        keep = [*inherited, mine]

        def become_spare() -> int:
            return _become_spare(self.socket_dir, theirs, keep)

        try:
            fork_detached(become_spare)
        except OSError:
            mine.close()
            self.failures += 1
            return
        finally:
            theirs.close()
        self.ctl, self.ready = mine, False

    def on_event(self) -> None:
        """The pair is readable: the spare is ready, or it died (it is then dropped)."""
        assert self.ctl is not None
        try:
            message = self.ctl.recv(64)
        except OSError:
            message = b""
        if message == READY:
            self.ready = True
            self.failures = 0
            return
        self._drop()
        self.failures += 1

    def hand(self, request: bytes, fd: int) -> bool:
        """Give the ready spare ``request`` and the requester's connection ``fd`` (which the
        caller still closes); False when there is no ready spare or it is gone."""
        if self.ctl is None or not self.ready:
            return False
        try:
            socket.send_fds(self.ctl, [request], [fd])
            return True
        except OSError:
            return False
        finally:
            self._drop()  # each spare serves one claim

    def _drop(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
        self.ctl, self.ready = None, False

    def close(self) -> None:
        """Close the pair: an unclaimed spare sees end of file and exits."""
        self._drop()


def _become_spare(socket_dir: str, ctl: socket.socket, inherited: Sequence[socket.socket]) -> int:
    detach_descriptors(inherited, -1, ctl.fileno())
    os.chdir("/")
    os.umask(0o022)
    set_process_name(SPARE_NAME)
    configure_logging()
    return asyncio.run(_serve_spare(socket_dir, ctl))


async def _serve_spare(socket_dir: str, ctl: socket.socket) -> int:
    path = spare_socket(socket_dir, os.getpid())
    listening = await listen(path)
    claim: tuple[bytes, int] | None = None
    try:
        ctl.sendall(READY)
        claim = await _claimed(ctl)
    except OSError:
        pass
    finally:
        ctl.close()
    if claim is None:  # the template is gone (or refused us): nobody will claim this spare
        await _abandon(listening, path)
        return 0
    request, reply_fd = claim
    report = Reply(reply_fd)
    try:
        config = _take(request, path)
    except BaseException as exc:
        report.error(exc)
        await _abandon(listening, path)
        return 1
    try:
        await serve(config, report, listening)
    except BaseException as exc:
        log.exception("shim failed")
        report.error(exc)
        return 1
    return 0


async def _claimed(ctl: socket.socket) -> tuple[bytes, int] | None:
    """Wait for the claim: the request and the requester's connection; None at end of file."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[bytes, int] | None] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(ctl.fileno())
        try:
            message, fds, _, _ = socket.recv_fds(ctl, MAX_CLAIM, 1)
        except OSError:
            message, fds = b"", []
        if message and len(fds) == 1:
            done.set_result((message, fds[0]))
            return
        for fd in fds:
            os.close(fd)
        done.set_result(None)

    loop.add_reader(ctl.fileno(), readable)
    return await done


def _take(request: bytes, spare_path: str) -> ShimConfig:
    """Become the shim of ``request``: its log, working directory, name and socket path."""
    data = json.loads(request)
    if not isinstance(data, dict):
        raise ValueError("request is not a JSON object")
    config = ShimConfig.from_dict(data)
    if not os.path.isdir(config.bundle):
        raise FileNotFoundError(f'bundle "{config.bundle}" does not exist')
    log_fd = open_log(config.bundle)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.chdir(config.bundle)
    claim_socket(config.socket_path)
    os.rename(spare_path, config.socket_path)
    set_process_name()
    return config


async def _abandon(listening: Listening, path: str) -> None:
    # The socket file goes first: never an entry that no longer answers (ctrpyd doctor would
    # report it), even for the moment the server takes to stop.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    await listening.server.shutdown()
    listening.reaper.close()
