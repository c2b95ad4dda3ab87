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

    [log]
    level = "info"                   # debug, info, warning, error
    format = "console"               # console (for people) or json

    [snapshotter]
    default = "overlayfs"            # the snapshotter used when a client names none

    [shim]
    template = true                  # fork shims from a pre-imported template process

    [runtimes."io.containerd.runc.v2"]   # runtime name (from the container) -> OCI runtime binary
    binary = "runc"

    [proxy_plugins.NAME]             # a snapshotter served by another process, as containerd's
    type = "snapshot"
    address = "/run/other/snapshotter.sock"
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctrpy.errors import InvalidArgument

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
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
class Config:
    root: Path = Path("/var/lib/ctrpy")
    state: Path = Path("/run/ctrpy")
    address: Path = Path("/run/ctrpy/ctrpy.sock")
    socket_uid: int = 0
    socket_gid: int = 0
    socket_mode: int = 0o660
    log_level: str = "info"
    log_format: str = "console"
    default_snapshotter: str = "overlayfs"
    proxy_plugins: dict[str, ProxyPlugin] = field(default_factory=dict)
    shim_template: bool = True
    runtimes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RUNTIMES))

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with the given fields replaced; ``None`` values are ignored (unset flags)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _expect(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(f"config: {where}{key} must be a {kind.__name__}, not {value!r}")
    return value


def parse(text: str, base: Config = Config()) -> Config:
    """Apply a TOML document over ``base``. Unknown keys are errors, so typos do not go unseen."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config: {exc}") from None
    values: dict[str, Any] = {}
    known = {"version", "root", "state", "grpc", "log", "snapshotter", "proxy_plugins", "shim", "runtimes"}
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
    shim = data.get("shim", {})
    if unknown := set(shim) - {"template"}:
        raise InvalidArgument(f"config: unknown keys in [shim]: {sorted(unknown)}")
    if "template" in shim:
        values["shim_template"] = _expect(shim, "template", bool, "shim.")
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
    for path in (config.root, config.state, config.address):
        if not path.is_absolute():
            raise InvalidArgument(f"config: {path} must be an absolute path")
    return config


def load(path: Path) -> Config:
    return parse(path.read_text())


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
        "[log]",
        f"level = {q(config.log_level)}",
        f"format = {q(config.log_format)}",
        "",
        "[snapshotter]",
        f"default = {q(config.default_snapshotter)}",
    ]
    lines += ["", "[shim]", f"template = {'true' if config.shim_template else 'false'}"]
    for name, binary in sorted(config.runtimes.items()):
        lines += ["", f"[runtimes.{q(name)}]", f"binary = {q(binary)}"]
    for name, plugin in sorted(config.proxy_plugins.items()):
        lines += ["", f"[proxy_plugins.{name}]", f"type = {q(plugin.type)}", f"address = {q(plugin.address)}"]
    return "\n".join(lines) + "\n"
