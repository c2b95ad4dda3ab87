"""A private reference containerd (the host's ``/usr/bin/containerd``) for tests and benchmarks.

Plain Python on purpose: benchmarks import this without pytest. Use it as a context manager::

    with reference_containerd(tmp_path / "ctrd") as ctrd:
        ctrd.ctr("images", "import", str(archive))
        ctrd.ctr("run", "--rm", *ctrd.run_flags(), image, "t1", "echo", "hi")

Everything lives under the given directory: root, state, the gRPC and ttrpc sockets, the
config, the log, runc's state (``run_flags``) and ctr's FIFOs. Two things containerd 1.6 puts
elsewhere and cleans itself: shim sockets in ``/run/containerd/s/`` and, for a running task,
cgroups at ``/sys/fs/cgroup/<controller>/<namespace>/<id>``. Each instance gets its own
namespace name (``ctrd.namespace``, the default for ``ctrd.ctr``), so cgroup paths never clash.

On exit, even after a failure: tasks are killed and containers deleted through ctr, containerd
gets SIGTERM then SIGKILL by pid, leftover shims and container processes of this instance are
killed by pid, everything mounted under the directory is lazily unmounted, and the empty cgroup
directories of the instance's namespaces are removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
CGROUP_ROOT = Path("/sys/fs/cgroup")
TASK_STATE = "io.containerd.runtime.v2.task"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
MNT_DETACH = 2

# Plugins that a private, offline daemon must not start: the CRI plugin (network, CNI,
# streaming server), a directory under /opt, and snapshotters this host cannot use.
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
)


def run_ctr(address: str, *args: str, namespace: str = "default",
            input: str | bytes | None = None, timeout: float = 60,
            text: bool = True, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``ctr --address ADDRESS --namespace NAMESPACE ARGS...`` and capture its output.

    With ``text`` false, stdout and stderr are bytes (the annotation says str for the common
    case). Raises subprocess.TimeoutExpired after ``timeout`` seconds (ctr is killed) and, with
    ``check``, subprocess.CalledProcessError on a non-zero exit.
    """
    if isinstance(input, str) and not text:
        input = input.encode()
    return subprocess.run(
        [CTR, "--address", address, "--namespace", namespace, *args],
        input=input, capture_output=True, text=text, timeout=timeout, check=check)


