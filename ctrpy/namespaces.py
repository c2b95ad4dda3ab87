"""The namespace a call works in, carried implicitly through a context variable.

Every call to ctrpyd names its namespace in the ``containerd-namespace`` gRPC header (containerd's
convention; the requests themselves have no namespace field). The servicer edge reads the header
once into :data:`current`, and every store operation begins with :func:`require`, so a store can
never be used without a namespace. containerd: ``pkg/namespaces/context.go`` and ``grpc.go``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from ctrpy import identifiers
from ctrpy.errors import FailedPrecondition

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
DEFAULT = "default"

current: ContextVar[str | None] = ContextVar("ctrpy_namespace", default=None)
current_lease: ContextVar[str | None] = ContextVar("ctrpy_lease", default=None)


def require() -> str:
    """The namespace of the current call; FailedPrecondition when none was set."""
    namespace = current.get()
    if not namespace:
        raise FailedPrecondition("namespace is required")
    return namespace


@contextlib.contextmanager
def using(namespace: str) -> Iterator[str]:
    """Run a block in ``namespace`` (validated), restoring the previous one afterwards."""
    token = current.set(identifiers.validate(namespace))
    try:
        yield namespace
    finally:
        current.reset(token)
