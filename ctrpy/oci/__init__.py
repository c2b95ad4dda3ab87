"""Containers and their OCI runtime specs, built on the client side as ctr builds them.

A container's spec is JSON that the daemon stores opaquely and hands to runc. It is made here:
containerd's default Linux spec (``defaults``), changed by one function per ``ctr run`` flag
(``opts``), filled from the image config (``image``) and the image's /etc/passwd and
/etc/group (``users``), written with Go's key order (``layout``). ``container`` creates the
container record over the API (snapshot, spec, labels, runtime) and deletes it again.

Imports point one way: ``defaults`` <- ``opts``, ``users``, ``layout`` <- ``image`` <-
``container``. Only ``container`` talks to the daemon (through :class:`ctrpy.client.Client`
and :mod:`ctrpy.images`); nothing here imports the CLI or the daemon.
"""

from ctrpy.oci.container import (
    DEFAULT_RUNTIME,
    RUNC_OPTIONS_URL,
    STOP_SIGNAL_LABEL,
    ContainerConfig,
    build_spec,
    create_container,
    delete_container,
    get_container,
    mounted_snapshot,
)
from ctrpy.oci.defaults import Spec, add_default_devices, default_spec
from ctrpy.oci.image import RunConfig, parse_run_config
from ctrpy.oci.layout import PROCESS_URL, SPEC_URL, process_json, spec_json, spec_layout
from ctrpy.oci.opts import MountFlag, parse_mount_flag, replace_or_append_env
from ctrpy.oci.users import Identity, identity, resolve_user, root_path

__all__ = [
    "DEFAULT_RUNTIME",
    "PROCESS_URL",
    "RUNC_OPTIONS_URL",
    "SPEC_URL",
    "STOP_SIGNAL_LABEL",
    "ContainerConfig",
    "Identity",
    "MountFlag",
    "RunConfig",
    "Spec",
    "add_default_devices",
    "build_spec",
    "create_container",
    "default_spec",
    "delete_container",
    "get_container",
    "identity",
    "mounted_snapshot",
    "parse_mount_flag",
    "parse_run_config",
    "process_json",
    "replace_or_append_env",
    "resolve_user",
    "root_path",
    "spec_json",
    "spec_layout",
]
