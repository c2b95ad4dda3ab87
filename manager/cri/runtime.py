"""The runtime's own state as the CRI reports it: readiness, network readiness, configuration.

The kubelet schedules pods on a node only when Status says both ``RuntimeReady`` and
``NetworkReady``. The runtime is ready once ctrpyd serves; the network is ready when the CNI
configuration directory holds a usable configuration (the first ``.conf``/``.conflist``/
``.json`` file, read at each call, so that installing one needs no restart), as containerd's
CRI decides it. The pod CIDR the kubelet hands over with UpdateRuntimeConfig is kept in memory
(containerd uses it only to fill a CNI config template, which ctrpy does not offer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass

from ctrpy.errors import CtrpyError
from ctrpy.manager.config import CriConfig

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"
NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class NetworkState:
    """The outcome of loading the CNI configuration: its name and file, or why there is none."""

    ready: bool
    network: str = ""
    source: str = ""
    error: str = ""


class RuntimeState:
    """What Status, RuntimeConfig and UpdateRuntimeConfig read and write."""

    def __init__(self, config: CriConfig) -> None:
        self.config = config
        self.pod_cidr = ""

    async def network(self) -> NetworkState:
        return await asyncio.to_thread(self._load_network)

    def _load_network(self) -> NetworkState:
        from .cniconfig import load_first  # the CNI layer, only when asked

        try:
            loaded = load_first(self.config.cni_conf_dir)
        except (CtrpyError, OSError) as error:
            message = error.message if isinstance(error, CtrpyError) else str(error)
            return NetworkState(False, error=message.removesuffix(": invalid argument"))
        return NetworkState(True, network=loaded.name, source=loaded.source)

    async def conditions(self) -> tuple[list[Condition], NetworkState]:
        network = await self.network()
        runtime = Condition(RUNTIME_READY, True)
        if network.ready:
            return [runtime, Condition(NETWORK_READY, True)], network
        message = f"Network plugin returns error: cni plugin not initialized: {network.error}"
        return [runtime, Condition(NETWORK_READY, False, NETWORK_NOT_READY_REASON, message)], network

    def verbose_info(self, network: NetworkState) -> dict[str, str]:
        """Status's verbose ``info``: the configuration, the CNI state and the pod CIDR, as JSON
        values (containerd's keys where it has the same thing)."""
        config = dataclasses.asdict(self.config)
        config["cni_bin_dirs"] = list(self.config.cni_bin_dirs)
        cni = {"PluginConfDir": self.config.cni_conf_dir, "PluginDirs": list(self.config.cni_bin_dirs),
               "Network": network.network, "Source": network.source}
        return {
            "config": json.dumps(config, sort_keys=True),
            "cniconfig": json.dumps(cni, sort_keys=True),
            "lastCNILoadStatus": "OK" if network.ready else network.error,
            "podCIDR": self.pod_cidr,
        }
