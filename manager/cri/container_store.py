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

import os
from dataclasses import dataclass
from typing import Any

from .recordfiles import RecordDir, decode_fields, encode_fields

__all__ = ["CREATED", "CREATING", "EXITED", "RUNNING", "ContainerRecord", "ContainerStore"]

#: Phases: being made (half-made after a crash), made, its task started, its task exited.
CREATING = "creating"
CREATED = "created"
RUNNING = "running"
EXITED = "exited"

KIND = "ctrpyContainerV1"
_TUPLES = ("additional_gids",)


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
        return encode_fields(self, KIND, _TUPLES)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ContainerRecord:
        return cls(**decode_fields(cls, doc, _TUPLES))


class ContainerStore(RecordDir[ContainerRecord]):
    """The records under ``<root>/cri/containers`` (see :mod:`.recordfiles`); a container's own
    files (image volumes) are in :meth:`files_dir`."""

    noun = "container"

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> ContainerStore:
        return cls.at(root, "cri", "containers")

    def parse(self, doc: dict[str, Any]) -> ContainerRecord:
        return ContainerRecord.from_json(doc)
