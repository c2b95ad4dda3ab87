"""Finding shims again after ctrpyd restarts.

:func:`recover` walks ``<state>/tasks/*/*``. For each bundle it connects to the shim named in
the bundle's ``address`` file, failing fast when the socket is missing or refuses (no waiting
for a dead shim); the bundles of a pod's tasks name their one shim, and each connects to it.
A live shim is returned with a connected client; for a dead one (or a bundle whose shim never
started) it runs ``ctrpy-shim delete``, which cleans up and reports the exit
the shim had written to the bundle, or status 255 (DESIGN.md, "After a crash"). A shim that
answers in gRPC instead of ttrpc was started by an older ctrpyd: it is left running and its
task reported as not managed (:mod:`.legacyshim`), never cleaned up as dead.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

import structlog

from ctrpy.errors import CtrpyError, NotFound, Unavailable
from ctrpy.shim.config import task_attach_socket
from ctrpy.shim.files import ExitInfo
from ctrpy.ttrpc import socket_path

from .bundle import Bundle, bundles
from .client import DEFAULT_TIMEOUTS, ProcessState, ShimClient, ShimTimeouts, socket_answers
from .launcher import run_shim_delete
from .legacyshim import speaks_grpc

log = structlog.get_logger("ctrpy.runtime")

CONNECT_TIMEOUT = 2.0
CONNECTS_AT_ONCE = 64  # shims asked at once at start-up


@dataclass(frozen=True)
class FoundShim:
    """One bundle found on disk.

    Live: ``client`` is connected, and ``state`` is what the shim answered about the task's
    init process (None when it holds no such task). Dead: ``client`` is None and ``exit`` is
    what the cleanup found (None, with ``error`` set, when the cleanup failed and the bundle is
    still there); ``had_task`` says whether the bundle ever held a task (runc wrote its
    init.pid), so that a create interrupted before that point is not reported as a task that
    ran and exited.
    """

    bundle: Bundle
    client: ShimClient | None = None
    exit: ExitInfo | None = None
    error: str = ""
    had_task: bool = True
    state: ProcessState | None = None

    @property
    def alive(self) -> bool:
        """Whether the shim answered."""
        return self.client is not None


async def recover(
    state_dir: str | os.PathLike[str],
    *,
    runtime_binary: str = "runc",
    connect_timeout: float = CONNECT_TIMEOUT,
    python: str = sys.executable,
    timeouts: ShimTimeouts = DEFAULT_TIMEOUTS,
) -> list[FoundShim]:
    """Reconnect to every live shim under ``state_dir`` and clean up after the dead ones.

    A shim that does not answer State within ``connect_timeout`` (stopped, stuck) counts as
    dead, so start-up never waits longer than that on one shim. The clients returned use
    ``timeouts``.
    """
    limit = asyncio.Semaphore(CONNECTS_AT_ONCE)

    async def reach(bundle: Bundle) -> tuple[ShimClient, ProcessState | None] | str | None:
        """The live shim's client and its task's state; None for a dead shim; for a shim of an
        older ctrpyd, why it is left alone."""
        address = bundle.address()
        if not address:
            return None
        async with limit:
            try:
                return await _reach(
                    address, bundle, timeout=connect_timeout, timeouts=timeouts,
                    attach_socket=task_attach_socket(os.fspath(state_dir), bundle.namespace, bundle.id),
                )  # fmt: skip
            except CtrpyError as exc:
                if isinstance(exc, Unavailable) and await speaks_grpc(socket_path(address)):
                    log.error("shim of an older ctrpyd left running", namespace=bundle.namespace, id=bundle.id,
                              pid=bundle.shim_pid())
                    return (f"its shim (pid {bundle.shim_pid()}) speaks gRPC: it was started by an older "
                            "ctrpyd, and is left running, not managed")
                log.info("shim is gone", namespace=bundle.namespace, id=bundle.id, reason=exc.message)
                return None

    # The live shims all at once (one round trip each, overlapped: with many tasks, start-up
    # would otherwise wait for them one by one); the dead ones' cleanups one at a time after.
    every = list(bundles(state_dir))
    reached = await asyncio.gather(*(reach(bundle) for bundle in every))
    found: list[FoundShim] = []
    for bundle, live in zip(every, reached, strict=True):
        if isinstance(live, str):
            found.append(FoundShim(bundle, error=live))  # not dead: its container runs on
            continue
        if live is not None:
            found.append(FoundShim(bundle, client=live[0], state=live[1]))
            continue
        had_task = bundle.init_pid() is not None or bundle.exit() is not None
        try:
            info = await run_shim_delete(state_dir, bundle, runtime_binary=runtime_binary, python=python)
        except CtrpyError as exc:
            log.error(
                "cleaning up a dead shim failed", namespace=bundle.namespace, id=bundle.id, error=exc.message
            )
            found.append(FoundShim(bundle, error=exc.message))
            continue
        found.append(FoundShim(bundle, exit=info, had_task=had_task))
    return found


async def _reach(
    address: str, bundle: Bundle, *, timeout: float, timeouts: ShimTimeouts, attach_socket: str
) -> tuple[ShimClient, ProcessState | None]:
    """A client for the live shim at ``address`` and the state of ``bundle``'s task in it (None
    when it holds none), in one call: an answer to State proves the shim alive as Connect's
    would, and saves start-up one round trip per task. Raises Unavailable at once when nothing
    listens there, DeadlineExceeded after ``timeout`` for a shim that does not answer."""
    if not os.path.exists(socket_path(address)) or not socket_answers(address):
        raise Unavailable(f'shim for task "{bundle.id}" at {address}')
    client = ShimClient(
        address, bundle.id, namespace=bundle.namespace, shim_pid=bundle.shim_pid() or 0,
        timeouts=timeouts, attach_socket=attach_socket,
    )  # fmt: skip
    try:
        return client, await client.state(deadline=timeout)
    except NotFound:
        return client, None
    except BaseException:
        await client.close()
        raise
