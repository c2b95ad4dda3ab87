"""What ctrpyd may answer about a task's init process without asking its shim.

Tasks.List asked every shim for its state, one round trip per task: the cost of a listing grew
with the number of running containers several times faster than containerd's. The state of an
init process moves only in a few ways, and ctrpyd hears of each: its own calls to the shim
(Create, Start, Pause, Resume, Kill, Delete, Wait's answer; :attr:`ShimClient.changes` counts
them) and the events the shim publishes after every move (``/tasks/start``, ``/tasks/exit``,
``/tasks/paused``, ``/tasks/resumed``, ``/tasks/delete``). So the state one State call returned
stays the answer until one of those happens (:func:`moved` names the task an event is about);
a State answer that crossed one is not kept at all.

An event is only a reason to ask again, never a state: Events.Publish is open to every client,
and a forged ``/tasks/exit`` must not make a running task look stopped. It costs one round trip.

What no call and no event says is whether the shim would still answer. A shim stopped by
SIGSTOP, traced, or stuck in the kernel must show as UNKNOWN after the state deadline, as
containerd shows it (it asks every shim every time): :func:`shim_can_answer` reads the shim's
scheduler state from ``/proc`` (one small read, no round trip) and anything but running or
sleeping sends the listing to the shim, whose silence then gives UNKNOWN.
"""

from __future__ import annotations

import os

from google.protobuf.message import DecodeError, Message

from ctrpy.api.containerd.events import task_pb2 as task_events

from ..events import Envelope

# The events after which a task's init process may be in another state, and their types (each
# has ``container_id`` as field 1). Exec processes' events (exec-added, exec-started, and an
# exit whose ``id`` is an exec id) leave the init process where it was.
MOVES: dict[str, type[Message]] = {
    "/tasks/create": task_events.TaskCreate,
    "/tasks/start": task_events.TaskStart,
    "/tasks/exit": task_events.TaskExit,
    "/tasks/paused": task_events.TaskPaused,
    "/tasks/resumed": task_events.TaskResumed,
    "/tasks/delete": task_events.TaskDelete,
}

# /proc/PID/stat states in which a process can answer a call: running, sleeping.
ANSWERING = frozenset(b"RS")


def moved(envelope: Envelope) -> str | None:
    """The container id whose init process ``envelope`` says may have moved, else None
    (another topic, an exec process's exit, or an event that does not decode)."""
    kind = MOVES.get(envelope.topic)
    if kind is None or not envelope.event.type_url.endswith(kind.DESCRIPTOR.name):
        return None
    try:
        event = kind.FromString(envelope.event.value)
    except DecodeError:
        return None
    container_id: str = getattr(event, "container_id", "")
    if isinstance(event, task_events.TaskExit) and event.id not in ("", container_id):
        return None
    return container_id or None


def shim_can_answer(pid: int) -> bool:
    """Whether process ``pid`` is running or sleeping (not stopped, traced, in uninterruptible
    sleep, a zombie, or gone); False for pid 0 (unknown)."""
    if pid <= 0:
        return False
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        data = os.read(fd, 512)
    except OSError:
        return False
    finally:
        os.close(fd)
    # "PID (COMM) S ...": COMM may hold anything, parentheses included; the state follows the last ")".
    end = data.rfind(b")")
    return end >= 0 and len(data) > end + 2 and data[end + 2] in ANSWERING
