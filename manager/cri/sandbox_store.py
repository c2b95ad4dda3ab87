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

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .recordfiles import RecordDir, decode_fields, encode_fields

__all__ = ["CREATING", "READY", "STOPPED", "SandboxRecord", "SandboxStore"]

#: Phases: being made (half-made after a crash), made and started, stopped by StopPodSandbox.
CREATING = "creating"
READY = "ready"
STOPPED = "stopped"

KIND = "ctrpySandboxV1"
_TUPLES = ("steps", "ips")


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
        return encode_fields(self, KIND, _TUPLES)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SandboxRecord:
        return cls(**decode_fields(cls, doc, _TUPLES))


class SandboxStore(RecordDir[SandboxRecord]):
    """The records under ``<root>/cri/sandboxes`` (see :mod:`.recordfiles`); a sandbox's own
    files (hostname, hosts, resolv.conf) are in :meth:`files_dir`."""

    noun = "sandbox"

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> SandboxStore:
        return cls.at(root, "cri", "sandboxes")

    def parse(self, doc: dict[str, Any]) -> SandboxRecord:
        return SandboxRecord.from_json(doc)
