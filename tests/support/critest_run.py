"""Run the upstream CRI validation suite (critest) against ctrpyd and/or a reference containerd,
offline: critest's images come from a loopback registry through hosts.toml mirrors.

A session tool, not part of CI (critest and crictl are not installed there): ``scripts/critest-run``
calls :func:`main`. It builds critest's images (``ctrpy.testimage.critest``) with Debian's dynamic
busybox (downloaded with ``apt-get download busybox`` and unpacked with ``dpkg-deb`` when no
``--busybox`` is given: Debian's busybox and busybox-static cannot be installed together), serves
them (``tests.support.critest_registry``), writes a pod network of the run's own (a bridge and a
/24 no route covers, portmap for host ports), starts each daemon with its CRI pulling through the
hosts directory, runs critest with a JSON report and prints a summary: the counts and every
failed spec with the first line of its failure.

After each critest run, the SysV shared memory segments its HostIpc specs made on the host (and
never remove) are removed. On exit, even after a failure or Ctrl-C: every pod left is stopped and removed through the CRI (so
CNI DEL runs), the daemons are torn down as the test fixtures do it, then the network's iptables
rules and bridge go. Only processes this run started are signalled, by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrpy import errors
from ctrpy.cri.client import CriClient
from ctrpy.testimage.critest import HostTools
from tests.support.containerd import reference_containerd
from tests.support.critest_registry import SANDBOX_IMAGE, ServedImages, critest_registry
from tests.support.ctrpyd import Daemon
from tests.support.podnet import PodNetwork, free_subnet, plugin_dir

#: Pod networks of critest runs come from here (the tests use 10.200.0.0/13, bench 10.216.0.0/14).
SUBNETS = ipaddress.IPv4Network("10.224.0.0/14")
#: Host ports critest's networking and streaming specs bind.
CRITEST_PORTS = (12000, 12001, 12002, 12003)


def cni_bin_dir() -> str:
    directory = plugin_dir()
    if directory is None:
        raise SystemExit("the CNI plugins are not installed (apt-get install containernetworking-plugins)")
    return directory


def dynamic_busybox(work: Path) -> str:
    """Debian's dynamic busybox, unpacked from its package into ``work`` (not installed)."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "busybox"], cwd=work, check=True, capture_output=True)
    (package,) = work.glob("busybox_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(package), str(work / "busybox")], check=True)
    return str(work / "busybox" / "bin" / "busybox")


def containerd_cri(directory: Path, network: PodNetwork, bin_dir: str, hosts_dir: Path) -> str:
    """The CRI plugin's tables for containerd 1.6: ctrpy's pause image as the sandbox (pulled
    through the mirror), runc v2 with cgroupfs, no AppArmor, the oom_score_adj the kernel allows,
    network namespaces and the streaming server kept to this run."""
    plugin = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""[{plugin}]
  sandbox_image = "{SANDBOX_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  systemd_cgroup = false
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{plugin}.cni]
  bin_dir = "{bin_dir}"
  conf_dir = "{network.conf_dir}"
[{plugin}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{plugin}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{plugin}.containerd.runtimes.runc.options]
  Root = "{directory / 'runc'}"
  SystemdCgroup = false
[{plugin}.registry]
  config_path = "{hosts_dir}"
