"""The two CRI runtimes of the CRI case, started side by side on one pod network.

The harness's daemons are not used for this: its containerd runs with the CRI plugin off, and
its ctrpyd has no pod network. :func:`cri_pair` starts a second pair in the bench work
directory, each in a CPU-accounting cgroup of its own (as the harness does):

- a private containerd with its CRI plugin on (:func:`tests.support.containerd.reference_containerd`
  with ``cri=``): runc v2 with its state in the containerd directory, cgroupfs, AppArmor off,
  ``restrict_oom_score_adj`` (the CRI asks -998 for the pause process, which some kernels
  refuse: clamped to containerd's own score, as ctrpyd clamps), network namespaces under its
  state directory;
- a ctrpyd (log level info) whose ``[cri]`` points at the same CNI configuration.

Both use one CNI conflist in a conf dir of the run: a bridge, a /24 and a network name of the
run's own, masquerading and portmap as in the shipped default network, host-local's data in the
work directory. Both sandbox images are ctrpy's pause image under the name ctrpyd uses by default
(imported into containerd's ``k8s.io`` with ctr, so no registry is involved), and busybox is
imported into ``k8s.io`` of both. Pods of each daemon go to a cgroup parent of their own.

On exit, even after a failure: every pod is stopped and removed through the CRI (so the CNI DEL
runs), then each daemon is torn down the way the harness does it, then what may still be left
goes by name: the pods' cgroups (what is in them is killed by pid), the iptables rules whose
comments carry the network name, the bridge.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri.client import CriClient
from ctrpy.pause.image import pause_archive
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.crash.support import remove_cgroups as reap_cgroups
from tests.support.containerd import ReferenceContainerd, reference_containerd, run_ctr
from tests.support.containerd import shim_pids as containerd_shim_pids
from tests.support.ctrpyd import Daemon
from tests.support.podnet import PodNetwork, free_subnet, plugin_dir

from .harness import BUSYBOX, LETTER, TEMPLATE_COMM, WHICH, _tear_down_ctrpyd
from .procs import CpuGroup, children, comm, read_pid

#: The sandbox image of both: ctrpyd's default name, under which it provides its own pause image.
PAUSE = "registry.k8s.io/pause:3.10"
CRI_NAMESPACE = "k8s.io"
#: Bench pod networks are drawn from here (the tests use 10.200.0.0/13, critest 10.224.0.0/14).
SUBNETS = ipaddress.IPv4Network("10.216.0.0/14")


def cni_bin_dir() -> str:
    """The directory holding the standard CNI plugins; RuntimeError when none does."""
    directory = plugin_dir()
    if directory is None:
        raise RuntimeError("the CNI plugins are not installed (apt-get install containernetworking-plugins)")
    return directory


def _containerd_cri(directory: Path, network: PodNetwork, bin_dir: str) -> str:
    """The CRI plugin's tables for containerd 1.6 (key names as ``containerd config default``)."""
    plugin = '[plugins."io.containerd.grpc.v1.cri"]'
    return f"""{plugin}
  sandbox_image = "{PAUSE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  systemd_cgroup = false
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
{plugin[:-1]}.cni]
  bin_dir = "{bin_dir}"
  conf_dir = "{network.conf_dir}"
{plugin[:-1]}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
{plugin[:-1]}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{plugin[:-1]}.containerd.runtimes.runc.options]
  Root = "{directory / 'runc'}"
  SystemdCgroup = false
{plugin[:-1]}.registry]
  config_path = "{directory / 'certs.d'}"
"""


