"""Which endpoints serve a registry host, in containerd's ``hosts.toml`` layout.

A *config path* directory holds one directory per registry host; the first of these that
exists is used (containerd's ``HostDirFromRoot``)::

    <config_path>/<host>_<port>_/   (a host with a port, the spelling that avoids ':')
    <config_path>/<host>[:<port>]/
    <config_path>/_default/         (the fallback for every host)

Inside, ``hosts.toml``::

    server = "https://registry.example"        # the upstream; default https://<host>
    capabilities = ["pull", "resolve", "push"]  # of the server entry
    [host."http://127.0.0.1:5000"]              # mirrors, tried first, in file order
      capabilities = ["pull", "resolve"]
      skip_verify = true
      ca = "ca.crt"                             # str or list; relative to the host directory
      client = [["client.cert", "client.key"]]  # str, [str], or [[cert, key]]
      header = { x-token = "abc" }              # str or list of str per header
      override_path = true                      # the URL path is the API root (no /v2)

Without ``hosts.toml`` the directory may hold Docker's certificate files (``*.crt`` CAs,
``*.cert`` + ``*.key`` client pairs). The server entry comes last; with no ``server`` it is
``https://<host>/v2`` (``docker.io`` is served by ``registry-1.docker.io``).

Plain HTTP is used only where the configuration says ``http://``, or, when the caller asks
(``--plain-http``), for the default entry of a loopback host. The flag does not downgrade a
remote registry: that has to be written into its ``hosts.toml``.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ctrpy.errors import InvalidArgument
from ctrpy.manager.registry.debug import HttpTap

DEFAULT_DOCKER_HOST = "registry-1.docker.io"
DEFAULT_DIR = "_default"


class Capability(enum.Flag):
    """What an endpoint may be used for: ``RESOLVE`` a tag to a digest, ``PULL`` by digest,
    ``PUSH``. A mirror usually gets only ``PULL``: content by digest is the same everywhere,
    while a tag is only trustworthy from the upstream (or a mirror allowed to ``RESOLVE``)."""

    NONE = 0
    PULL = enum.auto()
    RESOLVE = enum.auto()
    PUSH = enum.auto()
    ALL = PULL | RESOLVE | PUSH


_EMPTY_HEADERS: Mapping[str, tuple[str, ...]] = MappingProxyType({})


@dataclass(frozen=True)
class Endpoint:
    """One place to send requests for a registry host: ``scheme://host/path`` plus how to talk
    to it. ``path`` is the API root (``/v2`` unless ``override_path``)."""

    scheme: str
    host: str
    path: str = "/v2"
    capabilities: Capability = Capability.ALL
    skip_verify: bool = False
    ca_files: tuple[str, ...] = ()
    client_pairs: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _EMPTY_HEADERS)
    #: HTTP debugging asked for by the request (not configuration: see :mod:`.debug`).
    tap: HttpTap | None = field(default=None, compare=False, repr=False)

    @property
    def root(self) -> str:
        """The API root URL, without a trailing slash."""
        return f"{self.scheme}://{self.host}{self.path.rstrip('/')}"

    def url(self, repository: str, kind: str, obj: str = "") -> str:
        """``<root>/<repository>/<kind>/<obj>``: kind is ``manifests``, ``blobs`` or
        ``blobs/uploads``."""
        url = f"{self.root}/{repository}/{kind}/"
        return url + obj if obj else url

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``name[:port]`` or ``[v6]:port``) is this machine: ``localhost`` or a
    loopback address."""
    name = urlsplit("//" + host).hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_directories(config_path: str | os.PathLike[str], host: str) -> list[Path]:
    """The directories consulted for ``host``, best first (only the first that exists counts)."""
    root = Path(config_path)
    out: list[Path] = []
    name, colon, port = host.rpartition(":")
    if colon and name and not host.endswith("]"):
        out.append(root / f"{name}_{port}_")
    out += [root / host, root / DEFAULT_DIR]
    return out


