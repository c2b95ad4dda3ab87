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

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrpy.lazyattrs import lazy_attributes

if TYPE_CHECKING:
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

# Imported at first use: a caller that needs one module (the shim, ``ctrpy.oci.mounts``; the
# CRI, ``ctrpy.oci.defaults``) does not load the client and image code ``container`` brings.
_WHERE = {
    "ContainerConfig": "ctrpy.oci.container",
    "DEFAULT_RUNTIME": "ctrpy.oci.container",
    "Identity": "ctrpy.oci.users",
    "MountFlag": "ctrpy.oci.opts",
    "PROCESS_URL": "ctrpy.oci.layout",
    "RUNC_OPTIONS_URL": "ctrpy.oci.container",
    "RunConfig": "ctrpy.oci.image",
    "SPEC_URL": "ctrpy.oci.layout",
    "STOP_SIGNAL_LABEL": "ctrpy.oci.container",
    "Spec": "ctrpy.oci.defaults",
    "add_default_devices": "ctrpy.oci.defaults",
    "build_spec": "ctrpy.oci.container",
    "create_container": "ctrpy.oci.container",
    "default_spec": "ctrpy.oci.defaults",
    "delete_container": "ctrpy.oci.container",
    "get_container": "ctrpy.oci.container",
    "identity": "ctrpy.oci.users",
    "mounted_snapshot": "ctrpy.oci.container",
    "parse_mount_flag": "ctrpy.oci.opts",
    "parse_run_config": "ctrpy.oci.image",
    "process_json": "ctrpy.oci.layout",
    "replace_or_append_env": "ctrpy.oci.opts",
    "resolve_user": "ctrpy.oci.users",
    "root_path": "ctrpy.oci.users",
    "spec_json": "ctrpy.oci.layout",
    "spec_layout": "ctrpy.oci.layout",
}


__getattr__ = lazy_attributes(__name__, _WHERE)


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
