"""Creations that outlive their caller, for the kubelet's retries.

When a CreateContainer takes longer than the kubelet's deadline, the kubelet gets
DEADLINE_EXCEEDED and, at its next sync, asks again with the same name. If the runtime had
dropped the first creation's work, the retry would start it again from nothing (and time out
again under the same load); if it kept the name reserved, the retry would get "name is
reserved" until the first creation ended (the containerd behaviour that kubelets report as
stuck pods). Here, as CRI-O does:

- a creation runs as a task of its own, shielded from its caller's cancellation;
- a retry with the same request while it runs waits for it and gets its id;
- a creation that ends after every caller went away is kept *unclaimed*: the next retry with
  the same request gets its id; nobody claims it within :data:`UNCLAIMED_TTL` seconds, it is
  discarded (the caller gave up and did not come back: what it started is cleaned up);
- a creation whose caller got the answer is a finished one: asking again for the same name is
  "name is reserved", as containerd answers.

A failed creation undoes itself (its coroutine's business) and leaves nothing here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from ctrpy.errors import AlreadyExists

log = structlog.get_logger(__name__)

#: How long an unclaimed creation waits for its retry: the kubelet's runtime request timeout
#: (2 min) is longer than any pause between its syncs of one pod.
UNCLAIMED_TTL = 120.0


@dataclass
class _Creation:
    request: bytes
    job: asyncio.Task[str]
    waiting: int = 0


@dataclass
class _Unclaimed:
    request: bytes
    id: str
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)


class Creations:
    """The creations of one kind (``what``: "container") by reserved name. ``discard`` is
    called with the id of an unclaimed creation that expired."""

    def __init__(self, what: str, discard: Callable[[str], None], ttl: float = UNCLAIMED_TTL) -> None:
        self.what = what
        self.discard = discard
        self.ttl = ttl
        self._running: dict[str, _Creation] = {}
        self._unclaimed: dict[str, _Unclaimed] = {}

    async def retry(self, name: str, request: bytes) -> str | None:
        """The id a retry of ``request`` under ``name`` gets: of the creation in flight (waited
        for) or of an unclaimed one; None when there is neither. AlreadyExists when ``name`` is
        being created with another request."""
        creation = self._running.get(name)
        if creation is not None:
            if creation.request != request:
                raise AlreadyExists(f'failed to reserve {self.what} name "{name}": it is being created')
            return await self._wait(creation)
        kept = self._unclaimed.get(name)
        if kept is not None and kept.request == request:
            del self._unclaimed[name]
            if kept.expiry is not None:
                kept.expiry.cancel()
            log.info("a retry claimed a creation that its first caller gave up on", what=self.what, id=kept.id)
            return kept.id
        return None

    async def run(self, name: str, request: bytes, make: Coroutine[Any, Any, str]) -> str:
        """Run ``make`` (which returns the new id) as a creation of ``name`` and wait for it."""
        job = asyncio.get_running_loop().create_task(make)
        creation = _Creation(request, job)
        self._running[name] = creation
        job.add_done_callback(functools.partial(self._ended, name, creation))
        return await self._wait(creation)

    def forget(self, name: str) -> None:
        """``name``'s unclaimed creation was removed (RemoveContainer): nothing to expire."""
        kept = self._unclaimed.pop(name, None)
        if kept is not None and kept.expiry is not None:
            kept.expiry.cancel()

    async def _wait(self, creation: _Creation) -> str:
        creation.waiting += 1
        try:
            return await asyncio.shield(creation.job)
        finally:
            creation.waiting -= 1

    def _ended(self, name: str, creation: _Creation, job: asyncio.Task[str]) -> None:
        """Runs before any waiter resumes: ``waiting`` counts the callers still there."""
        if self._running.get(name) is creation:
            del self._running[name]
        if job.cancelled() or job.exception() is not None or creation.waiting > 0:
            return
        kept = _Unclaimed(creation.request, job.result())
        kept.expiry = asyncio.get_running_loop().call_later(self.ttl, self._expire, name, kept)
        self._unclaimed[name] = kept
        log.info("a creation ended after its caller gave up: kept for the retry", what=self.what, id=kept.id)

    def _expire(self, name: str, kept: _Unclaimed) -> None:
        if self._unclaimed.get(name) is kept:
            del self._unclaimed[name]
            log.info("discarding a creation that no retry claimed", what=self.what, id=kept.id)
            self.discard(kept.id)
