"""The error kinds of ctrpy, and how they cross the gRPC and ttrpc boundaries.

Code inside ctrpy raises these; only the servicer edge turns them into gRPC status codes
(:func:`to_grpc_code`), and only the client turns status codes back (:func:`from_grpc`; over
ttrpc, :func:`status_number` and :func:`from_status`). The codes are gRPC's, by number
(:class:`StatusCode`), so that this module needs no grpc: a shim, which speaks ttrpc, does not
load it.
The hierarchy, with the gRPC code each maps to::

    CtrpyError                  UNKNOWN
    ├── InvalidArgument         INVALID_ARGUMENT
    ├── NotFound                NOT_FOUND
    ├── AlreadyExists           ALREADY_EXISTS
    ├── FailedPrecondition      FAILED_PRECONDITION
    ├── Conflict                FAILED_PRECONDITION (containerd's ErrConflict)
    ├── OutOfRange              OUT_OF_RANGE
    ├── Unavailable             UNAVAILABLE
    ├── NotImplemented          UNIMPLEMENTED
    ├── Aborted                 ABORTED
    ├── Canceled                CANCELLED
    ├── DeadlineExceeded        DEADLINE_EXCEEDED
    └── ResourceExhausted       RESOURCE_EXHAUSTED (a full disk or quota: see ``diskspace``)

Messages follow containerd's style: the subject first, then the kind after a colon, as in
``container "web": not found``. containerd's clients strip that suffix and add it back, so the
user sees exactly this text.
"""

from __future__ import annotations

import enum
import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


class StatusCode(enum.IntEnum):
    """gRPC's status codes, by their numbers (ttrpc uses the same)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class CtrpyError(Exception):
    """Something went wrong that fits no narrower kind."""

    code: StatusCode = StatusCode.UNKNOWN
    suffix: str = "unknown"

    def __init__(self, subject: str = "") -> None:
        self.subject = subject
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The full message, ``<subject>: <kind>``, or just the kind when there is no subject."""
        if not self.subject:
            return self.suffix
        if self.subject.endswith(": " + self.suffix):
            return self.subject
        return f"{self.subject}: {self.suffix}"


class InvalidArgument(CtrpyError):
    """The request itself is wrong: a bad identifier, a malformed filter, a missing field."""

    code = StatusCode.INVALID_ARGUMENT
    suffix = "invalid argument"


class NotFound(CtrpyError):
    """The named object does not exist in the current namespace."""

    code = StatusCode.NOT_FOUND
    suffix = "not found"


class AlreadyExists(CtrpyError):
    """An object with that name or id already exists (or a blob with that digest is stored)."""

    code = StatusCode.ALREADY_EXISTS
    suffix = "already exists"


class FailedPrecondition(CtrpyError):
    """The object is in the wrong state for the request: a non-empty namespace, a running task."""

    code = StatusCode.FAILED_PRECONDITION
    suffix = "failed precondition"


class Conflict(FailedPrecondition):
    """A concurrent change got there first (containerd's ErrConflict)."""

    suffix = "conflict"


class OutOfRange(CtrpyError):
    """An offset or size lies outside what the object has, as in a content write at a wrong offset."""

    code = StatusCode.OUT_OF_RANGE
    suffix = "out of range"


class Unavailable(CtrpyError):
    """A resource is busy or unreachable right now; the same request may succeed later."""

    code = StatusCode.UNAVAILABLE
    suffix = "unavailable"


class NotImplemented(CtrpyError):
    """The method exists in the API but ctrpy does not implement it (yet)."""

    code = StatusCode.UNIMPLEMENTED
    suffix = "not implemented"


class Aborted(CtrpyError):
    """The operation was aborted, typically by a concurrency conflict in the store."""

    code = StatusCode.ABORTED
    suffix = "aborted"


class Canceled(CtrpyError):
    """The caller went away or asked to stop."""

    code = StatusCode.CANCELLED
    suffix = "context canceled"


class DeadlineExceeded(CtrpyError):
    """The operation ran out of time."""

    code = StatusCode.DEADLINE_EXCEEDED
    suffix = "context deadline exceeded"


class ResourceExhausted(CtrpyError):
    """The filesystem under a store is full, or a disk quota is used up.

    Raised by :func:`ctrpy.diskspace.guard` after what the failed write made has been removed,
    so the same request may succeed once space is freed. containerd's clients know no such
    kind: ctr shows the message followed by ``: unknown``.
    """

    code = StatusCode.RESOURCE_EXHAUSTED
    suffix = "resource exhausted"


_BY_CODE: dict[int, type[CtrpyError]] = {  # by number: a StatusCode is an int
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        OutOfRange,
        Unavailable,
        NotImplemented,
        Aborted,
        Canceled,
        DeadlineExceeded,
        ResourceExhausted,
    )
}


def to_grpc_code(error: CtrpyError) -> grpc.StatusCode:
    """The gRPC status code that carries ``error`` over the wire."""
    return _grpc_codes()[error.code]


@functools.cache
def _grpc_codes() -> dict[int, grpc.StatusCode]:
    import grpc  # here, not at the top: see the module docstring

    return {code.value[0]: code for code in grpc.StatusCode}


def from_grpc(error: grpc.RpcError) -> CtrpyError:
    """Turn a failed call's status back into the matching error kind (client side)."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    number: int = code.value[0] if code is not None else StatusCode.UNKNOWN
    return from_status(number, details or "")


def status_number(error: CtrpyError) -> int:
    """The numeric status code of ``error`` (gRPC's numbering, which ttrpc shares)."""
    return int(error.code)


def from_status(code: int, message: str) -> CtrpyError:
    """The error kind a numeric status code and its message stand for (a ttrpc answer's)."""
    return _BY_CODE.get(code, CtrpyError)(message)
