"""One forwarded connection: dialled inside the pod's network namespace, then copied both ways.

Dialling inside the pod. A socket belongs to the network namespace it was created in, whatever
thread uses it later. So, as containerd's ``netns.Do``, a throw-away thread ``setns(2)``s into the
pod's pinned namespace file (only that thread moves), creates and connects the socket to
``localhost:<port>`` -- IPv4 first, then IPv6, containerd's order -- and ends, taking its
namespace membership with it (CPython never reuses an OS thread). The connected socket comes back
to the event loop, which copies bytes both ways; a hostNetwork pod's connection is made in the
host's namespace. Each direction's end is passed on as a half-close (FIN on the stream, shutdown of
the socket's write side), so a client that sends a request and half-closes still gets the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading
from dataclasses import dataclass
from typing import Protocol

import structlog

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import CtrpyError

from ..sandboxes import Sandboxes

log = structlog.get_logger(__name__)

#: How long, once the pod closed its side, the client's remaining bytes are waited for
#: (containerd: one second, as socat).
GRACE = 1.0
#: How long a connect inside the pod may take (loopback: refused or accepted at once, unless
#: the listener's backlog is full).
CONNECT_TIMEOUT = 10.0
CHUNK = 32 * 1024

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class ForwardError(Exception):
    """Forwarding one connection failed (the sandbox is gone, its netns closed, nothing listens
    on the port); ``message`` is what goes to the client's error stream. Not a CtrpyError: it
    never reaches a gRPC status, only a stream."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- dialling inside the pod ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a sandbox's ports are: its pinned netns file, or the host's namespace (``netns``
    empty) for a hostNetwork pod."""

    sandbox_id: str
    netns: str

    @property
    def where(self) -> str:
        return self.netns or "host"


def target_of(sandboxes: Sandboxes, sandbox_id: str) -> Target:
    """Looked up for each connection, as containerd does: the pod may have stopped since."""
    try:
        record = sandboxes.get(sandbox_id)
    except CtrpyError as exc:
        raise ForwardError(f'failed to find sandbox "{sandbox_id}" in store: {exc.message}') from exc
    options = Sandboxes.config_of(record).linux.security_context.namespace_options
    if options.network == api.NODE:
        return Target(record.id, "")
    if sandboxes.network_closed(record):
        raise ForwardError(f'network namespace for sandbox "{record.id}" is closed')
    return Target(record.id, record.netns)


def _go_error(family: str, host: str, port: int, exc: OSError) -> str:
    """Go's words for a failed dial (``dial tcp4 127.0.0.1:80: connect: connection refused``)."""
    reason = exc.strerror or str(exc)
    if reason:
        reason = reason[0].lower() + reason[1:]
    return f"dial {family} {host}:{port}: connect: {reason}"


def _connect_in(netns: str, sandbox_id: str, port: int) -> socket.socket:
    """Run on a throw-away thread: join ``netns`` (if any), connect to localhost:port."""
    if netns:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ForwardError(f"failed to open network namespace {netns}: {exc.strerror or exc}") from exc
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise ForwardError(f"failed to enter network namespace {netns}: {os.strerror(err)}")
        finally:
            os.close(fd)
    failures: list[str] = []
    for family, host, name in ((socket.AF_INET, "127.0.0.1", "tcp4"), (socket.AF_INET6, "::1", "tcp6")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect((host, port))
        except OSError as exc:
            sock.close()
            shown = f"[{host}]" if family == socket.AF_INET6 else host
            failures.append(_go_error(name, shown, port, exc))
            continue
        sock.setblocking(False)
        return sock
    raise ForwardError(f'failed to connect to localhost:{port} inside namespace "{sandbox_id}", '
                       f"IPv4: {failures[0]} IPv6 {failures[1]} ")


async def dial(target: Target, port: int) -> socket.socket:
    """A non-blocking socket connected to ``localhost:port`` in the target's namespace."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[socket.socket] = loop.create_future()

    def deliver(sock: socket.socket | None, error: BaseException | None) -> None:
        if done.cancelled():
            if sock is not None:
                sock.close()
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(sock)  # type: ignore[arg-type]

    def run() -> None:
        sock: socket.socket | None = None
        error: BaseException | None = None
        try:
            sock = _connect_in(target.netns, target.sandbox_id, port)
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        try:
            loop.call_soon_threadsafe(deliver, sock, error)
        except RuntimeError:  # the loop is closed: ctrpyd is stopping
            if sock is not None:
                sock.close()

    threading.Thread(target=run, name=f"portforward-dial-{port}", daemon=True).start()
    return await done


# -- copying ------------------------------------------------------------------------------------


class Peer(Protocol):
    """The client's end of one forwarded connection, whatever the transport."""

    async def read(self) -> bytes:
        """The next bytes from the client; b"" once it half-closed. Raises ClientGone when the
        stream was reset or the connection dropped."""

    async def write(self, data: bytes) -> None:
        """Send bytes to the client; raises ClientGone when it can no longer take them."""

    async def close_write(self) -> None:
        """Tell the client that the pod's side ended (FIN), if the transport can say so."""


class ClientGone(Exception):
    """The client's stream or connection ended abruptly: stop quietly, nothing to report."""


async def forward(sandboxes: Sandboxes, sandbox_id: str, port: int, peer: Peer) -> None:
    """Connect to ``port`` in the sandbox and copy both ways until both sides are done (or the
    client is gone, or the pod closed and the client's rest did not come within GRACE).
    Raises ForwardError with the text for the error stream."""
    target = target_of(sandboxes, sandbox_id)
    try:
        sock = await dial(target, port)
    except ForwardError as exc:
        raise ForwardError(f'failed to execute portforward in network namespace "{target.where}": '
                           f"{exc.message}") from exc
    log.debug("port forward connected", sandbox_id=target.sandbox_id, port=port, netns=target.where)
    try:
        await _pump(sock, peer)
    except OSError as exc:
        raise ForwardError(f'failed to execute portforward in network namespace "{target.where}": {exc}') from exc
    finally:
        sock.close()


async def _pump(sock: socket.socket, peer: Peer) -> None:
    loop = asyncio.get_running_loop()

    async def to_pod() -> None:
        while data := await peer.read():
            await loop.sock_sendall(sock, data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    async def to_client() -> None:
        while data := await loop.sock_recv(sock, CHUNK):
            await peer.write(data)
        await peer.close_write()

    up, down = asyncio.ensure_future(to_pod()), asyncio.ensure_future(to_client())
    try:
        await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        if up.done() and not up.cancelled() and up.exception() is None and not down.done():
            await asyncio.wait((down,))  # the client half-closed: the pod may still answer
        elif not up.done():
            await asyncio.wait((up,), timeout=GRACE)
        for job in (up, down):  # the pod's socket failing is reported; the client leaving is not
            error = job.exception() if job.done() and not job.cancelled() else None
            if error is not None and not isinstance(error, ClientGone):
                raise error
    finally:
        for job in (up, down):
            job.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
