"""``ctrpy-shim delete``: clean up a bundle whose shim is gone.

What containerd's shims do in ``delete``: make sure the shim is gone (a ctrpy-shim still
running under the bundle's ``shim.pid`` is killed), ``runc delete --force`` the container
(which kills what is left of it and removes its cgroups), unmount the rootfs, and remove the
bundle. The result is the init process's exit from the bundle's ``exit`` file when the shim
wrote one, else exit status 255 at the current time, as containerd reports for a dead shim.

The bundle directory is removed only once nothing is mounted below it.

A shim may serve several tasks (a pod's containers share their sandbox's shim): then several
bundles of the namespace name it in ``address``. A live shim is killed only for the last bundle
that names it, so that cleaning up one task of a pod does not end the others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time

from ctrpy import mount as mounts
from ctrpy.errors import CtrpyError

from . import attachproto, files
from .config import PROCESS_NAME, ShimConfig
from .files import ExitInfo
from .runc import last_logged_error

RUNC_TIMEOUT = 30.0
KILL_WAIT = 5.0


def _is_shim(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) ctrpy-shim."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    name = stat[stat.index(b"(") + 1 : stat.rindex(b")")]
    state = stat[stat.rindex(b")") + 2 :][:1]
    return name == PROCESS_NAME and state not in (b"Z", b"X")


def shared_with(bundle: str) -> list[str]:
    """The other bundles of the namespace whose ``address`` names the same shim as ``bundle``."""
    address = files.read_text(bundle, files.ADDRESS)
    if not address:
        return []
    parent, name = os.path.split(os.path.normpath(bundle))
    try:
        entries = [e for e in os.scandir(parent) if e.name != name and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    return [e.path for e in entries if files.read_text(e.path, files.ADDRESS) == address]


def kill_shim(bundle: str) -> None:
    """SIGKILL the bundle's shim if it is still running, and wait for it to disappear; a shim
    that other bundles name is left to them (it serves their tasks too)."""
    pid = files.read_pid(bundle, files.SHIM_PID)
    if pid is None or pid == os.getpid() or not _is_shim(pid) or shared_with(bundle):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + KILL_WAIT
    while _is_shim(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def runtime_delete(config: ShimConfig) -> None:
    """``runc delete --force`` with the runtime recorded in the bundle (or the config's)."""
    recorded = files.read_runtime(config.bundle)
    binary = recorded.binary if recorded else config.runtime_binary
    root = recorded.root if recorded else config.runtime_root
    log = os.path.join(config.bundle, files.RUNC_LOG)
    offset = os.stat(log).st_size if os.path.exists(log) else 0
    argv = [binary, "--root", root, "--log", log, "--log-format", "json", "delete", "--force", config.id]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=RUNC_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CtrpyError(f"OCI runtime delete failed: {exc}") from None
    if result.returncode != 0:
        message = last_logged_error(log, offset) or result.stderr.decode(errors="replace").strip()
        if "does not exist" not in message:
            raise CtrpyError(f"OCI runtime delete failed: {message}")


def delete_bundle(config: ShimConfig) -> ExitInfo:
    """Clean up ``config.bundle`` after its shim died; returns the init process's exit.

    Raises CtrpyError when the runtime cannot delete the container or something stays
    mounted (the bundle is then left in place, to try again).
    """
    bundle = config.bundle
    exists = os.path.isdir(bundle)
    if exists:
        kill_shim(bundle)
    init_pid = files.read_pid(bundle, files.INIT_PID) or 0
    info = files.read_exit(bundle) or ExitInfo(init_pid, files.UNKNOWN_EXIT_STATUS, files.now_ns())
    runtime_delete(config)
    if not exists:
        return info
    rootfs = os.path.join(bundle, files.ROOTFS)
    try:
        mounts.unmount_recursive(rootfs)
    except OSError as exc:
        raise CtrpyError(f"unmounting {rootfs} failed: {exc}") from None
    if mounts.mountpoints_under(bundle):
        raise CtrpyError(f'bundle "{bundle}" still has mounts; not removed')
    if not _is_shim(files.read_pid(bundle, files.SHIM_PID) or 0):
        stale = [config.socket_path, attachproto.socket_for(config.socket_path)]
        address = files.read_text(bundle, files.ADDRESS)
        if address and address != config.socket_address:
            stale.append(address.removeprefix("unix://"))  # the dead shim of the task's pod
        for path in stale:
            _unlink_stale_socket(path)
    shutil.rmtree(bundle)
    return info


def _unlink_stale_socket(path: str) -> None:
    """Remove a socket nobody listens on any more (one that answers belongs to a live shim)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except FileNotFoundError:
        return
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
