"""The life of a process in the shim, as one table.

::

              start              pause
    CREATED ---------> RUNNING <-------> PAUSED
       |                  |     resume     |
       | exit             | exit           | exit
       v                  v                v
    STOPPED <-----------------------------+
       |
       | delete          (CREATED --delete--> DELETED too: runc delete of a created container)
       v
    DELETED

Actions that do not move the process (kill, exec, update...) are allowed in the states listed
in :data:`ALLOWED`. :func:`transition` is the only place that moves a process; everything
else it refuses with :class:`~ctrpy.errors.FailedPrecondition`, in containerd's wording
(``cannot start a running process``). Exec processes use the same table; pause, resume and
exec are only asked of the init process.
"""

from __future__ import annotations

import enum

from ctrpy.errors import FailedPrecondition


class State(enum.Enum):
    """Where a process is in its life. The values are containerd.v1.types.Status numbers."""

    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    DELETED = 100  # never reported: a deleted process is gone (NotFound)


MOVES: dict[tuple[State, str], State] = {
    (State.CREATED, "start"): State.RUNNING,
    (State.CREATED, "exit"): State.STOPPED,
    (State.CREATED, "delete"): State.DELETED,
    (State.RUNNING, "pause"): State.PAUSED,
    (State.RUNNING, "exit"): State.STOPPED,
    (State.PAUSED, "resume"): State.RUNNING,
    (State.PAUSED, "exit"): State.STOPPED,
    (State.STOPPED, "delete"): State.DELETED,
}

ALLOWED: dict[str, frozenset[State]] = {
    "kill": frozenset({State.CREATED, State.RUNNING, State.PAUSED, State.STOPPED}),
    "exec": frozenset({State.CREATED, State.RUNNING}),
    "update": frozenset({State.CREATED, State.RUNNING, State.PAUSED}),
    "stats": frozenset({State.CREATED, State.RUNNING, State.PAUSED, State.STOPPED}),
    "pids": frozenset({State.CREATED, State.RUNNING, State.PAUSED, State.STOPPED}),
    "resize": frozenset({State.CREATED, State.RUNNING, State.PAUSED}),
}
for (_state, _action), _ in MOVES.items():
    ALLOWED[_action] = ALLOWED.get(_action, frozenset()) | {_state}


def _refusal(state: State, action: str) -> FailedPrecondition:
    return FailedPrecondition(f"cannot {action} a {state.name.lower()} process")


def transition(state: State, action: str) -> State:
    """The state after ``action`` in ``state``; raises FailedPrecondition when not allowed."""
    try:
        return MOVES[(state, action)]
    except KeyError:
        raise _refusal(state, action) from None


def check(state: State, action: str) -> None:
    """Raise FailedPrecondition unless ``action`` is allowed in ``state``."""
    if state not in ALLOWED.get(action, frozenset()):
        raise _refusal(state, action)
