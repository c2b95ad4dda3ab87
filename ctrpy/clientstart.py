"""When a client process started, sent to ctrpyd so that a start-up timeline can show it.

Why: a timeline is measured on the server, from the client's first call on; what the client
did before that (starting its interpreter, importing its modules, reading its flags, dialling)
is the first thing a user waits for at the terminal and no server-side step can see it. ``ctrpy
run`` sends the monotonic time its process started (:data:`HEADER`, nanoseconds, the host's
CLOCK_MONOTONIC, which ctrpyd shares on the same host) in the metadata of its first call,
Images.Get; ctrpyd keeps it with that call and the container's timeline shows it as a
``client start`` row (:mod:`ctrpy.manager.timeline`). Other clients send nothing and nothing
changes for them.

The kernel records a process' start in clock ticks (``/proc/self/stat``, on the boot-time
clock; 10 ms a tick on the usual USER_HZ of 100), so the value is exact to a tick.
"""

from __future__ import annotations

import os
import time

#: The gRPC metadata key (lower case, as gRPC wants).
HEADER = "ctrpy-client-start-ns"


def process_start_ns() -> int | None:
    """This process' start on the monotonic clock, in nanoseconds; None when /proc says nothing."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
        # Field 22, counted after the command name (in parentheses, and it may hold spaces).
        ticks = int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    since_start = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return time.monotonic_ns() - since_start


def from_context(context: object) -> int:
    """The start a client sent with a call (``context`` is the servicer context), 0 if none."""
    read = getattr(context, "invocation_metadata", None)
    for key, value in (read() if callable(read) else None) or ():
        if key == HEADER and isinstance(value, str) and value.isdigit():
            return int(value)
    return 0
