"""Hand the C heap's free pages back to the kernel once start-up is done.

Start-up allocates and frees a lot on the C heap (protobuf descriptors, sqlite's first pages,
the recovery of tasks and snapshotters); glibc keeps the freed memory in its arenas, where it
stays resident in a daemon that then sits idle. One ``malloc_trim(0)`` after the socket serves
gives back about 0.7 MiB of an idle ctrpyd's 49 MiB (measured; ``MALLOC_ARENA_MAX`` made no
measurable difference, so it is not set). A libc without ``malloc_trim`` (musl) is skipped.
"""

from __future__ import annotations

import contextlib
import ctypes


def trim() -> None:
    """``malloc_trim(0)``, when the C library has it; never raises."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
