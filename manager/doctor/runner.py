"""Running the checks, and the repairs with ``--fix``.

:func:`examine` runs every check and returns what they found; it changes nothing, whether or
not ctrpyd runs. :func:`repair` applies the repair a finding names. :func:`run` does what
``ctrpy doctor`` does: find out whether a ctrpyd holds the root; examine; with ``fix`` (which
refuses while ctrpyd runs) hold the root's lock, repair what can be repaired, and examine
again, a few rounds, since one repair can uncover the next problem (a snapshot whose
directory was missing is removed from its snapshotter, then meta.db's row for it dangles).
"""

from __future__ import annotations

import dataclasses
import sqlite3

import structlog

from ctrpy.errors import CtrpyError, FailedPrecondition

from ..rootlock import daemon_running, holding_root
from . import content, cri, snapshots, tasks, temp
from .model import Check, Finding, Outcome, Repair, Report, Target

__all__ = ["CHECKS", "REPAIRS", "examine", "repair", "run"]

log = structlog.get_logger(__name__)

#: Every check, by name, in the order they run (and repairs are applied): processes first,
#: then what they held (bundles, runtime state, mounts, sockets), then the stores.
CHECKS: list[tuple[str, Check]] = [*tasks.CHECKS, *cri.CHECKS, *snapshots.CHECKS, *temp.CHECKS, *content.CHECKS]
REPAIRS: dict[str, Repair] = {**tasks.REPAIRS, **cri.REPAIRS, **snapshots.REPAIRS, **temp.REPAIRS,
                              **content.REPAIRS}
#: Examinations after the first, each following a round of repairs.
MAX_ROUNDS = 4


def examine(target: Target) -> list[Finding]:
    """Run every check against ``target``; return the findings in check order.

    A check that cannot run (an unreadable database, say) becomes a finding of its own.
    """
    found: list[Finding] = []
    for name, check in CHECKS:
        try:
            found.extend(check(target))
        except (CtrpyError, OSError, sqlite3.Error) as exc:
            found.append(Finding(name, "-", f"check failed: {exc}"))
    return found


def repair(target: Target, finding: Finding) -> Outcome:
    """Apply the repair ``finding`` names; the outcome says whether it worked, and how."""
    fix = REPAIRS.get(finding.repair)
    if fix is None:
        return Outcome(finding, False, "no repair for this problem")
    try:
        detail = fix(target, finding)
    except (CtrpyError, OSError, sqlite3.Error, RuntimeError, ValueError) as exc:
        message = exc.message if isinstance(exc, CtrpyError) else str(exc)
        log.warning("repair failed", check=finding.check, object=finding.object, error=message)
        return Outcome(finding, False, message)
    return Outcome(finding, True, detail)


def run(target: Target, *, fix: bool = False) -> Report:
    """Examine ``target`` and, with ``fix``, repair it; see the module docstring.

    Raises FailedPrecondition when ``fix`` is asked while a ctrpyd serves the root.
    """
    running = daemon_running(target.root)
    target = dataclasses.replace(target, daemon_running=running)
    if fix and running:
        raise FailedPrecondition(
            f"ctrpyd is running on {target.root} (it holds {target.root}/ctrpyd.lock): stop it "
            "before repairing (without --fix, the doctor only reports)"
        )
    if not fix:
        findings = examine(target)
        return Report(target, False, tuple(findings), remaining=tuple(findings))
    with holding_root(target.root):
        findings = examine(target)
        seen = {f.key() for f in findings}
        everything = list(findings)
        outcomes: list[Outcome] = []
        tried: set[tuple[str, str, str, str]] = set()
        for _ in range(MAX_ROUNDS):
            todo = [f for f in findings if f.fixable and f.key() not in tried]
            if not todo:
                break
            for finding in todo:
                tried.add(finding.key())
                outcomes.append(repair(target, finding))
            findings = examine(target)
            for finding in findings:
                if finding.key() not in seen:
                    seen.add(finding.key())
                    everything.append(finding)
        return Report(target, True, tuple(everything), tuple(outcomes), tuple(findings))
