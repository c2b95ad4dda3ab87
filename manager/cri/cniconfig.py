"""CNI network configurations and results, as the CNI specification defines them.

What the runtime (:mod:`.cni`) needs from the spec, apart from running plugins:

- A *network configuration list* (``.conflist``): ``{"cniVersion", "name", "plugins": [...]}``,
  each plugin a dict with a ``type`` (the binary's name) and its own keys. A single-plugin
  ``.conf``/``.json`` file is wrapped into a list of one, as libcni does.
- Which file is used: containerd's CRI loads the files of the conf directory ending in
  ``.conf``, ``.conflist`` or ``.json`` in lexical order and uses only the *first* one; a first
  file that does not parse is an error (not skipped), so the network is not ready.
- The versions understood here: 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0 (their ADD/DEL/CHECK and
  results are the same for a runtime; CHECK needs 0.4.0 or newer). 0.1/0.2 results (``ip4``)
  are refused.
- A *result*: interfaces (name, mac, sandbox), IPs (CIDR address, gateway, index of their
  interface), routes and DNS. Versions before 1.0.0 add ``"version": "4"`` to each IP, which is
  ignored.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ctrpy.errors import InvalidArgument

__all__ = [
    "EXTENSIONS",
    "SUPPORTED_VERSIONS",
    "DnsResult",
    "IPConfig",
    "Interface",
    "NetworkConfigList",
    "Result",
    "Route",
    "conf_files",
    "load_first",
    "parse_conflist",
    "parse_result",
    "version_at_least",
]

EXTENSIONS = (".conf", ".conflist", ".json")
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# The spec's rule for network names and container ids; both become parts of cache file names.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def version_at_least(version: str, minimum: str) -> bool:
    """Compare two ``X.Y.Z`` CNI versions."""

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(part) for part in v.split("."))

    return key(version) >= key(minimum)


def valid_name(value: str) -> bool:
    """Whether ``value`` is a valid network name or container id by the spec's rule."""
    return bool(_NAME.match(value))


@dataclass(frozen=True)
class NetworkConfigList:
    """One network: its name, version and plugins in ADD order; ``raw`` is the whole document
    as loaded (it is what the result cache keeps, so that DEL after a restart or a config
    change uses what ADD used)."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    raw: dict[str, Any]
    disable_check: bool = False
    source: str = ""

    @property
    def types(self) -> tuple[str, ...]:
        """The plugin types, in ADD order."""
        return tuple(str(p["type"]) for p in self.plugins)


def parse_conflist(document: Any, source: str = "") -> NetworkConfigList:
    """Validate a configuration list (already decoded JSON). Raises InvalidArgument."""
    where = source or "network config list"
    if not isinstance(document, dict):
        raise InvalidArgument(f"{where}: not a JSON object")
    name = document.get("name")
    if not isinstance(name, str) or not valid_name(name):
        raise InvalidArgument(f"{where}: invalid or missing network name {name!r}")
    version = document.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidArgument(
            f"{where}: cniVersion {version!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    plugins = document.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise InvalidArgument(f"{where}: no plugins in network {name!r}")
    for plugin in plugins:
        kind = plugin.get("type") if isinstance(plugin, dict) else None
        # The type names a binary in the bin dirs: it must not be a path.
        if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
            raise InvalidArgument(f"{where}: plugin without a valid type in network {name!r}")
    disable = document.get("disableCheck", False)
    return NetworkConfigList(
        name=name,
        cni_version=str(version),
        plugins=tuple(dict(p) for p in plugins),
        raw=document,
        disable_check=disable is True or disable == "true",
        source=source,
    )


def _wrap_single(document: Any, source: str) -> dict[str, Any]:
    """A single-plugin ``.conf`` as a list of one (libcni's ConfListFromConf)."""
    if not isinstance(document, dict):
        raise InvalidArgument(f"{source}: not a JSON object")
    if "plugins" in document:
        raise InvalidArgument(f"{source}: a configuration list in a .conf file (name it .conflist)")
    if not document.get("type"):
        raise InvalidArgument(f"{source}: network type not found")
    plugin = {k: v for k, v in document.items() if k not in ("name", "cniVersion", "disableCheck")}
    wrapped: dict[str, Any] = {
        "cniVersion": document.get("cniVersion"),
        "name": document.get("name"),
        "plugins": [plugin],
    }
    return wrapped


def conf_files(conf_dir: str) -> list[str]:
    """The configuration files of ``conf_dir`` in the order they are considered (lexical)."""
    try:
        entries = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return []
    return [
        os.path.join(conf_dir, e)
        for e in entries
        if e.endswith(EXTENSIONS) and os.path.isfile(os.path.join(conf_dir, e))
    ]


def load_first(conf_dir: str) -> NetworkConfigList:
    """Load the first configuration file of ``conf_dir``, as containerd's CRI does.

    Raises InvalidArgument when there is none or the first one is invalid; the message says
    which file and why (it becomes NetworkReady's message).
    """
    files = conf_files(conf_dir)
    if not files:
        raise InvalidArgument(f"no network config found in {conf_dir}")
    source = files[0]
    try:
        with open(source, "rb") as f:
            document = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"failed to load CNI config file {source}: {exc}") from exc
    if not source.endswith(".conflist"):
        document = _wrap_single(document, source)
    return parse_conflist(document, source)


