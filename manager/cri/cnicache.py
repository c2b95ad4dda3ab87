"""The CNI result cache: what each sandbox's ADD used and returned, one JSON file per network.

Like libcni's cache, an entry lives at ``<cache_dir>/results/<network>-<container id>-<ifname>``
and keeps, beside the result, the whole configuration list, the CNI_ARGS and the capability
arguments of the ADD, so that DEL (after a restart, or after the conf file changed or went away)
and CHECK run with exactly what ADD ran with, and status has the pod's IPs without asking a
plugin. Unlike libcni's, an entry is written *before* ADD too (``result`` null): a ctrpyd killed
in the middle of ADD leaves an entry that names the configuration, and the DEL at start-up
reconcile uses it.

Writes are atomic and durable (temporary file, fsync, rename, fsync of the directory). Entries
that do not parse are ignored (never raised), so one damaged file cannot block every teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ctrpy.errors import CtrpyError
from ctrpy.manager.cri.cniconfig import NetworkConfigList, Result, parse_conflist, parse_result

__all__ = ["KIND", "Attachment", "ResultCache"]

KIND = "ctrpyCniCacheV1"


@dataclass(frozen=True)
class Attachment:
    """One network of a pod, as the cache holds it: ``result`` is None when ADD began and
    never finished (ctrpyd died, or it failed and its undo failed too); ``order`` is the
    position in setup (teardown goes the other way)."""

    network: str
    ifname: str
    result: Result | None
    config: NetworkConfigList
    netns: str = ""
    order: int = 0
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: dict[str, Any] = field(default_factory=dict, compare=False)


class ResultCache:
    """The entries under one directory. Container ids and network names are checked by the
    caller (the spec's character rules), so they are safe as parts of a file name."""

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.directory = os.path.join(os.fspath(cache_dir), "results")

    def path(self, network: str, container_id: str, ifname: str) -> str:
        return os.path.join(self.directory, f"{network}-{container_id}-{ifname}")

    def write(self, container_id: str, a: Attachment, *, durable: bool = True) -> None:
        """Write (or replace) the entry of ``a``; ``durable`` fsyncs it and the directory.

        What is written is safe from a crash of ctrpyd once this returns, fsynced or not; the
        fsyncs are for a power cut, and cost a journal commit each (milliseconds on a busy
        disk): callers ask for them only where a lost entry would leak an address.
        """
        doc = {
            "kind": KIND,
            "containerId": container_id,
            "networkName": a.network,
            "ifName": a.ifname,
            "netns": a.netns,
            "order": a.order,
            "config": a.config.raw,
            "cniArgs": [list(kv) for kv in a.cni_args],
            "capabilityArgs": a.capability_args,
            "result": a.result.raw if a.result is not None else None,
        }
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self.path(a.network, container_id, a.ifname)
        tmp = os.path.join(self.directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(doc).encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if not durable:
            return
        dirfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def sweep_temporaries(self) -> list[str]:
        """Remove the temporary files of writes that a crash cut short (the names :meth:`write`
        gives them, with another process's pid: this process writes with its own); return
        their paths. The entry each was replacing, if any, is whole: ``os.replace`` never ran."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        own = f".{os.getpid()}.tmp"
        swept = []
        for name in names:
            if name.startswith(".") and name.endswith(".tmp") and not name.endswith(own):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name))
                    swept.append(os.path.join(self.directory, name))
        return swept

    def remove(self, network: str, container_id: str, ifname: str) -> None:
        """Forget an entry (after its DEL succeeded); a missing one is fine."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(network, container_id, ifname))

    def entries(self, container_id: str) -> list[Attachment]:
        """The entries of one sandbox, in setup order."""
        found = [a for cid, a in self._scan(f"-{container_id}-") if cid == container_id]
        return sorted(found, key=lambda a: a.order)

    def sandboxes(self) -> set[str]:
        """Every container id with an entry."""
        return {cid for cid, _ in self._scan("")}

    def _scan(self, infix: str) -> list[tuple[str, Attachment]]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if not name.startswith(".") and infix in name:
                entry = read_entry(os.path.join(self.directory, name))
                if entry is not None:
                    found.append(entry)
        return found


def read_entry(path: str) -> tuple[str, Attachment] | None:
    """One entry as (container id, attachment), or None when it is unreadable or not ours."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        if doc.get("kind") != KIND:
            return None
        ifname = str(doc["ifName"])
        raw = doc.get("result")
        attachment = Attachment(
            network=str(doc["networkName"]),
            ifname=ifname,
            result=parse_result(raw, ifname) if raw is not None else None,
            config=parse_conflist(doc["config"]),
            netns=str(doc.get("netns", "")),
            order=int(doc.get("order", 0)),
            cni_args=tuple((str(k), str(v)) for k, v in doc.get("cniArgs", [])),
            capability_args=dict(doc.get("capabilityArgs") or {}),
        )
        return str(doc["containerId"]), attachment
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CtrpyError):
        return None
