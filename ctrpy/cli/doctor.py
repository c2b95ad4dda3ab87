"""``ctrpy doctor``: find, and with ``--fix`` repair, what crashes left in ctrpyd's directories.

Works on the files directly (see :mod:`ctrpy.manager.doctor`); ctrpyd need not run. When it
does run on that root, the doctor only reports, and ``--fix`` refuses. Exit status: 0 when all
is well, 1 when problems were found and not all of them fixed, 2 for usage errors (including
``--fix`` while ctrpyd runs).
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrpy.client import Client
from ctrpy.errors import CtrpyError, FailedPrecondition, Unavailable

from . import output

if TYPE_CHECKING:  # the doctor's library is imported when it runs: other commands start faster
    from ctrpy.manager.doctor import Finding, Report, Target

USAGE_ERROR = 2
DEFAULT_RUNTIME = "io.containerd.runc.v2"


def _target(args: argparse.Namespace) -> Target:
    """The directories to examine: flags over the config file over ctrpyd's defaults."""
    from ctrpy.manager import config as configuration
    from ctrpy.manager.doctor import Target

    config = configuration.load(args.config) if args.config else configuration.Config()
    config = config.with_overrides(root=args.root, state=args.state)
    if args.stale_after <= 0:
        raise ValueError("--stale-after must be positive")
    return Target.at(
        config.root,
        config.state,
        runtime_binary=config.runtimes.get(DEFAULT_RUNTIME, "runc"),
        stale_after=timedelta(hours=args.stale_after),
        verify=args.verify,
    )


def _action(report: Report, finding: Finding) -> str:
    if not report.fix or not finding.fixable:
        return finding.action_text
    outcome = report.outcome_of(finding)
    if outcome is None:
        return f"{finding.action}: not tried"
    state = "done" if outcome.fixed else "FAILED"
    return f"{finding.action}: {state}" + (f" ({outcome.detail})" if outcome.detail else "")


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "check": finding.check,
        "object": finding.object,
        "problem": finding.problem,
        "action": finding.action_text,
        "fixable": finding.fixable,
    }


def _as_json(report: Report) -> dict[str, Any]:
    findings = []
    for finding in report.findings:
        entry = _finding_json(finding)
        outcome = report.outcome_of(finding)
        entry["outcome"] = None if outcome is None else {"fixed": outcome.fixed, "detail": outcome.detail}
        findings.append(entry)
    return {
        "root": str(report.target.root),
        "state": str(report.target.state),
        "ctrpyd_running": report.target.daemon_running,
        "fix": report.fix,
        "ok": report.ok,
        "findings": findings,
        "remaining": [_finding_json(f) for f in report.remaining],
    }


def _summary(report: Report) -> str:
    lines = []
    if report.target.daemon_running:
        lines.append(
            f"ctrpyd is running on {report.target.root}: report only "
            "(what it is doing right now may show up as a problem)"
        )
    if report.ok:
        lines.append("all problems fixed" if report.findings else "no problems found")
    elif report.fix:
        lines.append(f"{len(report.remaining)} problem(s) remain")
    else:
        fixable = sum(1 for f in report.remaining if f.fixable)
        lines.append(f"{len(report.remaining)} problem(s) found; {fixable} can be repaired with --fix")
    return "\n".join(lines)


def doctor(client: Client, args: argparse.Namespace) -> int:
    """Examine (and repair) the directories; print a table or JSON; return the exit status."""
    try:
        target = _target(args)
    except (CtrpyError, OSError, ValueError) as exc:
        print(f"ctrpy doctor: {exc}", file=sys.stderr)
        return USAGE_ERROR
    from ctrpy.manager.doctor import run

    try:
        report = run(target, fix=args.fix)
    except (FailedPrecondition, Unavailable) as exc:
        print(f"ctrpy doctor: {exc.message}", file=sys.stderr)
        return USAGE_ERROR
    if (args.doctor_format or args.format) == "json":
        output.emit_json(_as_json(report))
    else:
        rows = [(f.check, f.object, f.problem, _action(report, f)) for f in report.findings]
        output.table(("CHECK", "OBJECT", "PROBLEM", "ACTION"), rows)
        print(_summary(report), file=sys.stderr)
    return 0 if report.ok else 1


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = nouns.add_parser(
        "doctor",
        help="find (and with --fix repair) what crashes left in ctrpyd's directories",
        description=(
            "Inspect ctrpyd's root and state directories directly (ctrpyd need not run): mounts, "
            "bundles and shims without each other, snapshot directories and metadata out of step, "
            "stale ingests, content referenced but missing, temporary leftovers. Exit status 0 "
            "when all is well, 1 when problems remain, 2 for usage errors."
        ),
    )
    parser.add_argument("--config", "-c", type=Path, help="ctrpyd's TOML configuration file")
    parser.add_argument("--root", type=Path, help="ctrpyd's root directory (default /var/lib/ctrpy)")
    parser.add_argument("--state", type=Path, help="ctrpyd's state directory (default /run/ctrpy)")
    parser.add_argument(
        "--fix", action="store_true", help="repair what can be repaired (refused while ctrpyd runs)"
    )
    parser.add_argument(
        "--format", dest="doctor_format", choices=("table", "json"), default=None, help="output format"
    )
    parser.add_argument(
        "--stale-after", type=float, default=24.0, metavar="HOURS",
        help="an ingest untouched this long is stale (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--verify", action="store_true", help="also re-hash every blob (reads all content)")
    parser.set_defaults(run=doctor)
