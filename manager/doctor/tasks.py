"""Checks and repairs of the state directory: mounts, bundles, shims, sockets, runtime state.

What is healthy: every bundle ``<state>/tasks/<ns>/<id>/`` has a shim answering at the
address the bundle names; every mount below the state directory is inside such a bundle;
every shim process of this state directory serves a bundle that exists; every socket in
``<state>/s`` answers; the runtime's state (``<state>/runc/<ns>/<id>``) belongs to a bundle;
and a template process runs only while its ctrpyd does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

from ctrpy import mount as mounts
from ctrpy.errors import CtrpyError, FailedPrecondition
from ctrpy.manager.runtime.bundle import Bundle, bundles
from ctrpy.manager.runtime.client import socket_answers
from ctrpy.manager.runtime.launcher import run_shim_delete

from . import procs
from .model import Check, Finding, Repair, Target

__all__ = ["CHECKS", "REPAIRS"]

RUNC_TIMEOUT = 60.0


def _bundle_answers(bundle: Bundle) -> bool:
    address = bundle.address()
    try:
        return bool(address) and socket_answers(address or "")
    except OSError:
        return False


def _live_bundles(target: Target) -> set[Path]:
    return {bundle.path for bundle in bundles(target.state) if _bundle_answers(bundle)}


def _bundle_of(target: Target, path: Path) -> Path | None:
    """The bundle directory ``path`` lies in (or is), if it is below ``<state>/tasks``."""
    try:
        parts = path.relative_to(target.tasks).parts
    except ValueError:
        return None
    return target.tasks / parts[0] / parts[1] if len(parts) >= 2 else None


# --- mounts ----------------------------------------------------------------------------------


def check_mounts(target: Target) -> list[Finding]:
    """Mount points below the state directory that no live task owns (a rootfs whose shim is
    gone, anything outside a bundle), and temporary mounts left in ``<root>/tmpmounts``."""
    live = _live_bundles(target)
    found: list[Finding] = []
    points = mounts.mountpoints_under(target.state) + mounts.mountpoints_under(target.tmpmounts)
    for point in sorted(set(points), key=lambda p: (-p.count("/"), p)):  # deepest first
        path = Path(point)
        if path in (target.state, target.tmpmounts):
            continue
        if path.is_relative_to(target.tmpmounts):
            problem = "temporary mount left by an interrupted operation"
        else:
            bundle = _bundle_of(target, path)
            if bundle is not None and bundle in live:
                continue
            if bundle is None:
                problem = "mounted in the state directory outside any bundle"
            elif bundle.is_dir():
                problem = f"mounted in bundle {bundle.parent.name}/{bundle.name}, whose shim is gone"
            else:
                problem = "mounted in a bundle that no longer exists"
        found.append(Finding("mounts", point, problem, "unmount", "unmount", {"path": point}))
    return found


def repair_unmount(target: Target, finding: Finding) -> str:
    """Detach the mount (and anything mounted below it)."""
    point = str(finding.details["path"])
    bundle = _bundle_of(target, Path(point))
    if bundle is not None and bundle in _live_bundles(target):
        raise FailedPrecondition(f"{point} belongs to a live task now")
    if point not in mounts.mountpoints_under(point):
        return "not mounted any more"
    mounts.unmount_recursive(point, detach=True)
    return "unmounted"


# --- bundles ---------------------------------------------------------------------------------


def _is_live_shim(pid: int) -> bool:
    proc = procs.read_proc(pid)
    return proc is not None and proc.live and proc.comm == procs.SHIM_NAME


def _describe_dead(bundle: Bundle) -> str:
    address = bundle.address()
    pid = bundle.shim_pid()
    if not address and pid is None:
        problem = "no shim was ever started for it"
    elif pid is not None and _is_live_shim(pid):
        problem = f"shim {pid} runs but does not answer at {address or 'its address'}"
    elif pid is not None:
        problem = f"shim {pid} is gone"
    else:
        problem = "its shim is gone"
    exit_info = bundle.exit()
    if exit_info is not None:
        problem += f"; exit status {exit_info.exit_status} recorded"
    return problem


def check_bundles(target: Target) -> list[Finding]:
    """Bundles whose shim does not answer (dead, or never started)."""
    found: list[Finding] = []
    for bundle in bundles(target.state):
        if _bundle_answers(bundle):
            continue
        found.append(
            Finding(
                "bundles",
                f"{bundle.namespace}/{bundle.id}",
                _describe_dead(bundle),
                "ctrpy-shim delete",
                "shim-delete",
                {"namespace": bundle.namespace, "id": bundle.id},
            )
        )
    return found


def repair_shim_delete(target: Target, finding: Finding) -> str:
    """Run ``ctrpy-shim delete`` for the bundle: kill what is left, ``runc delete``, unmount,
    remove the bundle. Returns the exit status it reports."""
    bundle = Bundle.at(target.state, str(finding.details["namespace"]), str(finding.details["id"]))
    if not bundle.exists():
        return "bundle already gone"
    if _bundle_answers(bundle):
        raise FailedPrecondition(f'the shim of task "{bundle.id}" answers now')
    info = asyncio.run(
        run_shim_delete(target.state, bundle, runtime_binary=target.runtime_binary, python=target.python)
    )
    return f"removed; exit status {info.exit_status}"


# --- shims -----------------------------------------------------------------------------------


def check_shims(target: Target) -> list[Finding]:
    """Shim processes of this state directory whose bundle is gone, and a template process
    left without its ctrpyd."""
    found: list[Finding] = []
    for shim in procs.shims_of(target.state):
        details: dict[str, str | int] = {
            "pid": shim.pid,
            "starttime": shim.starttime,
            "comm": shim.comm,
            "sockets": "\n".join(shim.sockets),
        }
        if shim.is_template:
            if target.daemon_running:
                continue
            problem = "shim template with no ctrpyd running"
        elif shim.bundle_gone:
            problem = f"shim with no bundle ({shim.bundle or 'unknown'} is gone)"
        else:
            continue
        found.append(Finding("shims", f"pid {shim.pid}", problem, f"kill {shim.pid}", "kill-shim", details))
    return found


def repair_kill_shim(target: Target, finding: Finding) -> str:
    """SIGKILL the process (if it is still the one found) and remove its sockets."""
    pid, starttime = int(finding.details["pid"]), int(finding.details["starttime"])
    killed = procs.kill(pid, starttime, str(finding.details["comm"]))
    if procs.alive(pid, starttime):
        raise CtrpyError(f"process {pid} did not die")
    for path in str(finding.details["sockets"]).split("\n"):
        if path and not socket_answers(path):
            Path(path).unlink(missing_ok=True)
    return "killed" if killed else "already gone"


# --- sockets ---------------------------------------------------------------------------------


def check_sockets(target: Target) -> list[Finding]:
    """Entries of ``<state>/s`` where nothing listens any more."""
    found: list[Finding] = []
    try:
        entries = sorted(os.scandir(target.sockets), key=lambda e: e.name)
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            continue
        if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode) and socket_answers(entry.path):
            continue
        found.append(
            Finding(
                "sockets",
                entry.path,
                "nothing listens on it",
                "remove",
                "remove-socket",
                {"path": entry.path},
            )
        )
    return found


def repair_remove_socket(target: Target, finding: Finding) -> str:
    """Remove the socket file unless something listens on it now."""
    path = str(finding.details["path"])
    if socket_answers(path):
        raise FailedPrecondition(f"{path} answers now")
    Path(path).unlink(missing_ok=True)
    return "removed"


# --- runtime state ---------------------------------------------------------------------------


def _runtime_states(target: Target) -> list[tuple[str, str, Path]]:
    found: list[tuple[str, str, Path]] = []
    try:
        namespaces = sorted(os.scandir(target.runc_root), key=lambda e: e.name)
    except FileNotFoundError:
        return found
    for ns in namespaces:
        if not ns.is_dir(follow_symlinks=False):
            continue
        for container in sorted(os.scandir(ns.path), key=lambda e: e.name):
            if container.is_dir(follow_symlinks=False):
                found.append((ns.name, container.name, Path(container.path)))
    return found


def _init_pid(directory: Path) -> int | None:
    try:
        data = json.loads((directory / "state.json").read_text())
        return int(data["init_process_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_runtime(target: Target) -> list[Finding]:
    """Containers in the runtime's state (``<state>/runc/<ns>/<id>``) with no bundle: their
    shim is gone and nobody will ever delete them."""
    found: list[Finding] = []
    for namespace, container_id, directory in _runtime_states(target):
        if (target.tasks / namespace / container_id).is_dir():
            continue
        pid = _init_pid(directory)
        running = f"; its init process {pid} still runs" if pid and procs.alive(pid) else ""
        found.append(
            Finding(
                "runtime",
                f"{namespace}/{container_id}",
                f"runtime state with no bundle{running}",
                f"{os.path.basename(target.runtime_binary)} delete --force",
                "runtime-delete",
                {"namespace": namespace, "id": container_id, "path": str(directory)},
            )
        )
    return found


def repair_runtime_delete(target: Target, finding: Finding) -> str:
    """``runc --root <state>/runc/<ns> delete --force <id>`` (kills what still runs), then
    remove the state directory should the runtime have left it."""
    namespace, container_id = str(finding.details["namespace"]), str(finding.details["id"])
    if (target.tasks / namespace / container_id).is_dir():
        raise FailedPrecondition(f"task {namespace}/{container_id} has a bundle now")
    argv = [
        target.runtime_binary,
        "--root",
        str(target.runc_root / namespace),
        "delete",
        "--force",
        container_id,
    ]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=RUNC_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CtrpyError(f"OCI runtime delete failed: {exc}") from None
    message = result.stderr.decode(errors="replace").strip()
    if result.returncode != 0 and "does not exist" not in message:
        raise CtrpyError(f"OCI runtime delete failed: {message}")
    directory = Path(str(finding.details["path"]))
    if directory.exists():
        shutil.rmtree(directory)
    return "deleted"


CHECKS: list[tuple[str, Check]] = [
    ("shims", check_shims),
    ("bundles", check_bundles),
    ("runtime", check_runtime),
    ("mounts", check_mounts),
    ("sockets", check_sockets),
]

REPAIRS: dict[str, Repair] = {
    "kill-shim": repair_kill_shim,
    "shim-delete": repair_shim_delete,
    "runtime-delete": repair_runtime_delete,
    "unmount": repair_unmount,
    "remove-socket": repair_remove_socket,
}
