"""A CNI runtime: attaches a pod's network namespace to the configured network, and detaches it.

The pod manager calls three things, each for one sandbox (``container_id`` is the sandbox id):

- :meth:`CNI.setup` on RunPodSandbox: ADD of the loopback network (``cni-loopback`` on ``lo``,
  always, as containerd does) and then of the configured network (on ``eth0``). Each network's
  plugins run in order, each getting the previous one's result as ``prevResult``; the last
  result is the network's. Before a network's ADD, an entry with the configuration and the
  arguments is written to the cache; after it, the result is added. A failed setup undoes what
  it did (DEL) before it raises.
- :meth:`CNI.teardown` on StopPodSandbox (and at start-up reconcile, and after a crash in the
  middle of ``setup``): DEL of every network the cache names, in reverse, plugins in reverse,
  with the configuration ADD used — so a changed or deleted conf file, or a ctrpyd restart, does
  not stop the IPAM from freeing the address. When the namespace is gone (a reboot, a lost
  pin) ``CNI_NETNS`` is passed empty, which the spec allows and the standard plugins answer by
  releasing their IPAM and skipping the interface. With no cache entry at all (a crash before
  the first write), DEL runs with the current configuration, which plugins accept for what they
  never saw.
- :meth:`CNI.check` (CHECK, for 0.4.0 and newer) and :meth:`CNI.attachments` (the cached
  results: the pod's IPs for PodSandboxStatus, also after a restart).

The cache (:mod:`.cnicache`) lives at ``<cache_dir>/results/<network>-<container id>-<ifname>``
like libcni's, one JSON document each. Give it a directory that lives as long as the IPAM's own state
(host-local keeps its allocations under ``/var/lib/cni``): under ctrpyd's root, not under a
tmpfs state directory, or a reboot forgets what DEL needs while the addresses stay allocated.

Plugins are found in the bin dirs (default ``/opt/cni/bin`` then Debian's ``/usr/lib/cni``) and
run as asyncio subprocesses in a session of their own, killed with their children when they
overrun the timeout or the caller is cancelled. A plugin's error document
(``{"code", "msg", "details"}``) becomes a :class:`PluginError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ctrpy.errors import CtrpyError, DeadlineExceeded, InvalidArgument, NotFound
from ctrpy.manager import tracing
from ctrpy.manager.config import CriConfig
from ctrpy.manager.cri import netns as netns_mod
from ctrpy.manager.cri.cnicache import Attachment, ResultCache
from ctrpy.manager.cri.cniconfig import (
    IPConfig,
    NetworkConfigList,
    load_first,
    parse_conflist,
    parse_result,
    valid_name,
    version_at_least,
)

__all__ = [
    "CNI",
    "DEFAULT_BIN_DIRS",
    "DEFAULT_CONF_DIR",
    "DEFAULT_IFNAME",
    "LOOPBACK_NETWORK",
    "Attachment",
    "DnsConfig",
    "PluginError",
    "PodNetwork",
    "PodRequest",
    "PortMapping",
    "Readiness",
]

# One source for the defaults: the [cri] section's.
DEFAULT_CONF_DIR = CriConfig.cni_conf_dir
DEFAULT_BIN_DIRS = CriConfig.cni_bin_dirs
DEFAULT_IFNAME = "eth0"
DEFAULT_TIMEOUT = 60.0
LOOPBACK_NETWORK = "cni-loopback"
_LOOPBACK = parse_conflist(
    {"cniVersion": "0.3.1", "name": LOOPBACK_NETWORK, "plugins": [{"type": "loopback"}]}
)
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PluginError(CtrpyError):
    """A CNI plugin failed: it exited non-zero, printed no valid result, or was not found.

    ``code``, ``msg`` and ``details`` are the plugin's error document (code 0 when it printed
    none); the message names the plugin, the network and the command, as containerd's does.
    """

    def __init__(self, plugin: str, network: str, command: str, cni_code: int, msg: str, details: str = ""):
        self.plugin = plugin
        self.network = network
        self.command = command
        self.cni_code = cni_code
        self.msg = msg
        self.details = details
        text = f'plugin type="{plugin}" name="{network}" failed ({command.lower()}): {msg}'
        if details:
            text += f" ({details})"
        super().__init__(text)


@dataclass(frozen=True)
class PortMapping:
    """A pod port published on the host (CRI PortMapping); the portmap plugin's capability."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.lower(),
        }
        if self.host_ip:
            doc["hostIP"] = self.host_ip
        return doc


