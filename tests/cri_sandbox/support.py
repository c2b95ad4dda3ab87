"""A ctrpyd with the CRI on and a test network of its own, reaped whatever a test leaves.

Each :class:`PodDaemon` has a unique CNI network (bridge, /24, host-local data dir, conf dir;
see tests/cri_net/conftest.py) and a unique cgroup parent for its pods, so that tests running at
the same time (here or in other suites, all in the CRI's ``k8s.io`` namespace) never share a
cgroup, an address or an iptables chain. :meth:`PodDaemon.reap` kills by pid what names the
daemon's directory (ctrpyd, shims, pause processes via runc), removes the pods' cgroups, the
netns pins, the bridge, the iptables rules and every mount under the daemon's directory.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterable

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri import CriClient
from ctrpy.manager.cri import netns
from tests.crash.support import CrashDaemon, remove_cgroups
from tests.cri_net.conftest import Net, _cleanup_iptables, free_subnet, plugin_dir


class PodDaemon(CrashDaemon):
    """A CrashDaemon (failpoints, reaper) with ``[cri]`` pointing at a test network."""

    def __init__(self) -> None:
        super().__init__()
        tag = secrets.token_hex(4)
        self.net = Net(
            root=self.base, name=f"ctrpytest-{tag}", bridge=f"ctp{tag}", subnet=free_subnet(),
            conf_dir=self.base / "net.d", cache_dir=self.root / "cni", ipam_dir=self.base / "ipam",
            state_dir=self.state,
        )  # fmt: skip
        self.cgroup_parent = f"/ctrpytest-{tag}"
        self.net.conf_dir.mkdir(parents=True)
        self.net.write_conflist()
        config = self.base / "ctrpyd.toml"
        bin_dir = plugin_dir() or "/usr/lib/cni"
        config.write_text(
            f'version = 1\n[cri]\ncni_conf_dir = "{self.net.conf_dir}"\ncni_bin_dirs = ["{bin_dir}"]\n'
            "stats_collect_period = 0\n"
        )
        self.extra_args = ("--config", str(config))

    def cri(self, timeout: float = 120.0) -> CriClient:
        return CriClient(str(self.address), timeout)

    def pod(self, name: str, **kwargs: object) -> api.PodSandboxConfig:
        """A pod config in this daemon's cgroup parent (see :func:`pod_config`)."""
        return pod_config(name, cgroup_parent=self.cgroup_parent, **kwargs)  # type: ignore[arg-type]

    def run(self, config: api.PodSandboxConfig, timeout: float | None = None) -> str:
        with self.cri() as c:
            return c.call(c.runtime.RunPodSandbox, api.RunPodSandboxRequest(config=config), timeout=timeout)\
                .pod_sandbox_id

    def status(self, sandbox_id: str, verbose: bool = False) -> api.PodSandboxStatusResponse:
        with self.cri() as c:
            return c.call(c.runtime.PodSandboxStatus,
                          api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose))

    def list(self, wanted: api.PodSandboxFilter | None = None) -> list[api.PodSandbox]:
        with self.cri() as c:
            return list(c.call(c.runtime.ListPodSandbox, api.ListPodSandboxRequest(filter=wanted)).items)

    def stop_pod(self, sandbox_id: str) -> None:
        with self.cri() as c:
            c.call(c.runtime.StopPodSandbox, api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))

    def remove_pod(self, sandbox_id: str) -> None:
        with self.cri() as c:
            c.call(c.runtime.RemovePodSandbox, api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))

    def netns_files(self) -> list[str]:
        return netns.list_all(self.state)

    def reap(self) -> None:
        """CrashDaemon's reaper (processes, runc containers, mounts, directories), then what is
        the pods' own: their cgroups, iptables rules and the bridge."""
        try:
            for path in netns.list_all(self.state):
                with contextlib.suppress(Exception):
                    netns.remove(path)
            super().reap()
        finally:
            remove_cgroups(self.cgroup_parent)
            _cleanup_iptables(self.net.name)
            subprocess.run(["ip", "link", "delete", self.net.bridge], capture_output=True)


def pod_config(
    name: str,
    *,
    namespace: str = "default",
    uid: str | None = None,
    attempt: int = 0,
    cgroup_parent: str = "",
    host_network: bool = False,
    hostname: str = "",
    dns: api.DNSConfig | None = None,
    ports: Iterable[tuple[int, int, str]] = (),
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> api.PodSandboxConfig:
    """A PodSandboxConfig as the kubelet sends one (``ports``: (container, host, host IP) for TCP)."""
    options = api.NamespaceOption(network=api.NODE if host_network else api.POD)
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace=namespace, uid=uid or secrets.token_hex(8),
                                        attempt=attempt),
        hostname=hostname, dns_config=dns, labels=labels or {}, annotations=annotations or {},
        port_mappings=[api.PortMapping(protocol=api.TCP, container_port=c, host_port=h, host_ip=ip)
                       for c, h, ip in ports],
        linux=api.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent,
                                        security_context=api.LinuxSandboxSecurityContext(namespace_options=options)),
    )  # fmt: skip

