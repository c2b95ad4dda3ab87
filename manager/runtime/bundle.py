"""Task bundles on ctrpyd's side: ``<state>/tasks/<namespace>/<id>/``.

ctrpyd creates the bundle with the container's OCI spec as ``config.json`` and an empty
``rootfs/``; the shim fills in the rest (see :mod:`ctrpy.shim.files` for the full list) and
``ctrpy-shim delete`` or :meth:`Bundle.remove` takes it away.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ctrpy import mount as mounts
from ctrpy.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ctrpy.identifiers import validate
from ctrpy.shim import files
from ctrpy.shim.files import ExitInfo

TASKS_DIR = "tasks"


def tasks_root(state_dir: str | os.PathLike[str]) -> Path:
    """``<state>/tasks``."""
    return Path(state_dir) / TASKS_DIR


@dataclass(frozen=True)
class Bundle:
    """One task's bundle directory."""

    path: Path
    namespace: str
    id: str

    @classmethod
    def at(cls, state_dir: str | os.PathLike[str], namespace: str, container_id: str) -> Bundle:
        """The bundle of (namespace, id) under ``state_dir``, whether it exists or not.

        Raises InvalidArgument for identifiers that are not valid.
        """
        validate(namespace)
        validate(container_id)
        return cls(tasks_root(state_dir) / namespace / container_id, namespace, container_id)

    @classmethod
    def create(
        cls, state_dir: str | os.PathLike[str], namespace: str, container_id: str, spec: bytes
    ) -> Bundle:
        """Make the bundle with ``spec`` (OCI runtime spec JSON) as config.json.

        Raises InvalidArgument for bad identifiers or a spec that is not a JSON object, and
        AlreadyExists when the bundle is already there.
        """
        bundle = cls.at(state_dir, namespace, container_id)
        try:
            parsed = json.loads(spec)
        except ValueError as exc:
            raise InvalidArgument(f"spec is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidArgument("spec is not a JSON object")
        bundle.path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        try:
            bundle.path.mkdir(mode=0o711)
        except FileExistsError:
            raise AlreadyExists(f'bundle for task "{container_id}"') from None
        try:
            files.write_atomic(bundle.path / files.CONFIG, spec)
            (bundle.path / files.ROOTFS).mkdir(mode=0o711)
        except BaseException:
            shutil.rmtree(bundle.path, ignore_errors=True)
            raise
        return bundle

    def exists(self) -> bool:
        """Whether the directory exists."""
        return self.path.is_dir()

    def address(self) -> str | None:
        """The shim's address from ``address``, or None when the shim never wrote one."""
        return files.read_text(self.path, files.ADDRESS) or None

    def shim_pid(self) -> int | None:
        """The shim's pid from ``shim.pid``."""
        return files.read_pid(self.path, files.SHIM_PID)

    def init_pid(self) -> int | None:
        """The init process's pid from ``init.pid``."""
        return files.read_pid(self.path, files.INIT_PID)

    def exit(self) -> ExitInfo | None:
        """The init process's exit from ``exit``, once the shim has written it."""
        return files.read_exit(self.path)

    def remove(self) -> None:
        """Remove the bundle; refuses (FailedPrecondition) while anything is mounted in it.

        A bundle that does not exist raises NotFound.
        """
        if not self.exists():
            raise NotFound(f'bundle for task "{self.id}"')
        if mounts.mountpoints_under(self.path):
            raise FailedPrecondition(f'bundle for task "{self.id}" still has mounts')
        shutil.rmtree(self.path)


def bundles(state_dir: str | os.PathLike[str]) -> list[Bundle]:
    """Every bundle under ``<state>/tasks/*/*`` whose names are valid identifiers, sorted."""
    root = tasks_root(state_dir)
    found: list[Bundle] = []
    if not root.is_dir():
        return found
    for ns_dir in sorted(root.iterdir()):
        if not ns_dir.is_dir():
            continue
        for task_dir in sorted(ns_dir.iterdir()):
            if not task_dir.is_dir():
                continue
            try:
                found.append(Bundle.at(state_dir, ns_dir.name, task_dir.name))
            except InvalidArgument:
                continue
    return found
