"""What an image's config says about running it, and how that enters a spec.

:class:`RunConfig` holds the ``config`` object of an OCI (or Docker) image config: environment,
entrypoint and command, working directory, user, labels and stop signal. :func:`apply` puts it
into a spec as containerd's ``WithImageConfig`` does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ctrpy.errors import InvalidArgument
from ctrpy.images import mediatypes
from ctrpy.oci.defaults import DEFAULT_PATH_ENV, Spec, process
from ctrpy.oci.opts import replace_or_append_env
from ctrpy.oci.users import Identity

DEFAULT_STOP_SIGNAL = "SIGTERM"


@dataclass(frozen=True)
class RunConfig:
    """The run-time part of an image config."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    stop_signal: str = ""


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config: {what} must be a list of strings")
    return tuple(value)


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"image config: {what} must be a string")
    return value


def parse_run_config(data: bytes, media_type: str) -> RunConfig:
    """Parse the ``config`` part of an image config blob; raises InvalidArgument for an unknown
    media type or a malformed document."""
    if not mediatypes.is_config(media_type):
        raise InvalidArgument(f"unknown image config media type {media_type}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"image config: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("image config: expected a JSON object")
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise InvalidArgument("image config: config must be an object")
    labels = config.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("image config: Labels must map strings to strings")
    return RunConfig(
        env=_strings(config.get("Env"), "Env"),
        entrypoint=_strings(config.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(config.get("Cmd"), "Cmd"),
        working_dir=_string(config.get("WorkingDir"), "WorkingDir"),
        user=_string(config.get("User"), "User"),
        labels=MappingProxyType(dict(labels)),
        stop_signal=_string(config.get("StopSignal"), "StopSignal"),
    )


def stop_signal(config: RunConfig) -> str:
    """The signal that stops the container (the image's, else SIGTERM)."""
    return config.stop_signal or DEFAULT_STOP_SIGNAL


def apply(spec: Spec, config: RunConfig, who: Identity) -> None:
    """Apply an image config to a spec (containerd's ``WithImageConfig``).

    The image's environment (or the default PATH) comes first and the spec's own variables
    override it; args are entrypoint + cmd; the working directory defaults to ``/``; ``who`` is
    the identity resolved from the image's user and its /etc/passwd and /etc/group.
    """
    proc = process(spec)
    proc["env"] = replace_or_append_env(config.env or (DEFAULT_PATH_ENV,), proc.get("env") or [])
    proc["args"] = [*config.entrypoint, *config.cmd]
    if not proc["args"]:
        del proc["args"]
    proc["cwd"] = config.working_dir or "/"
    proc["user"] = {"uid": who.uid, "gid": who.gid, "additionalGids": list(who.additional_gids)}