"""


def remove_all_pods(address: str) -> None:
    """Stop and remove every pod through the CRI (errors ignored: this is cleanup)."""
    with contextlib.suppress(Exception), CriClient(address, 120) as client:
        for pod in client.list_pod_sandbox():
            with contextlib.suppress(errors.CtrpyError):
                client.stop_pod_sandbox(pod.id)
            with contextlib.suppress(errors.CtrpyError):
                client.remove_pod_sandbox(pod.id)


@contextlib.contextmanager
def ctrpyd_cri(base: Path, network: PodNetwork, bin_dir: str, hosts_dir: Path) -> Iterator[str]:
    base.mkdir(parents=True, exist_ok=True)
    config = base / "ctrpyd.toml"
    config.write_text(f'version = 1\n[cri]\ncni_conf_dir = "{network.conf_dir}"\n'
                      f'cni_bin_dirs = ["{bin_dir}"]\nregistry_config_path = "{hosts_dir}"\n')
    daemon = Daemon(base=base, extra_args=("--config", str(config)))
    try:
        daemon.start(timeout=60)
        yield str(daemon.address)
    finally:
        remove_all_pods(str(daemon.address))
        with contextlib.suppress(Exception):
            daemon.stop()
        daemon.cleanup()


@contextlib.contextmanager
def containerd_with_cri(directory: Path, network: PodNetwork, bin_dir: str, hosts_dir: Path) -> Iterator[str]:
    with reference_containerd(directory, start_limit=60,
                              cri=containerd_cri(directory, network, bin_dir, hosts_dir)) as ctrd:
        ctrd.namespaces.add("k8s.io")
        try:
            yield ctrd.address
        finally:
            remove_all_pods(ctrd.address)


def busy_ports() -> list[int]:
    taken = []
    for port in CRITEST_PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                taken.append(port)
    return taken


#: The size of the SysV segment critest's HostIpc specs make on the host (``ipcmk -M 1048576``).
HOST_IPC_SEGMENT = 1048576


def shm_segments() -> dict[int, tuple[int, int]]:
    """The host's SysV shared memory segments: shmid -> (bytes, number attached)."""
    segments: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError), open("/proc/sysvipc/shm") as table:
        header = table.readline().split()
        column = {name: index for index, name in enumerate(header)}
        for line in table:
            fields = line.split()
            segments[int(fields[column["shmid"]])] = (int(fields[column["size"]]), int(fields[column["nattch"]]))
    return segments


def remove_host_ipc_segments(before: dict[int, tuple[int, int]]) -> int:
    """Remove the segments critest's HostIpc specs leave on the host (it never removes them):
    those new since ``before``, of their size, attached nowhere. Returns how many went."""
    removed = 0
    for shmid, (size, attached) in shm_segments().items():
        ours = shmid not in before and size == HOST_IPC_SEGMENT and attached == 0
        if ours and subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True).returncode == 0:
            removed += 1
    return removed


@dataclass
class Outcome:
    """What one critest run gave."""

    target: str
    returncode: int
    counts: dict[str, int]
    failed: list[tuple[str, str]]
    skipped: list[str]
    passed: list[str]
    seconds: float


def _spec_name(spec: dict[str, Any]) -> str:
    parents = spec.get("ContainerHierarchyTexts") or []
    return " ".join([*parents, spec.get("LeafNodeText", "")]).strip()


def read_report(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[str], list[str]]:
    """Counts by state, failed specs (name, first line of the failure), skipped and passed names,
    from ginkgo's JSON report (spec leaves only: suite set-up nodes are not specs)."""
    counts: dict[str, int] = {}
    failed: list[tuple[str, str]] = []
    skipped: list[str] = []
    passed: list[str] = []
    if not path.exists():
        return counts, failed, skipped, passed
    for suite in json.loads(path.read_text()):
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                continue
            state = spec.get("State", "unknown")
            counts[state] = counts.get(state, 0) + 1
            name = _spec_name(spec)
            if state == "passed":
                passed.append(name)
            elif state == "skipped":
                skipped.append(name)
            else:
                message = (spec.get("Failure") or {}).get("Message", "").strip().splitlines()
                failed.append((name, message[0] if message else state))
    return counts, failed, skipped, passed


