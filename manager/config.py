"""ctrpyd's configuration: embedded defaults, a TOML file over them, command-line flags over both.

The file (``ctrpyd --config FILE``; ``ctrpyd config default`` prints the defaults)::

    version = 1
    root = "/var/lib/ctrpy"          # durable: metadata, content, snapshots
    state = "/run/ctrpy"             # lost on reboot on purpose: sockets, task bundles

    [grpc]
    address = "/run/ctrpy/ctrpy.sock"
    uid = 0                          # owner of the socket
    gid = 0
    mode = "0660"                    # root-only by default

    [ttrpc]                          # the shims' socket: they send their task events here
    address = ""                     # "": the [grpc] address + ".ttrpc", as containerd's
    # uid = 0, gid = 0               # its owner; unset: [grpc]'s (the mode is always [grpc]'s)

    [log]
    level = "info"                   # debug, info, warning, error
    format = "console"               # console (for people) or json

    [snapshotter]
    default = "overlayfs"            # the snapshotter used when a client names none

    [metadata]                       # containerd's [plugins."io.containerd.metadata.v1.bolt"]
    content_sharing_policy = "shared"   # "shared": a blob stored for one namespace is linked into
                                     #   another without its bytes; "isolated": every namespace
                                     #   sends them (except from namespaces labelled
                                     #   containerd.io/namespace.shareable=true)

    [diff]                           # bounds on one layer being applied (0: no bound)
    max_uncompressed_bytes = 34359738368   # 32 GiB once decompressed: stops decompression bombs
    max_entries = 4000000            # tar entries

    [gc]                             # when garbage is collected (containerd's gc scheduler)
    pause_threshold = 0.02           # at most this share of time spent holding the metadata
    deletion_threshold = 0           # collect at once after this many deletions (0: paced)
    mutation_threshold = 100         # collect at the next pause interval after this many changes
    schedule_delay = 1.0             # seconds from a change to the collection it calls for
    startup_delay = 0.1              # seconds after start-up for the first collection (0: none)

    [shim]
    template = true                  # fork shims from a pre-imported template process
    call_timeout = 30.0              # seconds a shim has to answer a call (Create, Kill, Delete, ...)
    state_timeout = 2.0              # seconds for State, as Tasks.List/Get ask: a stuck shim's task
                                     #   then lists as UNKNOWN with pid 0 instead of holding List up

    [transfer]                       # server-side registry pulls (the Transfer service)
    config_path = ""                 # hosts directory: <host>/hosts.toml, as containerd's (empty: none)
    max_concurrent_downloads = 3     # layers downloaded at once per pull
    stall_timeout = 60.0             # seconds without a byte from a registry before a pull fails
    unpack_workers = 2               # processes that unpack layers beside the daemon (0: threads)
    credentials_file = ""            # docker config.json for requests without credentials (empty: none)

    [cri]                            # Kubernetes' CRI (runtime.v1) on the same socket
    enabled = true
    sandbox_image = "registry.k8s.io/pause:3.10"   # under this default name: ctrpy's own pause image
    cni_conf_dir = "/etc/cni/net.d"  # the first *.conflist / *.conf here is the pod network
    cni_bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]   # where CNI plugins are looked for, in order
    registry_config_path = ""        # hosts directory for CRI pulls (empty: [transfer] config_path)
    cgroup_driver = "cgroupfs"       # what RuntimeConfig tells the kubelet (only cgroupfs here)
    stream_server_address = "127.0.0.1"   # Exec/Attach/PortForward URLs point here
    stream_server_port = "0"         # "0": a free port chosen at start-up
    max_container_log_line_size = 16384   # longer lines are split into partial (P) records
    image_pull_progress_timeout = "5m"    # a pull that makes no progress this long is cancelled
    stats_collect_period = 10        # seconds between snapshot usage samples (ImageFsInfo)
    shim_per_pod = true              # a pod's containers share its sandbox's shim (false: one each)
    unclaimed_timeout = 120.0        # seconds a pod or container made after its caller gave up waits
                                     #   for a retry to claim it, then it is removed

    [metrics]                        # Prometheus metrics over HTTP, as containerd's [metrics]
    address = ""                     # "127.0.0.1:1338" serves /v1/metrics there (empty: off)
    grpc_histogram = false           # also grpc_server_handling_seconds per method

    [tracing]                        # OpenTelemetry traces over OTLP/gRPC (containerd's otlp plugin)
    endpoint = ""                    # "http://127.0.0.1:4317" sends spans there (empty: off)
    sampling_ratio = 1.0             # share of traces kept, 0.0 to 1.0
    service_name = "ctrpyd"          # the service.name of the spans

    [runtimes."io.containerd.runc.v2"]   # runtime name (from the container) -> OCI runtime binary
    binary = "runc"

    [proxy_plugins.NAME]             # a snapshotter served by another process, as containerd's
    type = "snapshot"
    address = "/run/other/snapshotter.sock"
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctrpy.errors import InvalidArgument

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
#: containerd's content sharing policies (the metadata layer applies them).
SHARING_POLICIES = ("shared", "isolated")
# Bounds on one layer (Diff.Apply): far above real images, far below a decompression bomb.
DEFAULT_MAX_LAYER_BYTES = 32 * 1024**3
DEFAULT_MAX_LAYER_ENTRIES = 4_000_000
# containerd's runtime names for runc; a container names its runtime, this says which binary.
DEFAULT_RUNTIMES = {
    "io.containerd.runc.v2": "runc",
    "io.containerd.runc.v1": "runc",
    "io.containerd.runtime.v1.linux": "runc",
}


@dataclass(frozen=True)
class ProxyPlugin:
    type: str
    address: str


@dataclass(frozen=True)
class GcConfig:
    """When garbage is collected; see :mod:`ctrpy.manager.gc.scheduler`."""

    pause_threshold: float = 0.02
    deletion_threshold: int = 0
    mutation_threshold: int = 100
    schedule_delay: float = 1.0  # seconds
    startup_delay: float = 0.1  # seconds


_GC_KEYS: dict[str, type] = {
    "pause_threshold": float,
    "deletion_threshold": int,
    "mutation_threshold": int,
    "schedule_delay": float,
    "startup_delay": float,
}


def _parse_gc(table: dict[str, Any], base: GcConfig) -> GcConfig:
    if unknown := set(table) - set(_GC_KEYS):
        raise InvalidArgument(f"config: unknown keys in [gc]: {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key, kind in _GC_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # a whole number of seconds is fine
        value = _expect({key: value}, key, kind, "gc.")
        if value < 0:
            raise InvalidArgument(f"config: gc.{key} must not be negative")
        values[key] = value
    return dataclasses.replace(base, **values)


@dataclass(frozen=True)
class CriConfig:
    """The ``[cri]`` section: Kubernetes' CRI on ctrpyd's socket (see :mod:`ctrpy.manager.cri`).

    ``sandbox_image`` defaults to the name containerd 2.0 uses; under that default name ctrpyd
    provides the pause image itself (no registry needed), any other name is pulled like any
    image. ``registry_config_path`` empty means the ``[transfer]`` hosts directory is used.
    """

    enabled: bool = True
    sandbox_image: str = "registry.k8s.io/pause:3.10"
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")
    registry_config_path: str = ""
    cgroup_driver: str = "cgroupfs"
    stream_server_address: str = "127.0.0.1"
    stream_server_port: str = "0"
    max_container_log_line_size: int = 16384
    # A Go-style duration, as containerd writes it ("5m", "30s", "1h30m").
    image_pull_progress_timeout: str = "5m"
    stats_collect_period: int = 10  # seconds
    # The tasks of a pod's containers go to the shim of its sandbox (pause) task, as containerd's
    # runc v2 shim groups them; false: one shim per container, as for every other task.
    shim_per_pod: bool = True
    # A RunPodSandbox or CreateContainer that ends after its caller gave up (its deadline
    # passed) is kept this long for the retry, then removed (see :mod:`ctrpy.manager.cri.creations`).
    unclaimed_timeout: float = 120.0


_CRI_KEYS: dict[str, type] = {
    "enabled": bool, "sandbox_image": str, "cni_conf_dir": str, "cni_bin_dirs": list,
    "registry_config_path": str, "cgroup_driver": str, "stream_server_address": str,
    "stream_server_port": str, "max_container_log_line_size": int, "image_pull_progress_timeout": str,
    "stats_collect_period": int, "shim_per_pod": bool, "unclaimed_timeout": float,
}  # fmt: skip
CGROUP_DRIVERS = ("cgroupfs",)
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration_seconds(text: str) -> float:
    """Seconds in a Go-style duration (``"5m"``, ``"1h30m"``, ``"90s"``, ``"0"``);
    InvalidArgument for anything else."""
    if text == "0":
        return 0.0
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise InvalidArgument(f"config: {text!r} is not a duration such as \"5m\" or \"30s\"")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _parse_cri(table: dict[str, Any], base: CriConfig) -> CriConfig:
    if unknown := set(table) - set(_CRI_KEYS):
        raise InvalidArgument(f"config: unknown keys in [cri]: {sorted(unknown)}")
    if "unclaimed_timeout" in table:  # seconds: a whole number too, never 0 or less
        table = {**table, "unclaimed_timeout": _seconds(table, "unclaimed_timeout", "cri.")}
    values: dict[str, Any] = {key: _expect(table, key, kind, "cri.") for key, kind in _CRI_KEYS.items()
                              if key in table}
    if "cni_bin_dirs" in values:
        if not all(isinstance(item, str) for item in values["cni_bin_dirs"]):
            raise InvalidArgument("config: cri.cni_bin_dirs must be a list of directories")
        values["cni_bin_dirs"] = tuple(values["cni_bin_dirs"])
    cri = dataclasses.replace(base, **values)
    if cri.cgroup_driver not in CGROUP_DRIVERS:
        raise InvalidArgument(f"config: cri.cgroup_driver {cri.cgroup_driver!r} is not supported "
                              f"(only {', '.join(CGROUP_DRIVERS)})")
    if not cri.stream_server_port.isdigit() or int(cri.stream_server_port) > 65535:
        raise InvalidArgument(f"config: cri.stream_server_port {cri.stream_server_port!r} is not a port")
    for key in ("max_container_log_line_size", "stats_collect_period"):
        if getattr(cri, key) < 0:
            raise InvalidArgument(f"config: cri.{key} must not be negative")
    duration_seconds(cri.image_pull_progress_timeout)
    if not cri.sandbox_image:
        raise InvalidArgument("config: cri.sandbox_image must name an image")
    return cri


@dataclass(frozen=True)
class MetricsConfig:
    """The ``[metrics]`` section, containerd's: where ``/v1/metrics`` is served (``host:port``;
    empty, the default, serves nothing and loads none of it) and whether gRPC calls also get a
    latency histogram (off by default in containerd too: it multiplies the series per method)."""

    address: str = ""
    grpc_histogram: bool = False


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:1338`` for IPv6; an empty host means every interface, as Go's
    ``net.Listen``) as (host, port); InvalidArgument for anything else."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"config: metrics.address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host and not address.startswith("["):
        raise InvalidArgument(f"config: metrics.address {address!r}: write an IPv6 host as [host]:port")
    return host, int(port)


def _parse_metrics(table: dict[str, Any], base: MetricsConfig) -> MetricsConfig:
    if unknown := set(table) - {"address", "grpc_histogram"}:
        raise InvalidArgument(f"config: unknown keys in [metrics]: {sorted(unknown)}")
    values: dict[str, Any] = {}
    if "address" in table:
        values["address"] = _expect(table, "address", str, "metrics.")
        if values["address"]:
            split_address(values["address"])
    if "grpc_histogram" in table:
        values["grpc_histogram"] = _expect(table, "grpc_histogram", bool, "metrics.")
    return dataclasses.replace(base, **values)


@dataclass(frozen=True)
class TracingConfig:
    """The ``[tracing]`` section, after containerd's otlp and tracing plugins: where spans go
    (an OTLP/gRPC collector, ``http://host:port`` in plain text or ``https://host:port`` with
    TLS; empty, the default, traces nothing and loads none of OpenTelemetry), which share of
    traces is kept, and the service name they carry."""

    endpoint: str = ""
    sampling_ratio: float = 1.0
    service_name: str = "ctrpyd"


def _parse_tracing(table: dict[str, Any], base: TracingConfig) -> TracingConfig:
    if unknown := set(table) - {"endpoint", "sampling_ratio", "service_name"}:
        raise InvalidArgument(f"config: unknown keys in [tracing]: {sorted(unknown)}")
    values: dict[str, Any] = {}
    if "endpoint" in table:
        endpoint = values["endpoint"] = _expect(table, "endpoint", str, "tracing.")
        scheme, _, rest = endpoint.partition("://")
        host, colon, port = rest.rstrip("/").rpartition(":")
        if endpoint and (scheme not in ("http", "https") or not host or not colon or not port.isdigit()
                         or not 0 < int(port) <= 65535 or "/" in host):
            raise InvalidArgument(f"config: tracing.endpoint {endpoint!r} is not http://host:port "
                                  "or https://host:port (an OTLP/gRPC collector)")
    if "sampling_ratio" in table:
        ratio = table["sampling_ratio"]
        if isinstance(ratio, int) and not isinstance(ratio, bool):
            ratio = float(ratio)
        ratio = _expect({"sampling_ratio": ratio}, "sampling_ratio", float, "tracing.")
        if not 0.0 <= ratio <= 1.0:
            raise InvalidArgument("config: tracing.sampling_ratio must be between 0.0 and 1.0")
        values["sampling_ratio"] = ratio
    if "service_name" in table:
        values["service_name"] = _expect(table, "service_name", str, "tracing.")
        if not values["service_name"]:
            raise InvalidArgument("config: tracing.service_name must not be empty")
    return dataclasses.replace(base, **values)


@dataclass(frozen=True)
class Config:
    root: Path = Path("/var/lib/ctrpy")
    state: Path = Path("/run/ctrpy")
    address: Path = Path("/run/ctrpy/ctrpy.sock")
    socket_uid: int = 0
    socket_gid: int = 0
    socket_mode: int = 0o660
    # [ttrpc]: the socket the shims talk to (their task events). None: beside the gRPC socket,
    # its path + ".ttrpc", with its owner (see ttrpc_socket, ttrpc_owner).
    ttrpc_address: Path | None = None
    ttrpc_uid: int | None = None
    ttrpc_gid: int | None = None
    log_level: str = "info"
    log_format: str = "console"
    default_snapshotter: str = "overlayfs"
    # [metadata]: "shared" or "isolated", as containerd's bolt metadata plugin.
    content_sharing_policy: str = "shared"
    # 0 means no bound.
    diff_max_uncompressed_bytes: int = DEFAULT_MAX_LAYER_BYTES
    diff_max_entries: int = DEFAULT_MAX_LAYER_ENTRIES
    proxy_plugins: dict[str, ProxyPlugin] = field(default_factory=dict)
    shim_template: bool = True
    # [shim] spare: the template keeps a shim forked ahead of time for the next Create.
    shim_spare: bool = True
    # Deadlines of ctrpyd's calls to shims (ShimTimeouts), in seconds.
    shim_call_timeout: float = 30.0
    shim_state_timeout: float = 2.0
    gc: GcConfig = field(default_factory=GcConfig)
    runtimes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RUNTIMES))
    # [transfer]: registry pulls served by the Transfer service.
    transfer_config_path: str = ""
    transfer_max_concurrent_downloads: int = 3
    transfer_stall_timeout: float = 60.0
    transfer_unpack_workers: int = 2
    transfer_credentials_file: str = ""
    cri: CriConfig = field(default_factory=CriConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)

    @property
    def ttrpc_socket(self) -> Path:
        """Where ctrpyd serves ttrpc for its shims: ``[ttrpc] address``, else containerd's
        default, the gRPC socket's path with ``.ttrpc`` added (so ``--address`` moves both)."""
        return self.ttrpc_address or Path(f"{self.address}.ttrpc")

    @property
    def ttrpc_owner(self) -> tuple[int, int]:
        """The ttrpc socket's uid and gid: ``[ttrpc] uid/gid``, else the gRPC socket's."""
        uid = self.socket_uid if self.ttrpc_uid is None else self.ttrpc_uid
        return uid, self.socket_gid if self.ttrpc_gid is None else self.ttrpc_gid

    @property
    def cri_registry_config_path(self) -> str:
        """The hosts directory CRI pulls use: ``[cri] registry_config_path``, else ``[transfer]``'s."""
        return self.cri.registry_config_path or self.transfer_config_path

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with the given fields replaced; ``None`` values are ignored (unset flags)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _expect(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(f"config: {where}{key} must be a {kind.__name__}, not {value!r}")
    return value


def _seconds(table: dict[str, Any], key: str, where: str) -> float:
    """A positive number of seconds (a whole number is fine); a deadline of 0 would fail every call."""
    value = table[key]
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    value = _expect({key: value}, key, float, where)
    if not (value > 0 and math.isfinite(value)):
        raise InvalidArgument(f"config: {where}{key} must be a positive number of seconds")
    return float(value)


def _parse_transfer(table: dict[str, Any]) -> dict[str, Any]:
    """The ``[transfer]`` section as Config fields."""
    if unknown := set(table) - {"config_path", "max_concurrent_downloads", "stall_timeout", "credentials_file",
                                 "unpack_workers"}:
        raise InvalidArgument(f"config: unknown keys in [transfer]: {sorted(unknown)}")
    values: dict[str, Any] = {}
    if "config_path" in table:
        values["transfer_config_path"] = _expect(table, "config_path", str, "transfer.")
    if "credentials_file" in table:
        values["transfer_credentials_file"] = _expect(table, "credentials_file", str, "transfer.")
    if "max_concurrent_downloads" in table:
        count = _expect(table, "max_concurrent_downloads", int, "transfer.")
        if count < 1:
            raise InvalidArgument("config: transfer.max_concurrent_downloads must be at least 1")
        values["transfer_max_concurrent_downloads"] = count
    if "stall_timeout" in table:
        values["transfer_stall_timeout"] = _seconds(table, "stall_timeout", "transfer.")
    if "unpack_workers" in table:
        workers = _expect(table, "unpack_workers", int, "transfer.")
        if not 0 <= workers <= 64:
            raise InvalidArgument("config: transfer.unpack_workers must be between 0 and 64")
        values["transfer_unpack_workers"] = workers
    return values


def _parse_ttrpc(table: dict[str, Any]) -> dict[str, Any]:
    """The ``[ttrpc]`` section as Config fields (``address = ""``: the default place)."""
    if unknown := set(table) - {"address", "uid", "gid"}:
        raise InvalidArgument(f"config: unknown keys in [ttrpc]: {sorted(unknown)}")
    values: dict[str, Any] = {}
    if "address" in table:
        address = _expect(table, "address", str, "ttrpc.")
        values["ttrpc_address"] = Path(address) if address else None
    for key in ("uid", "gid"):
        if key in table:
            values[f"ttrpc_{key}"] = _expect(table, key, int, "ttrpc.")
    return values


def parse(text: str, base: Config = Config()) -> Config:
    """Apply a TOML document over ``base``. Unknown keys are errors, so typos do not go unseen."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config: {exc}") from None
    values: dict[str, Any] = {}
    known = {
        "version", "root", "state", "grpc", "log", "snapshotter", "diff", "proxy_plugins", "shim", "runtimes", "gc",
        "transfer", "cri", "metadata", "metrics", "tracing", "ttrpc",
    }
    if unknown := set(data) - known:
        raise InvalidArgument(f"config: unknown keys {sorted(unknown)}")
    if "version" in data and _expect(data, "version", int, "") != 1:
        raise InvalidArgument(f"config: version {data['version']} is not supported (expected 1)")
    for key in ("root", "state"):
        if key in data:
            values[key] = Path(_expect(data, key, str, ""))
    sections: dict[str, dict[str, str]] = {
        "grpc": {"address": "address", "uid": "socket_uid", "gid": "socket_gid", "mode": "socket_mode"},
        "log": {"level": "log_level", "format": "log_format"},
        "snapshotter": {"default": "default_snapshotter"},
        "metadata": {"content_sharing_policy": "content_sharing_policy"},
        "diff": {"max_uncompressed_bytes": "diff_max_uncompressed_bytes", "max_entries": "diff_max_entries"},
    }
    for section, keys in sections.items():
        table = data.get(section, {})
        if unknown := set(table) - set(keys):
            raise InvalidArgument(f"config: unknown keys in [{section}]: {sorted(unknown)}")
        for key, attribute in keys.items():
            if key not in table:
                continue
            if attribute == "address":
                values[attribute] = Path(_expect(table, key, str, f"{section}."))
            elif attribute == "socket_mode":
                values[attribute] = int(_expect(table, key, str, f"{section}."), 8)
            elif attribute in ("socket_uid", "socket_gid"):
                values[attribute] = _expect(table, key, int, f"{section}.")
            elif section == "diff":
                values[attribute] = _expect(table, key, int, f"{section}.")
                if values[attribute] < 0:
                    raise InvalidArgument(f"config: {section}.{key} must not be negative (0: no bound)")
            else:
                values[attribute] = _expect(table, key, str, f"{section}.")
    proxies: dict[str, ProxyPlugin] = {}
    for name, table in data.get("proxy_plugins", {}).items():
        if set(table) != {"type", "address"}:
            raise InvalidArgument(f"config: [proxy_plugins.{name}] needs exactly type and address")
        if table["type"] != "snapshot":
            raise InvalidArgument(f"config: proxy plugin {name}: only type \"snapshot\" is supported")
        proxies[name] = ProxyPlugin(type="snapshot", address=str(table["address"]))
    if proxies:
        values["proxy_plugins"] = proxies
    if "gc" in data:
        values["gc"] = _parse_gc(data["gc"], base.gc)
    values.update(_parse_transfer(data.get("transfer", {})))
    values.update(_parse_ttrpc(_expect(data, "ttrpc", dict, "") if "ttrpc" in data else {}))
    if "cri" in data:
        values["cri"] = _parse_cri(_expect(data, "cri", dict, ""), base.cri)
    if "metrics" in data:
        values["metrics"] = _parse_metrics(_expect(data, "metrics", dict, ""), base.metrics)
    if "tracing" in data:
        values["tracing"] = _parse_tracing(_expect(data, "tracing", dict, ""), base.tracing)
    shim = data.get("shim", {})
    if unknown := set(shim) - {"template", "spare", "call_timeout", "state_timeout"}:
        raise InvalidArgument(f"config: unknown keys in [shim]: {sorted(unknown)}")
    if "template" in shim:
        values["shim_template"] = _expect(shim, "template", bool, "shim.")
    if "spare" in shim:
        values["shim_spare"] = _expect(shim, "spare", bool, "shim.")
    for key in ("call_timeout", "state_timeout"):
        if key in shim:
            values[f"shim_{key}"] = _seconds(shim, key, "shim.")
    runtimes = dict(base.runtimes)
    for name, table in data.get("runtimes", {}).items():
        if not isinstance(table, dict) or set(table) != {"binary"} or not isinstance(table["binary"], str):
            raise InvalidArgument(f'config: [runtimes."{name}"] needs exactly binary = "<path or name>"')
        runtimes[name] = table["binary"]
    values["runtimes"] = runtimes
    return validate(dataclasses.replace(base, **values))


def validate(config: Config) -> Config:
    if config.log_level not in LOG_LEVELS:
        raise InvalidArgument(f"config: log level {config.log_level!r} is not one of {LOG_LEVELS}")
    if config.log_format not in LOG_FORMATS:
        raise InvalidArgument(f"config: log format {config.log_format!r} is not one of {LOG_FORMATS}")
    if config.content_sharing_policy not in SHARING_POLICIES:
        raise InvalidArgument(f"config: metadata.content_sharing_policy {config.content_sharing_policy!r} "
                              f"is not one of {SHARING_POLICIES}")
    for path in (config.root, config.state, config.address, config.ttrpc_socket):
        if not path.is_absolute():
            raise InvalidArgument(f"config: {path} must be an absolute path")
    if config.ttrpc_socket == config.address:
        raise InvalidArgument(f"config: ttrpc.address {config.ttrpc_socket} is the gRPC socket's address")
    return config


def load(path: Path) -> Config:
    return parse(path.read_text())


def _unset_ttrpc_owner(config: Config) -> list[str]:
    """A comment naming the ``[ttrpc]`` owner keys left to ``[grpc]``'s, if any."""
    unset = [key for key in ("uid", "gid") if getattr(config, f"ttrpc_{key}") is None]
    return [f"# {', '.join(unset)} unset: [grpc]'s"] if unset else []


def render(config: Config) -> str:
    """The configuration as a TOML document that :func:`parse` reads back to the same values."""

    def q(value: object) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "version = 1",
        f"root = {q(config.root)}",
        f"state = {q(config.state)}",
        "",
        "[grpc]",
        f"address = {q(config.address)}",
        f"uid = {config.socket_uid}",
        f"gid = {config.socket_gid}",
        f'mode = "{config.socket_mode:04o}"',
        "",
        "[ttrpc]",
        f"address = {q(config.ttrpc_address or '')}"
        + ("" if config.ttrpc_address else f"   # {q(config.ttrpc_socket)}, beside [grpc] address"),
        *([f"uid = {config.ttrpc_uid}"] if config.ttrpc_uid is not None else []),
        *([f"gid = {config.ttrpc_gid}"] if config.ttrpc_gid is not None else []),
        *_unset_ttrpc_owner(config),
        "",
        "[log]",
        f"level = {q(config.log_level)}",
        f"format = {q(config.log_format)}",
        "",
        "[snapshotter]",
        f"default = {q(config.default_snapshotter)}",
        "",
        "[metadata]",
        f"content_sharing_policy = {q(config.content_sharing_policy)}",
        "",
        "[diff]",
        f"max_uncompressed_bytes = {config.diff_max_uncompressed_bytes}",
        f"max_entries = {config.diff_max_entries}",
    ]
    lines += [
        "", "[shim]", f"template = {'true' if config.shim_template else 'false'}",
        f"spare = {'true' if config.shim_spare else 'false'}",
        f"call_timeout = {config.shim_call_timeout!r}", f"state_timeout = {config.shim_state_timeout!r}",
    ]  # fmt: skip
    lines += ["", "[gc]", *(f"{key} = {getattr(config.gc, key)!r}" for key in _GC_KEYS)]
    lines += [
        "", "[transfer]", f"config_path = {q(config.transfer_config_path)}",
        f"max_concurrent_downloads = {config.transfer_max_concurrent_downloads}",
        f"stall_timeout = {config.transfer_stall_timeout!r}",
        f"unpack_workers = {config.transfer_unpack_workers}",
        f"credentials_file = {q(config.transfer_credentials_file)}",
    ]  # fmt: skip
    cri = config.cri
    lines += [
        "", "[cri]", f"enabled = {'true' if cri.enabled else 'false'}", f"sandbox_image = {q(cri.sandbox_image)}",
        f"cni_conf_dir = {q(cri.cni_conf_dir)}", f"cni_bin_dirs = [{', '.join(q(d) for d in cri.cni_bin_dirs)}]",
        f"registry_config_path = {q(cri.registry_config_path)}", f"cgroup_driver = {q(cri.cgroup_driver)}",
        f"stream_server_address = {q(cri.stream_server_address)}",
        f"stream_server_port = {q(cri.stream_server_port)}",
        f"max_container_log_line_size = {cri.max_container_log_line_size}",
        f"image_pull_progress_timeout = {q(cri.image_pull_progress_timeout)}",
        f"stats_collect_period = {cri.stats_collect_period}",
        f"shim_per_pod = {'true' if cri.shim_per_pod else 'false'}",
        f"unclaimed_timeout = {cri.unclaimed_timeout!r}",
    ]  # fmt: skip
    lines += ["", "[metrics]", f"address = {q(config.metrics.address)}",
              f"grpc_histogram = {'true' if config.metrics.grpc_histogram else 'false'}"]
    lines += ["", "[tracing]", f"endpoint = {q(config.tracing.endpoint)}",
              f"sampling_ratio = {config.tracing.sampling_ratio!r}", f"service_name = {q(config.tracing.service_name)}"]
    for name, binary in sorted(config.runtimes.items()):
        lines += ["", f"[runtimes.{q(name)}]", f"binary = {q(binary)}"]
    for name, plugin in sorted(config.proxy_plugins.items()):
        lines += ["", f"[proxy_plugins.{name}]", f"type = {q(plugin.type)}", f"address = {q(plugin.address)}"]
    return "\n".join(lines) + "\n"