@dataclass
class ReferenceContainerd:
    """A containerd started by :func:`reference_containerd`, and where its things live."""

    directory: Path
    namespace: str
    process: subprocess.Popen[bytes] | None = None
    namespaces: set[str] = field(default_factory=set)

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def address(self) -> str:
        return str(self.directory / "c.sock")

    @property
    def ttrpc_address(self) -> str:
        return str(self.directory / "c.sock.ttrpc")

    @property
    def config_path(self) -> Path:
        return self.directory / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.directory / "containerd.log"

    @property
    def runc_root(self) -> Path:
        return self.directory / "runc"

    @property
    def fifo_dir(self) -> Path:
        return self.directory / "fifo"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def run_flags(self) -> list[str]:
        """Flags for ``ctr run`` that keep runc's state and ctr's FIFOs inside the directory."""
        return ["--runc-root", str(self.runc_root), "--fifo-dir", str(self.fifo_dir)]

    def ctr(self, *args: str, namespace: str | None = None, input: str | bytes | None = None,
            timeout: float = 60, text: bool = True,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """:func:`run_ctr` against this daemon, in ``self.namespace`` unless told otherwise.

        Raises subprocess.CalledProcessError (with ctr's stderr in the message) when ``check``
        is true and ctr fails, subprocess.TimeoutExpired after ``timeout``.
        """
        ns = namespace or self.namespace
        self.namespaces.add(ns)
        result = run_ctr(self.address, *args, namespace=ns, input=input, timeout=timeout,
                         text=text)
        if check and result.returncode != 0:
            raise CtrFailed(result)
        return result

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of containerd's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class CtrFailed(subprocess.CalledProcessError):
    """ctr exited non-zero; ``str()`` shows the command, status, stdout and stderr."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(result.returncode, result.args, result.stdout, result.stderr)

    def __str__(self) -> str:
        args = self.cmd[5:] if isinstance(self.cmd, list) else self.cmd
        return (f"ctr {args} exited {self.returncode}\nstdout: {self.stdout!r}\n"
                f"stderr: {self.stderr!r}")


def _config(ctrd: ReferenceContainerd, cri: str | None = None) -> str:
    # With ``cri`` (the TOML of the CRI plugin's tables), that plugin runs; it is off otherwise.
    names = [name for name in DISABLED_PLUGINS if cri is None or name != CRI_PLUGIN]
    disabled = ", ".join(f'"{name}"' for name in names)
    return f"""version = 2
root = "{ctrd.root}"
state = "{ctrd.state}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{ctrd.address}"

[ttrpc]
  address = "{ctrd.ttrpc_address}"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

# Collect garbage only when asked (a --sync delete): a collection in the middle of a test would
# remove blobs the test just wrote without a lease, and make the reference flaky.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 0
  mutation_threshold = 1000000000
""" + (f"\n{cri}\n" if cri is not None else "")


def _wait_ready(ctrd: ReferenceContainerd, limit: float) -> None:
    """Poll ``ctr version`` until the daemon answers; raise RuntimeError if it exits or does
    not answer within ``limit`` seconds."""
    deadline = time.monotonic() + limit
    assert ctrd.process is not None
    while True:
        if ctrd.process.poll() is not None:
            raise RuntimeError(f"containerd exited with {ctrd.process.returncode}:\n"
                               f"{ctrd.log_tail()}")
        if os.path.exists(ctrd.address):
            result = run_ctr(ctrd.address, "version", timeout=10)
            if result.returncode == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"containerd did not answer within {limit}s:\n{ctrd.log_tail()}")
        time.sleep(0.05)


@contextlib.contextmanager
def reference_containerd(directory: str | os.PathLike[str],
                         start_limit: float = 30, cri: str | None = None) -> Iterator[ReferenceContainerd]:
    """Start a private containerd under ``directory`` (created if needed), yield it once it
    answers, and tear everything down on exit, even on error.

    ``cri``, when given, turns the CRI plugin on with these TOML tables appended to the config
    (``[plugins."io.containerd.grpc.v1.cri"]`` and below: sandbox image, CNI directories...).

    Raises FileNotFoundError if containerd or ctr is not installed, RuntimeError if the daemon
    dies or does not answer within ``start_limit`` seconds.
    """
    for binary in (CONTAINERD, CTR):
        if not os.access(binary, os.X_OK):
            raise FileNotFoundError(f"{binary} is missing: install Debian's containerd")
    base = Path(directory).absolute()
    base.mkdir(parents=True, exist_ok=True)
    ctrd = ReferenceContainerd(base, namespace=f"ctrpytest-{secrets.token_hex(4)}")
    if len(ctrd.ttrpc_address) >= 100:
        raise ValueError(f"socket path too long for a unix socket: {ctrd.ttrpc_address}")
    ctrd.config_path.write_text(_config(ctrd, cri))
    try:
        with open(ctrd.log_path, "ab") as log:
            ctrd.process = subprocess.Popen(
                [CONTAINERD, "--config", str(ctrd.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        _wait_ready(ctrd, start_limit)
        yield ctrd
    finally:
        stop(ctrd)


def stop(ctrd: ReferenceContainerd, grace: float = 10) -> None:
    """Tear down ``ctrd``: its tasks and containers, the daemon, stray shims, mounts under its
    directory, and empty cgroups of its namespaces. A failing step is reported on stderr and
    the next one still runs, so cleanup never hides the error that ended a test."""
    process = ctrd.process
    containers: dict[str, set[str]] = {ns: set() for ns in ctrd.namespaces | {ctrd.namespace}}

    def remove_through_ctr() -> None:
        if process is not None and process.poll() is None:
            for ns, ids in _remove_tasks_and_containers(ctrd).items():
                containers.setdefault(ns, set()).update(ids)

    def stop_daemon() -> None:
        if process is not None:
            _terminate(process, grace)

    def collect_bundles() -> None:  # tasks a dead daemon left behind
        for bundle in (ctrd.state / TASK_STATE).glob("*/*"):
            containers.setdefault(bundle.parent.name, set()).add(bundle.name)

    def remove_all_cgroups() -> None:
        for ns, ids in containers.items():
            # "default" and the CRI's "k8s.io" may be shared with other daemons here: only our
            # containers' cgroups.
            remove_cgroups(ns, ids if ns in ("default", "k8s.io") else None)

    steps = (remove_through_ctr, stop_daemon, collect_bundles,
             lambda: _kill_leftover_shims(ctrd), lambda: unmount_under(ctrd.directory),
             remove_all_cgroups)
    for step in steps:
        try:
            step()
        except Exception as err:
            print(f"reference containerd cleanup: {err!r}", file=sys.stderr)


def _remove_tasks_and_containers(ctrd: ReferenceContainerd) -> dict[str, set[str]]:
    """Kill and delete every task, delete every container; return the container ids seen, by
    namespace."""

    def quiet(*args: str, ns: str) -> list[str]:
        try:
            result = run_ctr(ctrd.address, *args, namespace=ns, timeout=20)
        except subprocess.TimeoutExpired:
            return []
        return result.stdout.split() if result.returncode == 0 else []

    seen: dict[str, set[str]] = {}
    for ns in quiet("namespaces", "ls", "-q", ns="default"):
        for task in quiet("tasks", "ls", "-q", ns=ns):
            quiet("tasks", "kill", "--all", "--signal", "SIGKILL", task, ns=ns)
            quiet("tasks", "delete", "--force", task, ns=ns)
        seen[ns] = set(quiet("containers", "ls", "-q", ns=ns))
        for container in seen[ns]:
            quiet("containers", "delete", container, ns=ns)
    return seen


def _terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the daemon by pid, then SIGKILL it if it has not exited after ``grace``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _kill_leftover_shims(ctrd: ReferenceContainerd) -> None:
    """SIGKILL shims (and their containers' init processes) this daemon left behind, and
    remove their sockets.

    Only our own processes are touched: a shim is a ``containerd-shim*`` process whose
    ``-address`` is this daemon's private socket; an init process is the pid in one of our
    bundles and still sits in a cgroup of that bundle's namespace.
    """
    killed = []
    for bundle in sorted((ctrd.state / TASK_STATE).glob("*/*")):
        init = _read_pid(bundle / "init.pid")
        if init is not None and f"/{bundle.parent.name}/" in _read(f"/proc/{init}/cgroup"):
            killed.append(init)
    killed += shim_pids(ctrd.address)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_dead(killed, limit=10)
    for bundle in sorted((ctrd.state / TASK_STATE).glob("*/*")):
        # The shim's socket lives outside our directory (/run/containerd/s/<hash>).
        address = _read(str(bundle / "address")).strip()
        if address.startswith("unix:///run/containerd/s/"):
            with contextlib.suppress(OSError):
                os.unlink(address.removeprefix("unix://"))


def _wait_dead(pids: list[int], limit: float) -> None:
    """Wait until every pid has exited (gone or a zombie), or ``limit`` seconds pass, so that
    their mounts and cgroups are free to remove."""
    deadline = time.monotonic() + limit
    for pid in pids:
        while time.monotonic() < deadline:
            stat = _read(f"/proc/{pid}/stat")
            # The state letter follows the ")" that closes the command name.
            if not stat or stat.rpartition(")")[2].split()[:1] == ["Z"]:
                break
            time.sleep(0.02)


def shim_pids(address: str) -> list[int]:
    """Pids of live containerd shims started for the daemon at ``address``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _read(f"/proc/{entry}/cmdline").split("\0")
        if (os.path.basename(argv[0]).startswith("containerd-shim")
                and any(a == "-address" and b == address for a, b in itertools.pairwise(argv))):
            pids.append(int(entry))
    return pids


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _unescape(field_: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and field_[i + 1:i + 4].isdigit():
            out.append(chr(int(field_[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def mounts_under(directory: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``directory``, as listed in /proc/self/mountinfo."""
    base = os.path.realpath(directory)
    points = []
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = _unescape(fields[4])
            if point == base or point.startswith(base + "/"):
                points.append(point)
    return points


def unmount_under(directory: str | os.PathLike[str]) -> None:
    """Lazily unmount everything mounted at or below ``directory``, deepest first."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(8):  # stacked mounts on one point need one pass each
        points = mounts_under(directory)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            libc.umount2(os.fsencode(point), MNT_DETACH)


def _hierarchies() -> list[Path]:
    """The mounted cgroup hierarchies: /sys/fs/cgroup itself on v2, its mounted children on
    v1 and hybrid hosts."""
    if not CGROUP_ROOT.is_dir():
        return []
    children = [c for c in CGROUP_ROOT.iterdir()
                if c.is_dir() and not c.is_symlink() and os.path.ismount(c)]
    return [CGROUP_ROOT, *children]


def remove_cgroups(namespace: str, ids: set[str] | None = None) -> None:
    """Remove empty cgroup directories ``<hierarchy>/<namespace>`` (or, when ``ids`` is given,
    only ``<hierarchy>/<namespace>/<id>``) and below. Non-empty cgroups are left alone."""
    names = [namespace, *(ids or ())]
    if any(not n or "/" in n or n in (".", "..") for n in names):
        return
    for hierarchy in _hierarchies():
        tops = [hierarchy / namespace / i for i in ids] if ids is not None else [
            hierarchy / namespace]
        for top in tops:
            if not top.is_dir() or top.is_symlink():
                continue
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
