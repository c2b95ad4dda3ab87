"""Seccomp for CRI containers: the runtime's default profile and the choice of profile.

RuntimeDefault is an allowlist built as containerd builds its own (:mod:`.seccomp_default`):
everything not listed fails with EPERM, calls that need a capability are listed when the
container's bounding set holds it, ``clone`` is allowed without namespace flags and ``clone3``
fails with ENOSYS unless the container holds ``CAP_SYS_ADMIN``.

The profile choice follows containerd: the deprecated ``seccomp_profile_path`` string
(``runtime/default``, ``docker/default``, ``unconfined``, ``localhost/<path>``) is read only when
the ``SecurityProfile`` field is absent; nothing given means no filter (containerd's default
``unset_seccomp_profile``); a privileged container never gets a filter.
"""

from __future__ import annotations

import json
from typing import Any

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import InvalidArgument, NotFound

from . import seccomp_default

__all__ = ["default_profile", "load_localhost", "profile_for", "security_profile"]

RUNTIME_DEFAULT = "runtime/default"
DOCKER_DEFAULT = "docker/default"
UNCONFINED = "unconfined"
LOCALHOST_PREFIX = "localhost/"

def default_profile(capabilities: set[str] | frozenset[str], machine: str | None = None) -> dict[str, Any]:
    """The RuntimeDefault profile (the spec's ``linux.seccomp``) for a container whose bounding
    set is ``capabilities``, on ``machine`` (default: this one)."""
    return seccomp_default.build(capabilities, machine)


def security_profile(field: api.SecurityProfile | None, path: str) -> api.SecurityProfile | None:
    """The profile asked for: the ``SecurityProfile`` field when set, else the deprecated
    string ``path`` translated (containerd's ``generateSeccompSecurityProfile``), else None.
    Raises InvalidArgument for a string that is none of the known forms."""
    if field is not None:
        return field
    if not path:
        return None
    if path in (RUNTIME_DEFAULT, DOCKER_DEFAULT):
        return api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault)
    if path == UNCONFINED:
        return api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined)
    if path.startswith(LOCALHOST_PREFIX):
        return api.SecurityProfile(profile_type=api.SecurityProfile.Localhost,
                                   localhost_ref=path[len(LOCALHOST_PREFIX):])
    raise InvalidArgument(f"invalid seccomp profile {path!r}")


def load_localhost(path: str) -> dict[str, Any]:
    """A Localhost profile: the JSON file at ``path`` (absolute), as the spec's ``linux.seccomp``.
    Raises NotFound when it is missing, InvalidArgument when it is not a JSON object."""
    if path.startswith(LOCALHOST_PREFIX):
        path = path[len(LOCALHOST_PREFIX):]
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp profile path {path!r} must be absolute")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        raise NotFound(f"seccomp profile {path!r}: not found") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"seccomp profile {path!r}: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"seccomp profile {path!r}: expected a JSON object")
    return doc


def profile_for(profile: api.SecurityProfile | None, *, privileged: bool,
                capabilities: set[str] | frozenset[str]) -> dict[str, Any] | None:
    """The spec's ``linux.seccomp`` for the chosen profile, or None for no filter."""
    if privileged or profile is None:
        return None
    kind = profile.profile_type
    if kind != api.SecurityProfile.Localhost and profile.localhost_ref:
        raise InvalidArgument("seccomp config invalid: localhost_ref must only be set if profile_type is Localhost")
    if kind == api.SecurityProfile.Unconfined:
        return None
    if kind == api.SecurityProfile.RuntimeDefault:
        return default_profile(capabilities)
    if kind == api.SecurityProfile.Localhost:
        return load_localhost(profile.localhost_ref)
    raise InvalidArgument(f"unknown seccomp profile type {kind}")
