"""Container records: what ctrpyd knows of each CRI container, one JSON file per container.

containerd's CRI plugin keeps a container's metadata in the container record's extensions and
its status (started, finished, exit code, reason) in a status file beside it; ctrpy keeps both
in one record, written atomically at each change, so that ContainerStatus answers the same
after a ctrpyd restart. The task itself is recovered by the task manager; a container whose
task died while ctrpyd was down is marked exited at start-up from the exit its shim left.

Layout: ``<root>/cri/containers/<id>.json``; the container's own files (copied image volumes)
in ``<root>/cri/containers/<id>/`` beside it.
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

__all__ = ["CREATED", "CREATING", "EXITED", "RUNNING", "ContainerRecord", "ContainerStore"]

#: Phases: being made (half-made after a crash), made, its task started, its task exited.
CREATING = "creating"
CREATED = "created"
RUNNING = "running"
EXITED = "exited"

KIND = "ctrpyContainerV1"


@dataclass(frozen=True)
class ContainerRecord:
    """One container. ``config`` is the serialized ``ContainerConfig`` of CreateContainer.

    ``image`` is the image name the container was made from (as the config asked, or its
    first tag), ``image_id`` its id, ``image_ref`` what ContainerStatus reports as image_ref
    (a repo digest when the image has one, else the id). ``mounts`` are the CRI mounts as
    ContainerStatus reports them (serialized ``Mount`` messages)."""

    id: str
    name: str
    sandbox_id: str
    config: bytes
    created_at_ns: int
    phase: str = CREATING
    image: str = ""
    image_id: str = ""
    image_ref: str = ""
    snapshotter: str = ""
    log_path: str = ""
    stop_signal: str = "SIGTERM"
    pid: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    oom_killed: bool = False
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["config"] = base64.b64encode(self.config).decode()
        doc["additional_gids"] = list(self.additional_gids)
        doc["kind"] = KIND
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ContainerRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in doc.items() if k in names}
        values["config"] = base64.b64decode(values.get("config", ""))
        values["additional_gids"] = tuple(values.get("additional_gids", ()))
        return cls(**values)


@dataclass
class ContainerStore:
    """The records under ``<root>/cri/containers``. Blocking file I/O: small and rare."""

    directory: str
    _cache: dict[str, ContainerRecord] = field(default_factory=dict)

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> ContainerStore:
        return cls(os.path.join(os.fspath(root), "cri", "containers"))

    def path(self, container_id: str) -> str:
        return os.path.join(self.directory, f"{container_id}.json")

    def files_dir(self, container_id: str) -> str:
        return os.path.join(self.directory, container_id)

    def load(self) -> list[ContainerRecord]:
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
                    record = ContainerRecord.from_json(json.load(f))
            except (OSError, ValueError, TypeError):
                continue
            self._cache[record.id] = record
        return list(self._cache.values())

    def get(self, container_id: str) -> ContainerRecord:
        record = self._cache.get(container_id)
        if record is None:
            raise NotFound(f'container "{container_id}"')
        return record

    def find(self, container_id: str) -> ContainerRecord | None:
        return self._cache.get(container_id)

    def all(self) -> list[ContainerRecord]:
        return sorted(self._cache.values(), key=lambda r: (r.created_at_ns, r.id))

    def put(self, record: ContainerRecord) -> ContainerRecord:
        """Write ``record`` durably (temporary file, fsync, rename, fsync of the directory)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        tmp = os.path.join(self.directory, f".{record.id}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(record.to_json(), sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path(record.id))
        _fsync_dir(self.directory)
        self._cache[record.id] = record
        return record

    def cache(self, record: ContainerRecord) -> ContainerRecord:
        """Keep ``record`` in memory only: the next :meth:`put` writes it (used for changes that
        are recomputed at start-up anyway)."""
        self._cache[record.id] = record
        return record

    def delete(self, container_id: str) -> None:
        """Forget a record (idempotent)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(container_id))
            _fsync_dir(self.directory)
        self._cache.pop(container_id, None)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
