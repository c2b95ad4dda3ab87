"""Per-step wall times of one CRI call, logged at debug level when the call ends.

Why: RunPodSandbox and StartContainer are a chain of record writes, subprocesses (CNI plugins,
runc) and round trips (the shim), and the bench only sees their sum. With ``--log-level debug``
each call logs one line naming where its milliseconds went, so that a slow step shows without a
profiler and a change can be checked step by step. Steps that overlap (CNI ADD beside the pause
container's creation) are timed on their own with :meth:`StepTimes.timed`; sequential ones with
:meth:`StepTimes.mark`. The cost is a clock read per step and one log call per RPC.

The steps of the last calls about each pod or container are also kept in memory (:data:`KEEP`
ids, oldest first out; :func:`kept`), for ``ctrpy cri timeline`` (ctrpy.manager.timeline).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How many pods and containers keep their calls' steps.
KEEP = 512
_kept: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()


def kept(object_id: str) -> list[dict[str, Any]]:
    """The kept calls about a pod or container: ``{"call", "total_ms", "steps": [{"step", "ms",
    "beside"}]}`` in the order they ended; ``beside`` marks a step that overlapped others."""
    return list(_kept.get(object_id, ()))


def kept_ids() -> list[str]:
    return list(_kept)


class StepTimes:
    """The steps of one call: ``mark(step)`` closes the step that ran since the previous mark."""

    def __init__(self, call: str) -> None:
        self.call = call
        self.start = self.last = time.perf_counter()
        self.steps: dict[str, float] = {}
        self.beside: set[str] = set()

    def mark(self, step: str) -> None:
        """Record the time since the previous mark (or the start) as ``step``."""
        now = time.perf_counter()
        self.steps[step] = self.steps.get(step, 0.0) + (now - self.last) * 1000
        self.last = now

    async def timed(self, step: str, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, recording its own duration as ``step`` (for steps that run beside
        others; the sequential marks are not moved)."""
        began = time.perf_counter()
        self.beside.add(step)
        try:
            return await awaitable
        finally:
            self.steps[step] = self.steps.get(step, 0.0) + (time.perf_counter() - began) * 1000

    def log(self, **fields: Any) -> None:
        """One debug line: the total and each step, in milliseconds."""
        total = (time.perf_counter() - self.start) * 1000
        log.debug(f"{self.call} step times (ms)", total=round(total, 2),
                  **{k: round(v, 2) for k, v in self.steps.items()}, **fields)
        object_id = fields.get("id")
        if isinstance(object_id, str) and object_id:
            calls = _kept.pop(object_id, [])
            calls.append({"call": self.call, "total_ms": round(total, 3), "steps": [
                {"step": k, "ms": round(v, 3), "beside": k in self.beside} for k, v in self.steps.items()]})
            _kept[object_id] = calls[-8:]
            while len(_kept) > KEEP:
                _kept.popitem(last=False)