def _strings(value: Any, what: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise InvalidArgument(f"{where}: {what} must be a string or a list of strings")


def _absolute(path: str, base: Path) -> str:
    return path if os.path.isabs(path) else str(base / path)


def _client_pairs(value: Any, base: Path, where: str) -> tuple[tuple[str, str], ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InvalidArgument(f"{where}: client must be a string or a list")
    pairs: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            pairs.append((_absolute(item, base), ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(p, str) for p in item):
            pairs.append((_absolute(item[0], base), _absolute(item[1], base)))
        else:
            raise InvalidArgument(f"{where}: client entry {item!r} must be a file or a [cert, key] pair")
    return tuple(pairs)


def _capabilities(value: Any, where: str) -> Capability:
    if value is None or value == []:
        return Capability.ALL
    result = Capability.NONE
    for name in _strings(value, "capabilities", where):
        if name.lower() not in ("pull", "resolve", "push"):
            raise InvalidArgument(f"{where}: unknown capability {name!r}")
        result |= Capability[name.upper()]
    return result


def _endpoint(server: str, table: Mapping[str, Any], base: Path, where: str) -> Endpoint | None:
    """One entry of hosts.toml; None for a server entry without ``server`` (filled in later)."""
    skip = table.get("skip_verify", False)
    if not isinstance(skip, bool):
        raise InvalidArgument(f"{where}: skip_verify must be a boolean")
    override = table.get("override_path", False)
    if not isinstance(override, bool):
        raise InvalidArgument(f"{where}: override_path must be a boolean")
    headers: dict[str, tuple[str, ...]] = {}
    raw_headers = table.get("header", {})
    if not isinstance(raw_headers, dict):
        raise InvalidArgument(f"{where}: header must be a table")
    for key, value in raw_headers.items():
        headers[key] = _strings(value, f"header {key!r}", where)
    ca = tuple(_absolute(p, base) for p in _strings(table["ca"], "ca", where)) if "ca" in table else ()
    pairs = _client_pairs(table["client"], base, where) if "client" in table else ()
    capabilities = _capabilities(table.get("capabilities"), where)
    if not server:
        return None if not (ca or pairs or skip or headers) else Endpoint(
            "", "", capabilities=capabilities, skip_verify=skip, ca_files=ca, client_pairs=pairs,
            headers=MappingProxyType(headers))
    if not server.startswith(("http://", "https://")):
        if "://" in server:
            raise InvalidArgument(f"{where}: unsupported scheme in {server!r}")
        server = "https://" + server
    parts = urlsplit(server)
    if not parts.netloc:
        raise InvalidArgument(f"{where}: no host in {server!r}")
    path = os.path.normpath(parts.path) if parts.path else ""
    if path in ("", "/", "."):
        path = ""
    if not override and not path.endswith("/v2"):
        path += "/v2"
    return Endpoint(parts.scheme, parts.netloc, path, capabilities, skip, ca, pairs, MappingProxyType(headers))


@dataclass(frozen=True)
class _Loaded:
    """A host directory's content: its endpoints and a server entry left for the defaults (the
    settings of that entry, with empty scheme and host, or None for no settings at all)."""

    endpoints: tuple[Endpoint, ...]
    defaults: Endpoint | None
    needs_default: bool


def _parse_hosts_toml(data: str, base: Path, where: str = "hosts.toml") -> _Loaded:
    """Parse the text of a hosts.toml; relative file names are taken from ``base``. Raises
    InvalidArgument naming ``where`` and the offending key."""
    try:
        doc = tomllib.loads(data)
    except tomllib.TOMLDecodeError as error:
        raise InvalidArgument(f"{where}: {error}") from None
    hosts = doc.get("host", {})
    if not isinstance(hosts, dict):
        raise InvalidArgument(f"{where}: host must be a table of tables")
    out: list[Endpoint] = []
    for server, table in hosts.items():  # tomllib keeps the file's order
        if not isinstance(table, dict):
            raise InvalidArgument(f"{where}: host {server!r} must be a table")
        endpoint = _endpoint(server, table, base, f"{where}: host {server!r}")
        if endpoint is None or not endpoint.host:
            raise InvalidArgument(f"{where}: host {server!r} names no host")
        out.append(endpoint)
    server = doc.get("server", "")
    if not isinstance(server, str):
        raise InvalidArgument(f"{where}: server must be a string")
    last = _endpoint(server, doc, base, where)
    if last is not None and last.host:
        return _Loaded((*out, last), None, False)
    return _Loaded(tuple(out), last, True)


def _cert_files(directory: Path) -> _Loaded:
    """Docker's layout: ``*.crt`` are CAs, ``x.cert`` with ``x.key`` a client pair."""
    ca: list[str] = []
    pairs: list[tuple[str, str]] = []
    for entry in sorted(directory.iterdir()):
        if entry.suffix == ".crt":
            ca.append(str(entry))
        elif entry.suffix == ".cert":
            key = entry.with_suffix(".key")
            if not key.exists():
                raise InvalidArgument(f"{directory}: missing key {key.name} for certificate {entry.name}")
            pairs.append((str(entry), str(key)))
        elif entry.suffix == ".key" and not entry.with_suffix(".cert").exists():
            raise InvalidArgument(f"{directory}: missing certificate for key {entry.name}")
    if not ca and not pairs:
        return _Loaded((), None, True)
    return _Loaded((), Endpoint("", "", ca_files=tuple(ca), client_pairs=tuple(pairs)), True)


def _load_directory(directory: Path) -> _Loaded:
    """What one host directory configures."""
    file = directory / "hosts.toml"
    try:
        text = file.read_text()
    except FileNotFoundError:
        text = ""
    if not text.strip():
        return _cert_files(directory)
    return _parse_hosts_toml(text, directory, str(file))


def endpoints(host: str, config_path: str | os.PathLike[str] | None = None, *,
              plain_http: bool = False) -> list[Endpoint]:
    """The endpoints for registry ``host`` (as in a reference: ``docker.io``,
    ``127.0.0.1:5000``), mirrors first and the server last, each with its capabilities.

    ``config_path`` is the hosts directory (daemon-wide or per request); None means defaults
    only. ``plain_http`` makes the default entry of a loopback host use ``http``. Raises
    InvalidArgument for a malformed hosts.toml. An empty list means the configuration names no
    endpoint that could serve the host (not possible with containerd's layout, but kept total).
    """
    loaded = _Loaded((), None, True)
    if config_path is not None:
        for directory in host_directories(config_path, host):
            if directory.is_dir():
                loaded = _load_directory(directory)
                break
    out = list(loaded.endpoints)
    if loaded.needs_default:
        base = loaded.defaults or Endpoint("", "")
        if host == "docker.io":
            scheme, name = "https", DEFAULT_DOCKER_HOST
        else:
            scheme, name = ("http" if plain_http and is_loopback(host) else "https"), host
        # As containerd does, the default server may do everything, whatever the file says.
        out.append(Endpoint(scheme, name, "/v2", Capability.ALL, base.skip_verify, base.ca_files,
                            base.client_pairs, base.headers))
    return out


def filter_capable(items: Sequence[Endpoint], capability: Capability) -> list[Endpoint]:
    """The endpoints that may be used for ``capability``, in order."""
    return [endpoint for endpoint in items if endpoint.can(capability)]
