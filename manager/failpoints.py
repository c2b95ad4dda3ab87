"""Failpoints: named places where a test can make ctrpyd die, to prove that it recovers.

A test starts ctrpyd with ``CTRPY_FAILPOINTS=name[,name...]`` in its environment; when the code
reaches an armed point, the process sends itself SIGKILL there and then, as a crash or a power
cut would stop it (no ``finally``, no atexit, no flush). A point written ``name=N`` fires the
N-th time it is reached instead of the first. The variable is read once, at import; when it is
unset, :func:`hit` returns after one test of an empty set.

The points (each is one ``failpoints.hit(...)`` line in the code it names):

``containers.create.after-commit``
    ContainersServicer.Create: the container row is committed to sqlite, the
    ``/containers/create`` event is not yet published.
``tasks.create.after-bundle``
    TaskManager.create: the bundle (config.json, rootfs/) is written, no shim is started yet.
``diff.apply.mid-layer``
    apply_layer: after a layer entry has been unpacked (the first one, or the N-th), with the
    rest of the layer's stream still unread.
``content.commit.before-rename``
    Writer.commit: the ingest's data is fsynced and verified, not yet renamed into ``blobs/``.
``sandbox.run.after-record``, ``sandbox.run.after-netns``, ``sandbox.run.after-cni``,
``sandbox.run.after-snapshot``, ``sandbox.run.after-task-create``
    RunPodSandbox (manager/cri/sandboxes.py): the sandbox record is written; the netns is
    pinned; CNI ADD is done; the pause container and its snapshot exist; the pause task is
    created (its shim runs), not started.
``cri.container.create.after-snapshot``, ``cri.container.start.after-task-create``
    CreateContainer (manager/cri/containers.py): the record says "creating", the containerd
    container and its snapshot exist, the spec is not written; StartContainer: the task is
    created (its shim runs), not started, the record still says "created".

Before it dies, the process writes ``ctrpy failpoint <name>: killing pid <pid>`` to stderr
(unbuffered), so that a test can tell the failpoint from an unrelated crash.

Stalls: ``CTRPY_STALLS=name=seconds[,...]`` makes the coroutine that reaches ``await
stall(name)`` sleep that long there, every time (the event loop goes on): a slow step on
demand, for the tests of calls whose client gives up first (deadlines). Points: the failpoint
names above that have a ``stall`` line beside their ``hit`` line
(``cri.container.create.after-snapshot``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

ENV = "CTRPY_FAILPOINTS"

CONTAINERS_CREATE_AFTER_COMMIT = "containers.create.after-commit"
TASKS_CREATE_AFTER_BUNDLE = "tasks.create.after-bundle"
DIFF_APPLY_MID_LAYER = "diff.apply.mid-layer"
CONTENT_COMMIT_BEFORE_RENAME = "content.commit.before-rename"
SANDBOX_RUN_AFTER_RECORD = "sandbox.run.after-record"
SANDBOX_RUN_AFTER_NETNS = "sandbox.run.after-netns"
SANDBOX_RUN_AFTER_CNI = "sandbox.run.after-cni"
SANDBOX_RUN_AFTER_SNAPSHOT = "sandbox.run.after-snapshot"
SANDBOX_RUN_AFTER_TASK_CREATE = "sandbox.run.after-task-create"
CRI_CONTAINER_CREATE_AFTER_SNAPSHOT = "cri.container.create.after-snapshot"
CRI_CONTAINER_START_AFTER_TASK_CREATE = "cri.container.start.after-task-create"

#: Every point the code defines; :func:`parse` refuses any other name.
NAMES = frozenset(
    {
        CONTAINERS_CREATE_AFTER_COMMIT,
        TASKS_CREATE_AFTER_BUNDLE,
        DIFF_APPLY_MID_LAYER,
        CONTENT_COMMIT_BEFORE_RENAME,
        SANDBOX_RUN_AFTER_RECORD,
        SANDBOX_RUN_AFTER_NETNS,
        SANDBOX_RUN_AFTER_CNI,
        SANDBOX_RUN_AFTER_SNAPSHOT,
        SANDBOX_RUN_AFTER_TASK_CREATE,
        CRI_CONTAINER_CREATE_AFTER_SNAPSHOT,
        CRI_CONTAINER_START_AFTER_TASK_CREATE,
    }
)


def parse(text: str) -> dict[str, int]:
    """``"a,b=3"`` -> ``{"a": 1, "b": 3}``: each armed point and the hit on which it fires.

    Raises ValueError for an unknown name or a count that is not a positive integer, so that a
    misspelt failpoint fails loudly instead of never firing.
    """
    armed: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, count = item.partition("=")
        if name not in NAMES:
            raise ValueError(f"{ENV}: unknown failpoint {name!r} (known: {', '.join(sorted(NAMES))})")
        try:
            nth = int(count) if count else 1
        except ValueError:
            raise ValueError(f"{ENV}: {item!r}: the count must be an integer") from None
        if nth < 1:
            raise ValueError(f"{ENV}: {item!r}: the count must be at least 1")
        armed[name] = nth
    return armed


_armed: dict[str, int] = parse(os.environ.get(ENV, ""))
_seen: dict[str, int] = {}
_lock = threading.Lock()  # hits come from the event loop and from worker threads
_also: list[int] = []  # processes that die with this one (a helper's daemon)


STALLS_ENV = "CTRPY_STALLS"


def parse_stalls(text: str) -> dict[str, float]:
    """``"a=2.5"`` -> ``{"a": 2.5}``; ValueError for an unknown name or a bad number."""
    stalls: dict[str, float] = {}
    for item in text.split(","):
        name, _, seconds = item.strip().partition("=")
        if not name:
            continue
        if name not in NAMES:
            raise ValueError(f"{STALLS_ENV}: unknown point {name!r} (known: {', '.join(sorted(NAMES))})")
        try:
            stalls[name] = float(seconds)
        except ValueError:
            raise ValueError(f"{STALLS_ENV}: {item!r}: the seconds must be a number") from None
    return stalls


_stalls: dict[str, float] = parse_stalls(os.environ.get(STALLS_ENV, ""))


async def stall(name: str) -> None:
    """Reach the stall point ``name``: sleep as long as ``CTRPY_STALLS`` says (usually not at all)."""
    if _stalls and name in _stalls:
        await asyncio.sleep(_stalls[name])


def die_with(pid: int) -> None:
    """Make a failpoint in this helper process (an unpack worker) kill ``pid`` too, first: the
    point is named for ctrpyd, and ctrpyd is what a test expects to see die."""
    _also.append(pid)


def armed() -> frozenset[str]:
    """The names armed in this process."""
    return frozenset(_armed)


def hit(name: str) -> None:
    """Reach the failpoint ``name``: if it is armed and due, SIGKILL this process now."""
    if not _armed or name not in _armed:
        return
    with _lock:
        _seen[name] = count = _seen.get(name, 0) + 1
    if count == _armed[name]:
        _die(name)


def _die(name: str) -> None:
    pid = os.getpid()
    for victim in [*_also, pid]:
        try:
            os.write(2, f"ctrpy failpoint {name}: killing pid {victim}\n".encode())
        except OSError:
            pass
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
