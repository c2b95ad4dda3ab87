"""Pod networks for tests, benchmarks and critest runs: a CNI conflist of a run's own (its
bridge, a /24 no host route overlaps, host-local data in a temp dir) and the clean-up of what
its plugins leave on the host (per-pod nat rules and chains, the bridge).

Plain Python (no pytest), so bench/ and the critest runner use it too. Each user draws its
subnets from a pool of its own, so that tests, benchmarks and critest running at once never
share an address range.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrpy.manager.cri.cni import DEFAULT_BIN_DIRS

PLUGINS = ("bridge", "host-local", "loopback", "portmap")
BIN_DIRS = DEFAULT_BIN_DIRS  # where ctrpyd looks: upstream's default, then Debian's


def plugin_dir() -> str | None:
    """The first bin dir that holds the standard plugins, or None."""
    for directory in BIN_DIRS:
        if all(os.access(os.path.join(directory, plugin), os.X_OK) for plugin in PLUGINS):
            return directory
    return None


def _routed() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True)
    used: list[ipaddress.IPv4Network] = []
    for route in json.loads(out.stdout or "[]"):
        destination = route.get("dst", "")
        if destination and destination != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(destination, strict=False))
    return used


def free_subnet(pool: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """A random /24 of ``pool`` that no route on the host overlaps."""
    used = _routed()
    for _ in range(100):
        offset = random.randrange(pool.num_addresses // 256) * 256
        candidate = ipaddress.IPv4Network((int(pool.network_address) + offset, 24))
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError(f"no free /24 in {pool}")


def conflist(name: str, bridge: str, subnet: ipaddress.IPv4Network, data_dir: Path, *,
             version: str = "1.0.0", masquerade: bool = True, portmap: bool = True,
             ipam: dict[str, Any] | None = None, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A bridge + host-local (+ portmap) network, as contrib/cni/10-ctrpy.conflist but its own."""
    plugins: list[dict[str, Any]] = [{
        "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": masquerade, "hairpinMode": True,
        "ipam": ipam or {"type": "host-local", "ranges": [[{"subnet": str(subnet)}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(data_dir)},
    }]  # fmt: skip
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    plugins.extend(extra or [])
    return {"cniVersion": version, "name": name, "plugins": plugins}


def remove_nat_rules(name: str) -> None:
    """Delete the nat rules naming network ``name`` and the per-pod chains they jump to (the
    bridge's ipMasq and portmap put the name in their comments). portmap's shared
    CNI-HOSTPORT-* chains stay, as after its own DEL: other networks may use them."""
    if shutil.which("iptables") is None:
        return
    listing = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    chains: set[str] = set()
    for line in listing.splitlines():
        if name not in line or not line.startswith("-A "):
            continue
        words = shlex.split(line)
        named = [words[1]] + ([words[words.index("-j") + 1]] if "-j" in words else [])
        chains.update(c for c in named if c.startswith("CNI-") and not c.startswith("CNI-HOSTPORT-"))
        subprocess.run(["iptables", "-w", "-t", "nat", "-D", *words[1:]], capture_output=True)
    for chain in chains:
        subprocess.run(["iptables", "-w", "-t", "nat", "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-w", "-t", "nat", "-X", chain], capture_output=True)


@dataclass
class PodNetwork:
    """A run's pod network: its conflist in ``conf_dir``; :meth:`remove` takes down what its
    plugins left (nat rules naming it, its bridge)."""

    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    conf_dir: Path
    data_dir: Path

    def write(self, filename: str = "10-pods.conflist") -> Path:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        path = self.conf_dir / filename
        path.write_text(json.dumps(conflist(self.name, self.bridge, self.subnet, self.data_dir), indent=2))
        return path

    def remove(self) -> None:
        remove_nat_rules(self.name)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
