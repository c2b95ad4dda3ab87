"""systemd's readiness protocol (sd_notify), without libsystemd: a datagram to ``$NOTIFY_SOCKET``.

Why: under ``Type=notify`` (contrib/ctrpyd.service) systemd considers ctrpyd started when it
says ``READY=1``, which it does once its socket serves, so that units ordered after it (a
kubelet, Docker) find it answering; ``STOPPING=1`` when it begins to drain. The protocol is one
unix datagram of ``KEY=VALUE`` lines to the address in ``NOTIFY_SOCKET`` (a path, or ``@name``
for the abstract namespace): a few lines here rather than a dependency.

The variable is taken out of the environment as soon as it is read (sd_notify's
``unset_environment``): runc treats a ``NOTIFY_SOCKET`` it inherits as a request to proxy the
container's own readiness and would make every ``runc start`` wait for it, and the shims and
runc are ctrpyd's descendants (containerd's go-runc filters it out for the same reason).
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

import structlog

log = structlog.get_logger(__name__)

ENV = "NOTIFY_SOCKET"


class Notifier:
    """Sends states to systemd; does nothing when ctrpyd was not started by it."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """The notifier for ``$NOTIFY_SOCKET``, removed from ``environ`` (see the module docstring)."""
        return cls(environ.pop(ENV, None))

    def send(self, state: str) -> bool:
        """Send ``state`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``, newline-separated);
        whether it was sent. A failure is logged, never raised: readiness is advisory."""
        if self.address is None:
            return False
        if self.address.startswith("@"):
            target = "\0" + self.address[1:]
        elif self.address.startswith("/"):
            target = self.address
        else:
            log.warning("NOTIFY_SOCKET is not a unix socket address; not notifying", address=self.address)
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), target)
        except OSError as exc:
            log.warning("sd_notify failed", address=self.address, error=str(exc))
            return False
        return True
