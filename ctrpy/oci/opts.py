"""Changes to a spec, one function per option ctr applies (containerd's ``oci.With...``).

Each function edits the spec in place. They are applied in the order ctr applies them, which
matters for the environment: the image's variables come first, ``--env`` ones replace or extend
them, ``TERM`` (``-t``) and ``HOSTNAME`` (``--net-host``) are appended last.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ctrpy.errors import InvalidArgument
from ctrpy.oci.defaults import Spec, linux, process, resources

CFS_PERIOD = 100_000


def replace_or_append_env(defaults: Sequence[str], overrides: Iterable[str]) -> list[str]:
    """``defaults`` with each ``KEY=VALUE`` of ``overrides`` replacing the variable of the same
    name or appended; a bare ``KEY`` in ``overrides`` removes that variable.

    Only variables of ``defaults`` are replaced or removed; overrides are appended as they come
    (containerd's ``replaceOrAppendEnvValues``, duplicates included).
    """
    results = list(defaults)
    where = {entry.partition("=")[0]: i for i, entry in enumerate(results)}
    removed: set[int] = set()
    for value in overrides:
        key, eq, _ = value.partition("=")
        if not eq:
            if key in where:
                removed.add(where[key])
            continue
        if key in where:
            results[where[key]] = value
            removed.discard(where[key])
        else:
            results.append(value)
    return [entry for i, entry in enumerate(results) if i not in removed]


def with_env(spec: Spec, variables: Sequence[str]) -> None:
    """Set (or, for a bare name, unset) environment variables."""
    if variables:
        proc = process(spec)
        proc["env"] = replace_or_append_env(proc.get("env") or [], variables)
        if not proc["env"]:
            del proc["env"]


def with_process_args(spec: Spec, args: Sequence[str]) -> None:
    """Replace the whole command line (the image's entrypoint included, as ctr does)."""
    proc = process(spec)
    proc["args"] = list(args)
    proc.pop("commandLine", None)


def with_cwd(spec: Spec, cwd: str) -> None:
    process(spec)["cwd"] = cwd


def with_tty(spec: Spec) -> None:
    """Give the process a terminal, and ``TERM=xterm``."""
    proc = process(spec)
    proc["terminal"] = True
    if "linux" in spec:
        proc["env"] = [*(proc.get("env") or []), "TERM=xterm"]


@dataclass(frozen=True)
class MountFlag:
    """One ``--mount`` as the spec's mounts list holds it."""

    destination: str
    type: str
    source: str
    options: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"destination": self.destination}
        if self.type:
            out["type"] = self.type
        if self.source:
            out["source"] = self.source
        if self.options:
            out["options"] = list(self.options)
        return out


def parse_mount_flag(text: str) -> MountFlag:
    """Parse ``type=bind,src=/a,dst=/b,options=rbind:ro`` (CSV fields; ``source``/``src``,
    ``destination``/``dst``; options separated by ``:``); raises InvalidArgument."""
    try:
        rows = list(csv.reader([text]))
    except csv.Error as exc:
        raise InvalidArgument(f"mount {text!r}: {exc}") from None
    fields: dict[str, str] = {"type": "", "source": "", "destination": ""}
    options: tuple[str, ...] = ()
    for field in rows[0] if rows else []:
        key, eq, value = field.partition("=")
        if not eq:
            raise InvalidArgument(f"mount {text!r}: invalid mount specification: expected key=val")
        if key == "type":
            fields["type"] = value
        elif key in ("source", "src"):
            fields["source"] = value
        elif key in ("destination", "dst"):
            fields["destination"] = value
        elif key == "options":
            options = tuple(value.split(":"))
        else:
            raise InvalidArgument(f"mount {text!r}: mount option {key!r} not supported")
    if not fields["destination"]:
        raise InvalidArgument(f"mount {text!r}: a destination (dst=) is required")
    return MountFlag(fields["destination"], fields["type"], fields["source"], options)


def with_mounts(spec: Spec, mounts: Iterable[MountFlag]) -> None:
    """Append mounts after the default ones."""
    spec.setdefault("mounts", []).extend(m.to_json() for m in mounts)


def with_host_namespace(spec: Spec, kind: str) -> None:
    """Share the host's namespace of ``kind`` (drop it from the new namespaces)."""
    namespaces = linux(spec).get("namespaces") or []
    linux(spec)["namespaces"] = [ns for ns in namespaces if ns.get("type") != kind]


def with_host_network(spec: Spec, hostname: str | None = None) -> None:
    """ctr's ``--net-host``: the host's network namespace, its /etc/hosts and /etc/resolv.conf
    bind-mounted read-only, and ``HOSTNAME`` set to the host's name."""
    with_host_namespace(spec, "network")
    for path in ("/etc/hosts", "/etc/resolv.conf"):
        spec.setdefault("mounts", []).append(
            {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]})
    with_env(spec, [f"HOSTNAME={hostname if hostname is not None else os.uname().nodename}"])


def with_memory_limit(spec: Spec, limit: int) -> None:
    """Limit memory to ``limit`` bytes."""
    resources(spec).setdefault("memory", {})["limit"] = limit


def with_cpu_cfs(spec: Spec, quota: int, period: int) -> None:
    cpu = resources(spec).setdefault("cpu", {})
    cpu["quota"] = quota
    cpu["period"] = period


def with_cpus(spec: Spec, cpus: float) -> None:
    """ctr's ``--cpus``: a CFS quota of ``cpus`` times a 100 ms period."""
    if cpus < 0:
        raise InvalidArgument(f"--cpus {cpus}: must not be negative")
    with_cpu_cfs(spec, int(cpus * CFS_PERIOD), CFS_PERIOD)


def with_cpu_shares(spec: Spec, shares: int) -> None:
    resources(spec).setdefault("cpu", {})["shares"] = shares


def with_cgroup(spec: Spec, path: str) -> None:
    """Put the container in cgroup ``path`` ("" leaves it to the runtime)."""
    linux(spec)["cgroupsPath"] = path


def with_readonly_rootfs(spec: Spec) -> None:
    spec.setdefault("root", {})["readonly"] = True


def with_annotations(spec: Spec, annotations: Mapping[str, str]) -> None:
    if annotations:
        spec.setdefault("annotations", {}).update(annotations)
