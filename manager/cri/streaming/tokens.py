"""Single-use tokens for streaming URLs, as containerd's (the kubelet's) request cache makes them.

An Exec, Attach or PortForward RPC stores its request under a fresh random token and answers with
a URL that carries it; whoever opens the URL first takes the request, once. A token is kept for a
minute at most, and at most :data:`MAX_IN_FLIGHT` are outstanding, so a client that asks and never
connects costs a bounded amount of memory. The token is the only credential: 8 random bytes,
so a URL cannot be guessed, and a replayed one finds nothing.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ctrpy.errors import ResourceExhausted

TTL = 60.0
MAX_IN_FLIGHT = 1000


@dataclass(frozen=True)
class Pending:
    """What an RPC left for its URL: the kind (exec, attach, portforward) and the request."""

    kind: str
    request: object
    expires: float


class TokenCache:
    def __init__(self, ttl: float = TTL, limit: int = MAX_IN_FLIGHT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.limit, self.clock = ttl, limit, clock
        self._pending: OrderedDict[str, Pending] = OrderedDict()

    def _expire(self) -> None:
        now = self.clock()
        while self._pending:
            token, first = next(iter(self._pending.items()))
            if first.expires > now:
                return
            del self._pending[token]

    def issue(self, kind: str, request: object) -> str:
        self._expire()
        if len(self._pending) >= self.limit:
            raise ResourceExhausted("maximum number of in-flight requests exceeded")
        token = secrets.token_urlsafe(8)
        self._pending[token] = Pending(kind, request, self.clock() + self.ttl)
        return token

    def take(self, kind: str, token: str) -> object | None:
        """The request ``token`` stands for when it is of ``kind`` and still valid; it is gone
        afterwards either way."""
        self._expire()
        pending = self._pending.pop(token, None)
        if pending is None or pending.kind != kind:
            return None
        return pending.request