@dataclass
class CriPair:
    """The two CRI runtimes, their network and their pods' cgroup parents."""

    containerd: ReferenceContainerd
    ctrpyd: Daemon
    work: Path
    tag: str
    network: PodNetwork
    cpu: dict[str, CpuGroup]
    #: Whether the daemon serves CreateContainer; the reason when it does not.
    containers: dict[str, bool] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)

    def address(self, which: str) -> str:
        return self.containerd.address if which == "containerd" else str(self.ctrpyd.address)

    def cri(self, which: str) -> CriClient:
        return CriClient(self.address(which), timeout=120)

    def cgroup_parent(self, which: str) -> str:
        return f"/ctrpy-bench-cri-{self.tag}-{LETTER[which]}"

    def pod(self, which: str, name: str) -> api.PodSandboxConfig:
        """A pod config as the kubelet sends one: pod network, a log directory, our cgroup parent."""
        logs = self.work / f"logs-{LETTER[which]}" / name
        logs.mkdir(parents=True, exist_ok=True)
        options = api.NamespaceOption(network=api.POD, pid=api.CONTAINER, ipc=api.POD)
        return api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace="bench", uid=secrets.token_hex(8), attempt=0),
            hostname=name, log_directory=str(logs), labels={"bench": self.tag},
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=self.cgroup_parent(which),
                security_context=api.LinuxSandboxSecurityContext(namespace_options=options)),
        )  # fmt: skip

    def shim_pids(self, which: str) -> list[int]:
        """Pids of the daemon's live shims (ctrpyd: one per pod, or per container with ``[cri]
        shim_per_pod = false``; each once, though several bundles name a pod's shim)."""
        if which == "containerd":
            return containerd_shim_pids(self.containerd.address)
        pids = {read_pid(path) for path in (self.ctrpyd.state / "tasks").glob("*/*/shim.pid")}
        return sorted(pid for pid in pids if pid is not None and comm(pid) == "ctrpy-shim")

    def template_pid(self) -> int | None:
        """ctrpyd's shim template (a child of ctrpyd named ctrpy-template), if it runs one."""
        process = self.ctrpyd.process
        for pid in children(process.pid) if process is not None else []:
            if comm(pid) == TEMPLATE_COMM:
                return pid
        return None

    def daemon_pid(self, which: str) -> int:
        process = self.containerd.process if which == "containerd" else self.ctrpyd.process
        assert process is not None
        return process.pid

    def pause_pid(self, which: str, sandbox_id: str) -> int | None:
        """The pause process of a pod: the ``pid`` of the verbose status both daemons give."""
        with self.cri(which) as client:
            info = client.pod_sandbox_status(sandbox_id, verbose=True).info
        with contextlib.suppress(KeyError, ValueError, TypeError):
            return int(json.loads(info["info"])["pid"])
        return None

    def remove_all_pods(self, which: str) -> None:
        """Stop and remove every pod of ``which`` through the CRI (errors are ignored: cleanup)."""
        with contextlib.suppress(Exception), self.cri(which) as client:
            for pod in client.list_pod_sandbox():
                with contextlib.suppress(errors.CtrpyError):
                    client.stop_pod_sandbox(pod.id)
                with contextlib.suppress(errors.CtrpyError):
                    client.remove_pod_sandbox(pod.id)


def _import(address: str, archive: Path) -> None:
    result = run_ctr(address, "images", "import", str(archive), namespace=CRI_NAMESPACE, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"ctr images import {archive.name} at {address} failed: {result.stderr.strip()}")


@contextmanager
def cri_pair(work: Path) -> Iterator[CriPair]:
    """Start both CRI runtimes in ``work`` on one fresh pod network; tear all down on exit."""
    work.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    bin_dir = cni_bin_dir()
    network = PodNetwork(name=f"ctrpy-bench-{tag}", bridge=f"ctb{tag}", subnet=free_subnet(SUBNETS),
                      conf_dir=work / "net.d", data_dir=work / "ipam")
    with ExitStack() as stack:
        stack.callback(network.remove)
        network.write("10-bench.conflist")
        groups = {which: CpuGroup(f"ctrpy-bench-cri-{tag}/{which}") for which in WHICH}
        for group in groups.values():
            stack.callback(group.remove)
        for letter in LETTER.values():
            stack.callback(reap_cgroups, f"ctrpy-bench-cri-{tag}-{letter}")

        directory = work / "c"
        with groups["containerd"].entered():
            containerd = stack.enter_context(
                reference_containerd(directory, cri=_containerd_cri(directory, network, bin_dir)))

        ours = Daemon(base=work / "p")
        ours.base.mkdir(parents=True, exist_ok=True)
        config = ours.base / "ctrpyd.toml"
        config.write_text(f'version = 1\n[cri]\ncni_conf_dir = "{network.conf_dir}"\n'
                          f'cni_bin_dirs = ["{bin_dir}"]\nsandbox_image = "{PAUSE}"\n')
        ours.extra_args = ("--config", str(config))
        ours.command = lambda: [a if a != "debug" else "info" for a in Daemon.command(ours)]  # type: ignore[method-assign]
        stack.callback(ours.cleanup)
        stack.callback(_tear_down_ctrpyd, ours)
        with groups["ctrpyd"].entered():
            ours.start()

        pair = CriPair(containerd=containerd, ctrpyd=ours, work=work, tag=tag, network=network, cpu=groups)
        for which in WHICH:  # first out of the stack: the CNI DEL of every pod
            stack.callback(pair.remove_all_pods, which)

        pause = work / "pause.tar"
        pause.write_bytes(pause_archive(PAUSE)[0])
        _import(containerd.address, pause)  # ctrpyd imports its own at the first pod
        busybox = work / "busybox.tar"
        write_oci_layout_tar(busybox_image(BUSYBOX), busybox)
        for which in WHICH:
            _import(pair.address(which), busybox)
        yield pair