def run_critest(critest: str, crictl: str, address: str, target: str, out: Path, focus: list[str],
                skip: list[str], parallel: int, timeout: float, extra: list[str]) -> Outcome:
    """Run critest against ``unix://<address>`` with its output in ``out/<target>.log``."""
    endpoint = f"unix://{address}"
    config = out / "crictl.yaml"
    config.write_text(f"runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 60\n")
    info = subprocess.run([crictl, "--config", str(config), "version"], capture_output=True, text=True, timeout=60)
    print(f"[{target}] crictl version:\n{info.stdout.strip() or info.stderr.strip()}", flush=True)
    report = out / f"{target}.json"
    command = [critest, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
               "--ginkgo.no-color", "--ginkgo.json-report", str(report), "--report-dir", str(out),
               "--report-prefix", target]
    if parallel > 1:  # critest then runs the suite through ginkgo's parallel mode
        command += ["--parallel", str(parallel)]
    command += [f"--ginkgo.focus={pattern}" for pattern in focus]
    command += [f"--ginkgo.skip={pattern}" for pattern in skip]
    command += extra
    print(f"[{target}] {shlex.join(command)}", flush=True)
    started = time.monotonic()
    segments = shm_segments()
    log = out / f"{target}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=out, start_new_session=True)
        try:
            returncode = process.wait(timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            os.killpg(process.pid, 9)
            process.wait(30)
            returncode = -9
        finally:
            remove_host_ipc_segments(segments)
    counts, failed, skipped, passed = read_report(report)
    return Outcome(target, returncode, counts, failed, skipped, passed, time.monotonic() - started)


def summarize(outcome: Outcome, out: Path) -> str:
    counts = ", ".join(f"{state} {n}" for state, n in sorted(outcome.counts.items())) or "no report"
    lines = [f"== {outcome.target}: {counts} (critest exit {outcome.returncode}, "
             f"{outcome.seconds / 60:.1f} min; log {out / (outcome.target + '.log')})"]
    lines += [f"  FAILED {name}\n         {why}" for name, why in outcome.failed]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/critest-run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--critest", required=True, help="the critest binary (cri-tools v1.36)")
    parser.add_argument("--crictl", required=True, help="the crictl binary")
    parser.add_argument("--target", choices=("ctrpyd", "containerd", "both"), default="both")
    parser.add_argument("--busybox", help="a dynamic busybox (default: Debian's, fetched with apt-get download)")
    parser.add_argument("--focus", action="append", default=[], help="ginkgo focus regexp (repeatable)")
    parser.add_argument("--skip", action="append", default=[], help="ginkgo skip regexp (repeatable)")
    parser.add_argument("--parallel", type=int, default=1, help="critest's --parallel")
    parser.add_argument("--critest-arg", action="append", default=[], dest="extra",
                        help="one more argument for critest, e.g. --critest-arg=--benchmark (repeatable)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per critest run")
    parser.add_argument("--out", help="directory for logs, JSON reports and the summary (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("critest-run needs root (runc, CNI, mounts)")
    for binary in (args.critest, args.crictl):
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"{binary} is not an executable")
    if busy_ports():
        print(f"warning: host ports {busy_ports()} are in use; critest's port specs will fail", flush=True)
    # Short: unix socket paths are limited to 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="critest-"))
    work.chmod(0o711)  # pods with a user namespace: runc reaches the bundles from inside it
    out = Path(args.out).absolute() if args.out else Path(tempfile.mkdtemp(prefix="critest-report-"))
    out.mkdir(parents=True, exist_ok=True)
    targets = ["containerd", "ctrpyd"] if args.target == "both" else [args.target]
    bin_dir = cni_bin_dir()
    outcomes: list[Outcome] = []
    try:
        busybox = args.busybox or dynamic_busybox(work / "deb")
        started = time.monotonic()
        with ExitStack() as stack:
            served: ServedImages = stack.enter_context(critest_registry(work / "images", HostTools(busybox=busybox)))
            print(f"registry {served.registry.host}: {len(served.infos)} names pushed in "
                  f"{time.monotonic() - started:.1f} s; hosts dir {served.hosts_dir}", flush=True)
            for target in targets:
                tag = secrets.token_hex(3)
                network = PodNetwork(name=f"ctrpy-critest-{tag}", bridge=f"ctc{tag}", subnet=free_subnet(SUBNETS),
                                  conf_dir=work / target / "net.d", data_dir=work / target / "ipam")
                with ExitStack() as per_target:
                    per_target.callback(network.remove)
                    network.write("10-critest.conflist")
                    if target == "ctrpyd":
                        daemon = ctrpyd_cri(work / "p", network, bin_dir, served.hosts_dir)
                    else:
                        daemon = containerd_with_cri(work / "c", network, bin_dir, served.hosts_dir)
                    address = per_target.enter_context(daemon)
                    outcome = run_critest(args.critest, args.crictl, address, target, out, args.focus,
                                          args.skip, args.parallel, args.timeout, args.extra)
                outcomes.append(outcome)
                print(summarize(outcome, out).splitlines()[0], flush=True)  # the rest comes at the end
    finally:
        if outcomes:
            text = "\n\n".join(summarize(outcome, out) for outcome in outcomes)
            (out / "summary.txt").write_text(text + "\n")
            print(f"\n{text}\n\nsummary: {out / 'summary.txt'}", flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
