"""Checks and repairs of what the CRI's pod sandboxes can leave: pinned network namespaces and
CNI attachments that no sandbox record claims, and sandboxes a crash left half-made.

ctrpyd does all of this itself at start-up (:meth:`ctrpy.manager.cri.sandboxes.Sandboxes.
reconcile`); the doctor reports it while ctrpyd is down (or running: a netns or cache entry of a
pod being created at that instant may show up then) and, with ``--fix``, repairs the first two.
A CNI attachment is repaired by DEL with the configuration its cache entry holds, so that the
IPAM frees the address (plugins from the default bin dirs).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from ..cri import netns as netns_mod
from ..cri.cni import CNI, PodRequest
from .model import Check, Finding, Repair, Target

__all__ = ["CHECKS", "REPAIRS"]


def _records(target: Target) -> dict[str, dict[str, object]]:
    """The sandbox records under ``<root>/cri/sandboxes``, by id (unparsable ones skipped)."""
    directory = target.root / "cri" / "sandboxes"
    found: dict[str, dict[str, object]] = {}
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            try:
                doc = json.loads((directory / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                found[doc["id"]] = doc
    return found


def check_netns(target: Target) -> list[Finding]:
    """Files under ``<state>/netns`` that no sandbox record names."""
    claimed = [str(r.get("netns") or "") for r in _records(target).values()]
    return [
        Finding("cri", left.path, "network namespace no pod sandbox claims" + ("" if left.pinned else " (not pinned)"),
                "unpin and remove", "remove-netns", {"path": left.path})
        for left in netns_mod.list_leftovers(target.state, [c for c in claimed if c])
    ]  # fmt: skip


def check_cni(target: Target) -> list[Finding]:
    """CNI result cache entries of sandboxes that have no record: their addresses stay taken."""
    known = set(_records(target))
    cni = CNI(target.root / "cni")
    return [
        Finding("cri", f"cni:{sandbox_id}", "CNI attachment of a sandbox that no longer exists",
                "CNI DEL (frees the address)", "cni-teardown", {"sandbox": sandbox_id})
        for sandbox_id in sorted(cni.cached_sandboxes() - known)
    ]  # fmt: skip


def check_half_made(target: Target) -> list[Finding]:
    """Sandboxes whose RunPodSandbox never finished (ctrpyd undoes them when it starts)."""
    return [
        Finding("cri", str(sandbox_id), "pod sandbox left half-made by a crash: ctrpyd undoes it at start-up")
        for sandbox_id, record in _records(target).items() if record.get("phase") == "creating"
    ]  # fmt: skip


def repair_remove_netns(target: Target, finding: Finding) -> str:
    path = str(finding.details["path"])
    if not os.path.lexists(path):
        return "already gone"
    netns_mod.remove(path)
    return "removed"


def repair_cni_teardown(target: Target, finding: Finding) -> str:
    sandbox_id = str(finding.details["sandbox"])
    cni = CNI(Path(target.root) / "cni")
    if not cni.attachments(sandbox_id):
        return "already gone"
    asyncio.run(cni.teardown(PodRequest(sandbox_id, "")))
    return "deleted"


CHECKS: list[tuple[str, Check]] = [("cri-netns", check_netns), ("cri-cni", check_cni),
                                   ("cri-sandboxes", check_half_made)]
REPAIRS: dict[str, Repair] = {"remove-netns": repair_remove_netns, "cni-teardown": repair_cni_teardown}
