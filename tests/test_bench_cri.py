"""The CRI benchmark's set-up (bench/cri_setup.py) works and cleans up after itself.

The benchmark itself is not run here (its numbers mean nothing under test load); this keeps the
two CRI runtimes it starts (containerd with its CRI plugin on, ctrpyd) running pods on one CNI
network, and makes sure nothing of that network or of the pods survives the context.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cri_setup import cni_bin_dir, cri_pair
from bench.harness import WHICH

try:
    cni_bin_dir()
except RuntimeError:
    pytest.skip("containernetworking-plugins not installed (scripts/bootstrap installs them)",
                allow_module_level=True)


@pytest.fixture
def work() -> Iterator[Path]:
    # Short: the daemons' unix sockets live below it.
    path = Path(tempfile.mkdtemp(prefix="cribench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def nat_rules(name: str) -> list[str]:
    listing = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if name in line]


def test_both_runtimes_run_pods_on_one_network_and_leave_nothing(work: Path) -> None:
    with cri_pair(work / "cri") as pair:
        network = pair.network
        parents = [pair.cgroup_parent(which) for which in WHICH]
        for which in WHICH:
            with pair.cri(which) as client:
                pod_id = client.run_pod_sandbox(pair.pod(which, "probe"))
                ip = client.pod_sandbox_status(pod_id).status.network.ip
                assert ipaddress.ip_address(ip) in network.subnet, (which, ip)
                assert pair.pause_pid(which, pod_id), which
                assert pair.shim_pids(which), which
        # Left running on purpose: the context's teardown must remove them.
        assert subprocess.run(["ip", "link", "show", network.bridge], capture_output=True).returncode == 0
    assert subprocess.run(["ip", "link", "show", network.bridge], capture_output=True).returncode != 0
    assert nat_rules(network.name) == []
    cgroups = Path("/sys/fs/cgroup")
    for parent in (p.strip("/") for p in parents):  # v2 at the root, v1 in each hierarchy
        assert not (cgroups / parent).exists() and not list(cgroups.glob(f"*/{parent}")), parent
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(work) in line]
