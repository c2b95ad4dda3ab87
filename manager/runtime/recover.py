"""Finding shims again after ctrpyd restarts.

:func:`recover` walks ``<state>/tasks/*/*``. For each bundle it connects to the shim named in
the bundle's ``address`` file, failing fast when the socket is missing or refuses (no waiting
for a dead shim). A live shim is returned with a connected client; for a dead one (or a bundle
whose shim never started) it runs ``ctrpy-shim delete``, which cleans up and reports the exit
the shim had written to the bundle, or status 255 (DESIGN.md, "After a crash").
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import structlog

from ctrpy.errors import CtrpyError
from ctrpy.shim.files import ExitInfo

from .bundle import Bundle, bundles
from .client import DEFAULT_TIMEOUTS, ShimClient, ShimTimeouts
from .launcher import run_shim_delete

log = structlog.get_logger("ctrpy.runtime")

CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class FoundShim:
    """One bundle found on disk.

    Live: ``client`` is connected. Dead: ``client`` is None and ``exit`` is what the cleanup
    found (None, with ``error`` set, when the cleanup failed and the bundle is still there);
    ``had_task`` says whether the bundle ever held a task (runc wrote its init.pid), so that a
    create interrupted before that point is not reported as a task that ran and exited.
    """

    bundle: Bundle
    client: ShimClient | None = None
    exit: ExitInfo | None = None
    error: str = ""
    had_task: bool = True

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

    A shim that does not answer Connect within ``connect_timeout`` (stopped, stuck) counts as
    dead, so start-up never waits longer than that on one shim. The clients returned use
    ``timeouts``.
    """
    found: list[FoundShim] = []
    for bundle in bundles(state_dir):
        address = bundle.address()
        if address:
            try:
                client = await ShimClient.connect(
                    address, bundle.id, timeout=connect_timeout, namespace=bundle.namespace,
                    shim_pid=bundle.shim_pid() or 0, timeouts=timeouts,
                )  # fmt: skip
            except CtrpyError as exc:
                log.info("shim is gone", namespace=bundle.namespace, id=bundle.id, reason=exc.message)
            else:
                found.append(FoundShim(bundle, client=client))
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