@dataclass(frozen=True)
class DnsConfig:
    """The pod's DNS settings, passed as the ``dns`` capability to plugins that ask for it."""

    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodRequest:
    """What identifies one sandbox's attachment: its id, its netns path and the pod's names."""

    container_id: str
    netns: str
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    port_mappings: tuple[PortMapping, ...] = ()
    dns: DnsConfig | None = None
    extra_args: tuple[tuple[str, str], ...] = ()

    def cni_args(self) -> list[tuple[str, str]]:
        """CNI_ARGS as the CRI sets them (IgnoreUnknown first, so plugins tolerate the rest)."""
        return [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", self.pod_namespace),
            ("K8S_POD_NAME", self.pod_name),
            ("K8S_POD_INFRA_CONTAINER_ID", self.container_id),
            ("K8S_POD_UID", self.pod_uid),
            *self.extra_args,
        ]

    def capability_args(self) -> dict[str, Any]:
        """The runtimeConfig values on offer; each plugin gets those its capabilities name.
        Mappings without a host port are not published (as in containerd)."""
        caps: dict[str, Any] = {}
        ports = [p.to_json() for p in self.port_mappings if p.host_port > 0]
        if ports:
            caps["portMappings"] = ports
        if self.dns is not None:
            caps["dns"] = {
                "servers": list(self.dns.servers),
                "searches": list(self.dns.searches),
                "options": list(self.dns.options),
            }
        return caps


@dataclass(frozen=True)
class PodNetwork:
    """A pod's attachments in setup order."""

    container_id: str
    attachments: tuple[Attachment, ...]
    ifname: str = DEFAULT_IFNAME

    def ips(self) -> tuple[IPConfig, ...]:
        """The pod's addresses: those on its main interface, IPv4 first (the CRI's pod IPs)."""
        found = [ip for a in self.attachments if a.result for ip in a.result.ips_of(self.ifname)]
        return tuple(sorted(found, key=lambda ip: ip.family))


@dataclass(frozen=True)
class Readiness:
    """NetworkReady for CRI Status: ``message`` says why not."""

    ready: bool
    reason: str = ""
    message: str = ""


def _check_ifname(ifname: str) -> None:
    if not ifname or len(ifname) > 15 or ifname in (".", "..") or any(c in ifname for c in "/: \t\n\0"):
        raise InvalidArgument(f"invalid interface name {ifname!r}")


