"""Sandbox records: what ctrpyd knows of each pod sandbox, one JSON file per sandbox.

A record is the pod's memory across crashes. It is written *before* each thing it names is
made (the intent: a step name in ``steps``) and again after (the outcome: the netns path, the
pid), so that after a kill -9 at any point the start-up reconcile knows what may exist and can
undo it or keep it (:mod:`.sandboxes`). Files, not sqlite rows: a record changes a handful of
times in a pod's life, each change is one atomic rename, and the metadata schema that the
containerd API serves stays untouched. The pause container's extensions carry the same
metadata for ``ctr -n k8s.io containers info`` (containerd's ``io.cri-containerd.sandbox.metadata``).

Layout: ``<root>/cri/sandboxes/<id>.json``; the sandbox's own files (hostname, hosts,
resolv.conf) in ``<root>/cri/sandboxes/<id>/`` beside it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ctrpy.errors import NotFound

__all__ = ["CREATING", "READY", "STOPPED", "SandboxRecord", "SandboxStore"]

#: Phases: being made (half-made after a crash), made and started, stopped by StopPodSandbox.
CREATING = "creating"
READY = "ready"
STOPPED = "stopped"

KIND = "ctrpySandboxV1"


@dataclass(frozen=True)
class SandboxRecord:
    """One sandbox. ``config`` is the serialized ``PodSandboxConfig`` of RunPodSandbox;
    ``steps`` lists what was (about to be) made, in order: a step name appears before the thing
    it names is made, so every step listed may exist and none unlisted does."""

    id: str
    name: str
    config: bytes
    created_at_ns: int
    phase: str = CREATING
    steps: tuple[str, ...] = ()
    netns: str = ""
    pid: int = 0
    image: str = ""
    image_id: str = ""
    snapshotter: str = ""
    runtime_handler: str = ""
    ips: tuple[str, ...] = ()
    shm: str = ""

    def with_step(self, step: str) -> SandboxRecord:
        if step in self.steps:
            return self
        return dataclasses.replace(self, steps=(*self.steps, step))

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["config"] = base64.b64encode(self.config).decode()
        doc["steps"] = list(self.steps)
        doc["ips"] = list(self.ips)
        doc["kind"] = KIND
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SandboxRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in doc.items() if k in names}
        values["config"] = base64.b64decode(values.get("config", ""))
        values["steps"] = tuple(values.get("steps", ()))
        values["ips"] = tuple(values.get("ips", ()))
        return cls(**values)


@dataclass
class SandboxStore:
    """The records under ``<root>/cri/sandboxes``. Blocking file I/O: small and rare."""

    directory: str
    _cache: dict[str, SandboxRecord] = field(default_factory=dict)

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> SandboxStore:
        return cls(os.path.join(os.fspath(root), "cri", "sandboxes"))

    def path(self, sandbox_id: str) -> str:
        return os.path.join(self.directory, f"{sandbox_id}.json")

    def files_dir(self, sandbox_id: str) -> str:
        """The directory of the sandbox's own files (hostname, hosts, resolv.conf)."""
        return os.path.join(self.directory, sandbox_id)

    def load(self) -> list[SandboxRecord]:
        """Read every record (at start-up); files that do not parse are skipped and kept."""
        self._cache.clear()
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                with open(os.path.join(self.directory, name), "rb") as f:
                    doc = json.load(f)
                record = SandboxRecord.from_json(doc)
            except (OSError, ValueError, TypeError):
                continue
            self._cache[record.id] = record
        return list(self._cache.values())

    def get(self, sandbox_id: str) -> SandboxRecord:
        record = self._cache.get(sandbox_id)
        if record is None:
            raise NotFound(f'sandbox "{sandbox_id}"')
        return record

    def all(self) -> list[SandboxRecord]:
        return sorted(self._cache.values(), key=lambda r: (r.created_at_ns, r.id))

    def put(self, record: SandboxRecord) -> SandboxRecord:
        """Write ``record`` durably (temporary file, fsync, rename, fsync of the directory)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self.path(record.id)
        tmp = os.path.join(self.directory, f".{record.id}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(record.to_json(), sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        self._cache[record.id] = record
        return record

    def delete(self, sandbox_id: str) -> None:
        """Forget a record (idempotent)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(sandbox_id))
            _fsync_dir(self.directory)
        self._cache.pop(sandbox_id, None)

    def stray_dirs(self) -> list[str]:
        """Sandbox file directories no record claims (a crash before the first record)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [os.path.join(self.directory, n) for n in names
                if os.path.isdir(os.path.join(self.directory, n)) and n not in self._cache]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
