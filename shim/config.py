"""What one shim is started with, and the paths that follow from it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ctrpy.errors import InvalidArgument
from ctrpy.identifiers import validate

from . import attachproto

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
SOCKET_DIR = "s"
# The comm of every shim process, so that a pid can be recognised as a shim.
PROCESS_NAME = b"ctrpy-shim"


def task_socket_path(state_root: str, namespace: str, task_id: str) -> str:
    """``<state_root>/s/<hash of state root, namespace and id>``: the socket of the shim started
    for the task, and (with :func:`ctrpy.shim.attachproto.socket_for`) the base of the task's
    attach socket, also when the task was added to another task's shim."""
    import hashlib  # here: this module is imported by ctrpyd, which does without OpenSSL's libcrypto when idle

    digest = hashlib.sha256(f"{state_root}\0{namespace}\0{task_id}".encode()).hexdigest()
    return os.path.join(state_root, SOCKET_DIR, digest[:24])


def task_attach_socket(state_root: str, namespace: str, task_id: str) -> str:
    """Where the task serves attach clients, whichever shim holds it."""
    return attachproto.socket_for(task_socket_path(state_root, namespace, task_id))


@dataclass(frozen=True)
class ShimConfig:
    """The arguments of ``ctrpy-shim start`` (and of a template fork request).

    ``address`` is ctrpyd's ttrpc socket (``<ctrpyd socket>.ttrpc``, a path or ``unix://``
    address), where events are forwarded (empty: publish nothing).
    ``runtime_root`` defaults to ``<state_root>/runc/<namespace>``, so that every ctrpyd
    instance and every namespace has its own runc state.
    """

    namespace: str
    id: str
    bundle: str
    address: str
    state_root: str
    runtime_binary: str = "runc"
    runtime_root: str = ""

    def __post_init__(self) -> None:
        validate(self.namespace)
        validate(self.id)
        for name in ("bundle", "state_root"):
            if not os.path.isabs(getattr(self, name)):
                raise InvalidArgument(f"{name} must be an absolute path")
        if not self.runtime_root:
            object.__setattr__(self, "runtime_root", self.default_runtime_root(self.namespace))
        if len(self.socket_path.encode()) > MAX_SOCKET_PATH:
            raise InvalidArgument(f'socket path "{self.socket_path}" is longer than {MAX_SOCKET_PATH} bytes')

    def default_runtime_root(self, namespace: str) -> str:
        """``<state_root>/runc/<namespace>``."""
        return os.path.join(self.state_root, "runc", namespace)

    @property
    def socket_dir(self) -> str:
        """``<state_root>/s``: shim sockets and console sockets."""
        return os.path.join(self.state_root, SOCKET_DIR)

    @property
    def socket_path(self) -> str:
        """``<state_root>/s/<hash of state root, namespace and id>``, short enough for sun_path."""
        return task_socket_path(self.state_root, self.namespace, self.id)

    @property
    def socket_address(self) -> str:
        """``unix:///<socket path>``: where the shim serves ttrpc, as written to the bundle's
        ``address`` file (containerd's form of a shim address)."""
        return f"unix://{self.socket_path}"

    def to_dict(self) -> dict[str, str]:
        """The fields as a JSON-able dict (the template protocol)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShimConfig:
        """Build from :meth:`to_dict` output; raises InvalidArgument on bad or missing fields."""
        try:
            fields = {k: str(data[k]) for k in ("namespace", "id", "bundle", "address", "state_root")}
        except KeyError as exc:
            raise InvalidArgument(f"missing field {exc.args[0]}") from None
        return cls(
            **fields,
            runtime_binary=str(data.get("runtime_binary") or "runc"),
            runtime_root=str(data.get("runtime_root") or ""),
        )

    def to_args(self) -> list[str]:
        """The command-line options of ``ctrpy-shim start`` for this config."""
        return [
            "--namespace", self.namespace,
            "--id", self.id,
            "--bundle", self.bundle,
            "--address", self.address,
            "--state-root", self.state_root,
            "--runtime-binary", self.runtime_binary,
            "--runtime-root", self.runtime_root,
        ]  # fmt: skip