@dataclass(frozen=True)
class Interface:
    """An interface a plugin made: ``sandbox`` is the netns path when it is inside the pod."""

    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True)
class IPConfig:
    """An address in CIDR form (``10.88.0.5/16``), its gateway, and its interface's name
    (empty when the plugin did not say)."""

    address: str
    gateway: str = ""
    interface: str = ""

    @property
    def ip(self) -> str:
        """The address without its prefix length."""
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def family(self) -> int:
        """4 or 6."""
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True)
class Route:
    """A route a plugin set up: destination CIDR and gateway (empty: the default one)."""

    dst: str
    gw: str = ""


@dataclass(frozen=True)
class DnsResult:
    """DNS settings a plugin returned (rarely set; the CRI takes DNS from the pod config)."""

    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    """A plugin chain's final result, parsed; ``raw`` is the JSON as the plugin printed it,
    which is what the next plugin gets as ``prevResult`` and what DEL and CHECK get later."""

    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DnsResult = field(default_factory=DnsResult)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def ips_of(self, ifname: str) -> tuple[IPConfig, ...]:
        """The addresses on interface ``ifname``."""
        return tuple(ip for ip in self.ips if ip.interface == ifname)


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def parse_result(document: Any, ifname: str = "") -> Result:
    """Parse a plugin's ADD output. IPs that name no interface are put on ``ifname`` (the
    interface the runtime asked for), as go-cni does. Raises InvalidArgument."""
    if not isinstance(document, dict):
        raise InvalidArgument("CNI result is not a JSON object")
    if "ip4" in document or "ip6" in document:
        raise InvalidArgument("CNI result in the 0.1/0.2 format is not supported")
    try:
        interfaces = tuple(
            Interface(str(i["name"]), str(i.get("mac", "")), str(i.get("sandbox", "")))
            for i in document.get("interfaces") or []
        )
        ips: list[IPConfig] = []
        for entry in document.get("ips") or []:
            address = str(entry["address"])
            ipaddress.ip_interface(address)  # validates
            index = entry.get("interface")
            name = ifname
            if isinstance(index, int) and 0 <= index < len(interfaces):
                name = interfaces[index].name
            ips.append(IPConfig(address, str(entry.get("gateway", "") or ""), name))
        routes = tuple(Route(str(r["dst"]), str(r.get("gw", "") or "")) for r in document.get("routes") or [])
        dns_doc = document.get("dns") or {}
        dns = DnsResult(
            nameservers=_strings(dns_doc.get("nameservers")),
            domain=str(dns_doc.get("domain", "") or ""),
            search=_strings(dns_doc.get("search")),
            options=_strings(dns_doc.get("options")),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InvalidArgument(f"malformed CNI result: {exc}") from exc
    return Result(
        cni_version=str(document.get("cniVersion", "")),
        interfaces=interfaces,
        ips=tuple(ips),
        routes=routes,
        dns=dns,
        raw=document,
    )