class CNI:
    """The CNI runtime for one ctrpyd. Stateless apart from the cache directory; safe to use
    from several tasks at once as long as each sandbox is set up/torn down by one at a time."""

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        *,
        conf_dir: str = DEFAULT_CONF_DIR,
        bin_dirs: Sequence[str] = DEFAULT_BIN_DIRS,
        ifname: str = DEFAULT_IFNAME,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        _check_ifname(ifname)
        self.conf_dir = conf_dir
        self.bin_dirs = tuple(bin_dirs)
        self.ifname = ifname
        self.timeout = timeout
        self.cache = ResultCache(cache_dir)

    # -- configuration -------------------------------------------------------------------

    def load(self) -> NetworkConfigList:
        """The current network: the first config file of the conf dir. Read on every call, so
        a new file takes effect for the next pod. Raises InvalidArgument."""
        return load_first(self.conf_dir)

    def readiness(self) -> Readiness:
        """Ready when a network config loads (containerd's rule; binaries are found at ADD)."""
        try:
            self.load()
        except CtrpyError as exc:
            return Readiness(
                False, "NetworkPluginNotReady", f"cni plugin not initialized: {exc.subject or exc.message}"
            )
        return Readiness(True)

    def find_plugin(self, kind: str) -> str:
        """The path of plugin ``kind`` in the bin dirs; raises NotFound."""
        for directory in self.bin_dirs:
            path = os.path.join(directory, kind)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise NotFound(f'failed to find plugin "{kind}" in path {list(self.bin_dirs)}')

    # -- the three operations --------------------------------------------------------------

    async def setup(self, pod: PodRequest) -> PodNetwork:
        """ADD the pod to the loopback network and the configured one; return the results.

        On failure, what was added is deleted again (best effort; the cache keeps what could
        not be) and the first error is raised: PluginError, DeadlineExceeded, InvalidArgument
        (no or bad config; a missing plugin binary is a PluginError too).
        """
        self._check_id(pod.container_id)
        network = self.load()
        attachments: list[Attachment] = []
        try:
            for order, (net, ifname) in enumerate(((_LOOPBACK, "lo"), (network, self.ifname))):
                attachments.append(await self._add(pod, net, ifname, order))
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.teardown(pod))
            raise
        return PodNetwork(pod.container_id, tuple(attachments), self.ifname)

    async def teardown(self, pod: PodRequest) -> None:
        """DEL the pod from every network it was (or may have been) added to. Idempotent: a
        second call, or one for a pod never set up, succeeds. Raises the first failure after
        trying every network; the cache entries of failed networks stay for a retry."""
        self._check_id(pod.container_id)
        attachments = self.attachments(pod.container_id)
        targets: list[Attachment]
        if attachments:
            targets = sorted(attachments, key=lambda a: a.order, reverse=True)
        else:
            targets = []
            with contextlib.suppress(CtrpyError):
                current = self.load()
                targets.append(Attachment(current.name, self.ifname, None, current, order=1))
            targets.append(Attachment(LOOPBACK_NETWORK, "lo", None, _LOOPBACK))
        netns = pod.netns if pod.netns and netns_mod.is_pinned(pod.netns) else ""
        first: BaseException | None = None
        for attachment in targets:
            try:
                await self._delete(pod, attachment, netns)
            except CtrpyError as exc:
                first = first or exc
        if first is not None:
            raise first

    async def check(self, pod: PodRequest) -> None:
        """CHECK every cached attachment whose version has CHECK (0.4.0+) and that does not
        disable it. Raises NotFound when the pod has no completed attachment, else the plugin's
        error."""
        self._check_id(pod.container_id)
        done = [a for a in self.attachments(pod.container_id) if a.result is not None]
        if not done:
            raise NotFound(f"no CNI attachment cached for sandbox {pod.container_id}")
        for a in sorted(done, key=lambda a: a.order):
            if a.config.disable_check or not version_at_least(a.config.cni_version, "0.4.0"):
                continue
            assert a.result is not None
            for plugin in a.config.plugins:
                conf = self._plugin_conf(a.config, plugin, a.result.raw, a.capability_args)
                await self._exec(plugin, a.config.name, "CHECK", conf, pod, pod.netns or a.netns, a.ifname)

    def attachments(self, container_id: str) -> list[Attachment]:
        """The cached attachments of a sandbox, in setup order (empty when none)."""
        self._check_id(container_id)
        return self.cache.entries(container_id)

    def pod_network(self, container_id: str) -> PodNetwork | None:
        """The cached attachments as a PodNetwork (its IPs for status), or None."""
        found = self.attachments(container_id)
        return PodNetwork(container_id, tuple(found), self.ifname) if found else None

    def cached_sandboxes(self) -> set[str]:
        """Every sandbox id that has a cache entry: start-up reconcile and doctor compare them
        with the sandbox records and tear down the others."""
        return self.cache.sandboxes()

    def sweep_cache(self) -> list[str]:
        """The cache's temporary files left by a crash mid-write, removed (start-up reconcile)."""
        return self.cache.sweep_temporaries()

    # -- ADD and DEL of one network --------------------------------------------------------

    @tracing.traced("cni ADD")
    async def _add(self, pod: PodRequest, net: NetworkConfigList, ifname: str, order: int) -> Attachment:
        caps = pod.capability_args()
        args = tuple(pod.cni_args())
        pending = Attachment(net.name, ifname, None, net, pod.netns, order, args, caps)
        # Before ADD, durably where the plugins keep state on disk (an IPAM's allocation, which
        # outlives a power cut): the entry is what lets a DEL free it. The loopback network
        # keeps nothing, and the result after ADD is a cache of what the plugins answered
        # (the sandbox record keeps the IPs): written, not fsynced. In a thread either way:
        # a rename can wait on the journal of a busy disk.
        await asyncio.to_thread(self.cache.write, pod.container_id, pending, durable=net is not _LOOPBACK)
        prev: dict[str, Any] | None = None
        for plugin in net.plugins:
            conf = self._plugin_conf(net, plugin, prev, caps)
            out = await self._exec(plugin, net.name, "ADD", conf, pod, pod.netns, ifname)
            if not isinstance(out, dict):
                raise PluginError(str(plugin["type"]), net.name, "ADD", 0, "plugin printed no result")
            prev = out
        assert prev is not None
        try:
            result = parse_result(prev, ifname)
        except InvalidArgument as exc:
            raise PluginError(net.types[-1], net.name, "ADD", 0, exc.message) from exc
        done = Attachment(net.name, ifname, result, net, pod.netns, order, args, caps)
        await asyncio.to_thread(self.cache.write, pod.container_id, done, durable=False)
        return done

    @tracing.traced("cni DEL")
    async def _delete(self, pod: PodRequest, a: Attachment, netns: str) -> None:
        """DEL one network, plugins in reverse. Unlike libcni, a failing plugin does not stop
        the ones before it in the chain: a broken portmap must not keep the bridge's IPAM from
        freeing the address. The first failure is raised at the end and the entry kept."""
        prev: dict[str, Any] | None = None
        if a.result is not None and version_at_least(a.config.cni_version, "0.4.0"):
            prev = a.result.raw
        caps = a.capability_args or pod.capability_args()
        first: CtrpyError | None = None
        for plugin in reversed(a.config.plugins):
            conf = self._plugin_conf(a.config, plugin, prev, caps)
            try:
                await self._exec(plugin, a.config.name, "DEL", conf, pod, netns, a.ifname)
            except CtrpyError as exc:
                first = first or exc
        if first is not None:
            raise first
        self.cache.remove(a.network, pod.container_id, a.ifname)

    @staticmethod
    def _plugin_conf(
        net: NetworkConfigList, plugin: dict[str, Any], prev: dict[str, Any] | None, caps: dict[str, Any]
    ) -> bytes:
        """One plugin's stdin: its config with the list's name and version, ``prevResult`` and
        the ``runtimeConfig`` entries its ``capabilities`` ask for (libcni's rules)."""
        conf = dict(plugin)
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        if prev is not None:
            conf["prevResult"] = prev
        wanted = plugin.get("capabilities")
        runtime = {k: v for k, v in caps.items() if isinstance(wanted, dict) and wanted.get(k) is True}
        if runtime:
            conf["runtimeConfig"] = runtime
        return json.dumps(conf).encode()

    # -- running a plugin ------------------------------------------------------------------

    def _env(self, command: str, pod: PodRequest, netns: str, ifname: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.setdefault("PATH", _DEFAULT_PATH)  # portmap and firewall run iptables by PATH
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=pod.container_id,
            CNI_NETNS=netns,
            CNI_IFNAME=ifname,
            CNI_ARGS=";".join(f"{k}={v}" for k, v in pod.cni_args()),
            CNI_PATH=":".join(self.bin_dirs),
        )
        return env

    async def _exec(
        self,
        plugin: dict[str, Any],
        network: str,
        command: str,
        conf: bytes,
        pod: PodRequest,
        netns: str,
        ifname: str,
    ) -> Any:
        """Run one plugin; return its decoded stdout (None when empty)."""
        kind = str(plugin["type"])
        try:
            path = self.find_plugin(kind)
        except NotFound as exc:
            raise PluginError(kind, network, command, 0, exc.subject) from exc
        proc = await asyncio.create_subprocess_exec(
            path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env(command, pod, netns, ifname),
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(conf), self.timeout)
        except BaseException as exc:
            await _kill(proc)
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded(
                    f'plugin type="{kind}" name="{network}" ({command.lower()}) timed out after {self.timeout:g}s'
                ) from exc
            raise
        if proc.returncode != 0:
            raise _plugin_failure(kind, network, command, proc.returncode, out, err)
        if not out.strip():
            return None
        try:
            return json.loads(out)
        except ValueError as exc:
            raise PluginError(kind, network, command, 0, f"invalid JSON output: {out[:200]!r}") from exc

    # -- the cache -------------------------------------------------------------------------

    def _check_id(self, container_id: str) -> None:
        if not valid_name(container_id):
            raise InvalidArgument(f"invalid container id {container_id!r} for CNI")


def _plugin_failure(
    kind: str, network: str, command: str, status: int | None, out: bytes, err: bytes
) -> PluginError:
    """The error a failed plugin reported on stdout (the spec's place), else its stderr."""
    try:
        doc = json.loads(out)
        if isinstance(doc, dict) and "msg" in doc:
            return PluginError(
                kind, network, command, int(doc.get("code", 0)), str(doc["msg"]), str(doc.get("details", ""))
            )
    except ValueError:
        pass
    text = (err or out).decode(errors="replace").strip() or f"exit status {status}"
    return PluginError(kind, network, command, 0, text[:1000])


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill a plugin and everything it started (its own session), then reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 10)
