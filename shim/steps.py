"""The shim's step timings of a Create or Start, sent back to ctrpyd with the answer.

Why: ctrpyd sees a shim's Create as one call; where its time went (mounting the rootfs,
opening the stdio, ``runc create``) only the shim knows. It times those steps on the host's
monotonic clock, which ctrpyd shares, and sends them in the ``steps`` field of its
CreateResponse and StartResponse (ttrpc answers carry no metadata): no file written, and a
client that does not look (any but ctrpyd's start-up timeline, :mod:`ctrpy.manager.timeline`,
and its trace) never notices. :meth:`Steps.to_proto` builds the field, :func:`from_proto`
reads it back on ctrpyd's side.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

from ctrpy.api.ctrpy.shim.v1 import shim_pb2 as pb

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

    def to_proto(self) -> list[pb.Step]:
        """The steps as the ``steps`` field of a CreateResponse or StartResponse."""
        return [pb.Step(name=name, start_ns=start, end_ns=end) for name, start, end in self.items]


def from_proto(steps: Iterable[pb.Step]) -> list[StepTuple]:
    """The steps a shim sent, from the ``steps`` field of its answer (empty when it sent none)."""
    return [(step.name, step.start_ns, step.end_ns) for step in steps]
