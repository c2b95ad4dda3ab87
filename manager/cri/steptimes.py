"""Per-step wall times of one CRI call, logged at debug level when the call ends.

Why: RunPodSandbox and StartContainer are a chain of record writes, subprocesses (CNI plugins,
runc) and round trips (the shim), and the bench only sees their sum. With ``--log-level debug``
each call logs one line naming where its milliseconds went, so that a slow step shows without a
profiler and a change can be checked step by step. Steps that overlap (CNI ADD beside the pause
container's creation) are timed on their own with :meth:`StepTimes.timed`; sequential ones with
:meth:`StepTimes.mark`. The cost is a clock read per step and one log call per RPC.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


class StepTimes:
    """The steps of one call: ``mark(step)`` closes the step that ran since the previous mark."""

    def __init__(self, call: str) -> None:
        self.call = call
        self.start = self.last = time.perf_counter()
        self.steps: dict[str, float] = {}

    def mark(self, step: str) -> None:
        """Record the time since the previous mark (or the start) as ``step``."""
        now = time.perf_counter()
        self.steps[step] = self.steps.get(step, 0.0) + (now - self.last) * 1000
        self.last = now

    async def timed(self, step: str, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, recording its own duration as ``step`` (for steps that run beside
        others; the sequential marks are not moved)."""
        began = time.perf_counter()
        try:
            return await awaitable
        finally:
            self.steps[step] = self.steps.get(step, 0.0) + (time.perf_counter() - began) * 1000

    def log(self, **fields: Any) -> None:
        """One debug line: the total and each step, in milliseconds."""
        total = (time.perf_counter() - self.start) * 1000
        log.debug(f"{self.call} step times (ms)", total=round(total, 2),
                  **{k: round(v, 2) for k, v in self.steps.items()}, **fields)
