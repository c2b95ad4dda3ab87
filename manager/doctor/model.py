"""The values of ``ctrpy doctor``: what it looks at, what it finds, and what repairing did."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ctrpy.manager.content.doctor import DEFAULT_STALE_AFTER

__all__ = ["Check", "Finding", "Outcome", "Repair", "Report", "Target"]


@dataclass(frozen=True)
class Target:
    """The ctrpyd installation to examine: its durable ``root`` and volatile ``state``.

    ``runtime_binary`` is the OCI runtime used to delete containers whose bundle is gone;
    ``stale_after`` is the age from which an untouched ingest counts as abandoned; ``verify``
    re-hashes every blob (reads all content). ``daemon_running`` says whether a ctrpyd holds
    the root's lock; the runner fills it in.
    """

    root: Path
    state: Path
    runtime_binary: str = "runc"
    stale_after: timedelta = DEFAULT_STALE_AFTER
    verify: bool = False
    python: str = sys.executable
    daemon_running: bool = False

    @classmethod
    def at(
        cls,
        root: str | os.PathLike[str],
        state: str | os.PathLike[str],
        *,
        runtime_binary: str = "runc",
        stale_after: timedelta = DEFAULT_STALE_AFTER,
        verify: bool = False,
    ) -> Target:
        """A target with ``root`` and ``state`` made absolute and free of symbolic links, the way
        the kernel names them in /proc (mount points, working directories)."""
        return cls(
            Path(os.path.realpath(root)),
            Path(os.path.realpath(state)),
            runtime_binary=runtime_binary,
            stale_after=stale_after,
            verify=verify,
        )

    @property
    def meta_db(self) -> Path:
        """``<root>/meta.db``."""
        return self.root / "meta.db"

    @property
    def snapshots_root(self) -> Path:
        """``<root>/snapshots``: one directory per local snapshotter."""
        return self.root / "snapshots"

    @property
    def tmpmounts(self) -> Path:
        """``<root>/tmpmounts``: temporary mount points of the diff service."""
        return self.root / "tmpmounts"

    @property
    def tasks(self) -> Path:
        """``<state>/tasks``: the bundles."""
        return self.state / "tasks"

    @property
    def sockets(self) -> Path:
        """``<state>/s``: the shims' sockets and the template's."""
        return self.state / "s"

    @property
    def runc_root(self) -> Path:
        """``<state>/runc``: the runtime's state, one ``--root`` per namespace."""
        return self.state / "runc"


@dataclass(frozen=True)
class Finding:
    """One problem: which ``check`` found it, the ``object`` it concerns (a path, a key, a
    pid), what the ``problem`` is, and what ``--fix`` does about it (``action``).

    ``repair`` names the repair function that fixes it ("" when it can only be reported);
    ``details`` carries what that function needs.
    """

    check: str
    object: str
    problem: str
    action: str = ""
    repair: str = ""
    details: Mapping[str, str | int] = field(default_factory=dict)

    @property
    def fixable(self) -> bool:
        """Whether ``--fix`` has a repair for it."""
        return bool(self.repair)

    @property
    def action_text(self) -> str:
        """The action as the table shows it."""
        return self.action if self.fixable else "none (report only)"

    def key(self) -> tuple[str, str, str, str]:
        """What identifies the same problem in two examinations."""
        return self.check, self.object, self.problem, self.repair


@dataclass(frozen=True)
class Outcome:
    """What repairing ``finding`` did: ``fixed`` or not, and a word on it (an exit status, an
    error message)."""

    finding: Finding
    fixed: bool
    detail: str = ""


@dataclass(frozen=True)
class Report:
    """The result of a doctor run.

    ``findings`` are the problems found (in the first examination, and any that repairs
    uncovered later); ``outcomes`` what each repair did (``--fix`` only); ``remaining`` what
    the last examination still found. All is well when nothing remains.
    """

    target: Target
    fix: bool
    findings: tuple[Finding, ...]
    outcomes: tuple[Outcome, ...] = ()
    remaining: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether nothing is left to fix or to look at."""
        return not self.remaining

    def outcome_of(self, finding: Finding) -> Outcome | None:
        """The last outcome of repairing ``finding``, if it was repaired."""
        found = None
        for outcome in self.outcomes:
            if outcome.finding.key() == finding.key():
                found = outcome
        return found


#: A check: examine the target, return what is wrong. Checks never change anything.
Check = Callable[[Target], list[Finding]]
#: A repair: fix one finding, return a word on what was done; raise CtrpyError or OSError when
#: it cannot. Repairs re-check what they are about to change, and leave alone what is fine now.
Repair = Callable[[Target, Finding], str]
