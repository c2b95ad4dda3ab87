"""Checks and repairs of temporary directories that crashed operations leave behind.

A snapshotter builds a new snapshot in ``snapshots/new-*`` and removes one through
``snapshots/rm-*`` (``ctrpy.snapshotter.local``); the diff service mounts snapshots on
``<root>/tmpmounts/ctrpy-mount-*``. Outside of a running operation none of them should exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctrpy.snapshotter.fsutil import remove_tree

from .. import startup
from .model import Check, Finding, Repair, Target
from .snapshots import TEMP_PREFIXES, local_snapshotters

__all__ = ["CHECKS", "REPAIRS"]


def check_snapshot_temps(target: Target) -> list[Finding]:
    """``new-*`` and ``rm-*`` directories in each snapshotter's ``snapshots/``."""
    found: list[Finding] = []
    for name in local_snapshotters(target):
        directory = target.snapshots_root / name / "snapshots"
        try:
            entries = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.startswith(TEMP_PREFIXES):
                continue
            what = "a snapshot being created" if entry.startswith("new-") else "a snapshot being removed"
            path = directory / entry
            found.append(
                Finding(
                    "temp",
                    str(path),
                    f"left by a crash: {what}",
                    "remove",
                    "remove-temp",
                    {"path": str(path)},
                )
            )
    return found


def check_tmpmounts(target: Target) -> list[Finding]:
    """Entries of ``<root>/tmpmounts`` (mount points of interrupted diff operations)."""
    try:
        entries = sorted(os.listdir(target.tmpmounts))
    except FileNotFoundError:
        return []
    found: list[Finding] = []
    for entry in entries:
        path = target.tmpmounts / entry
        found.append(
            Finding(
                "temp",
                str(path),
                "temporary mount point left by an interrupted operation",
                "unmount and remove",
                "remove-tmpmount",
                {"path": str(path)},
            )
        )
    return found


def repair_remove_temp(target: Target, finding: Finding) -> str:
    """Delete the directory tree (detaching anything mounted inside first)."""
    path = Path(str(finding.details["path"]))
    if not os.path.lexists(path):
        return "already gone"
    if not remove_tree(path):
        raise OSError(f"{path} could not be removed")
    return "removed"


def repair_remove_tmpmount(target: Target, finding: Finding) -> str:
    """Unmount the temporary mount point and remove it, as ctrpyd's start-up does."""
    return startup.remove_tmpmount(Path(str(finding.details["path"])))


CHECKS: list[tuple[str, Check]] = [
    ("snapshot-temps", check_snapshot_temps),
    ("tmpmounts", check_tmpmounts),
]

REPAIRS: dict[str, Repair] = {
    "remove-temp": repair_remove_temp,
    "remove-tmpmount": repair_remove_tmpmount,
}
