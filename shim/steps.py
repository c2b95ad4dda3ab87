"""The shim's step timings of a Create or Start, sent back to ctrpyd with the answer.

Why: ctrpyd sees a shim's Create as one call; where its time went (mounting the rootfs,
opening the stdio, ``runc create``) only the shim knows. It times those steps on the host's
monotonic clock, which ctrpyd shares, and sends them in the trailing metadata of its answer
(:data:`KEY`: JSON ``[[name, start_ns, end_ns], ...]``): no proto change, no file written, and
a client that does not look (any but ctrpyd's start-up timeline,
:mod:`ctrpy.manager.timeline`) never notices.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

#: The trailing metadata key of the steps.
KEY = "ctrpy-steps"

StepTuple = tuple[str, int, int]


class Steps:
    """The steps of the operation in progress (each Create or Start starts afresh)."""

    def __init__(self) -> None:
        self.items: list[StepTuple] = []

    def restart(self) -> None:
        self.items = []

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (recorded when it ends, failed or not)."""
        began = time.monotonic_ns()
        try:
            yield
        finally:
            self.items.append((name, began, time.monotonic_ns()))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The steps as trailing metadata."""
        return ((KEY, json.dumps([list(item) for item in self.items], separators=(",", ":"))),)


def parse(metadata: Iterable[tuple[str, Any]]) -> list[StepTuple]:
    """The steps a shim sent, from a call's trailing metadata; nothing when absent or malformed."""
    for key, value in metadata:
        if key != KEY:
            continue
        try:
            return [(str(name), int(start), int(end)) for name, start, end in json.loads(value)]
        except (TypeError, ValueError):
            return []
    return []
