"""Writing a spec as JSON the way containerd does: keys in the order of the runtime-spec's Go
structs, so that a spec made by ctrpy reads like one made by ctr.

Key order carries no meaning (runc and ctrpyd parse JSON); it only keeps specs comparable by
eye. Keys the tables below do not know keep their place after the known ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ctrpy.oci.defaults import Spec

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"

_SPEC = ("ociVersion", "process", "root", "hostname", "domainname", "mounts", "hooks", "annotations",
         "linux", "solaris", "windows", "vm")
_PROCESS = ("terminal", "consoleSize", "user", "args", "commandLine", "env", "cwd", "capabilities",
            "rlimits", "noNewPrivileges", "apparmorProfile", "oomScoreAdj", "selinuxLabel")
_USER = ("uid", "gid", "umask", "additionalGids", "username")
_CAPABILITIES = ("bounding", "effective", "inheritable", "permitted", "ambient")
_RLIMIT = ("type", "hard", "soft")
_ROOT = ("path", "readonly")
_MOUNT = ("destination", "type", "source", "options")
_LINUX = ("uidMappings", "gidMappings", "sysctl", "resources", "cgroupsPath", "namespaces", "devices",
          "seccomp", "rootfsPropagation", "maskedPaths", "readonlyPaths", "mountLabel", "intelRdt",
          "personality")
_RESOURCES = ("devices", "memory", "cpu", "pids", "blockIO", "hugepageLimits", "network", "rdma", "unified")
_DEVICE_RULE = ("allow", "type", "major", "minor", "access")
_MEMORY = ("limit", "reservation", "swap", "kernel", "kernelTCP", "swappiness", "disableOOMKiller",
           "useHierarchy")
_CPU = ("shares", "quota", "period", "realtimeRuntime", "realtimePeriod", "cpus", "mems")
_NAMESPACE = ("type", "path")


def _ordered(value: Any, keys: Sequence[str]) -> Any:
    if not isinstance(value, dict):
        return value
    out = {key: value[key] for key in keys if key in value}
    out.update((key, item) for key, item in value.items() if key not in out)
    return out


def _each(values: Any, keys: Sequence[str]) -> Any:
    if not isinstance(values, list):
        return values
    return [_ordered(item, keys) for item in values]


def process_layout(process: Any) -> Any:
    """A ``process`` object with its keys (and those of its parts) in Go's order."""
    process = _ordered(process, _PROCESS)
    if isinstance(process, dict):
        if "user" in process:
            process["user"] = _ordered(process["user"], _USER)
        if "capabilities" in process:
            process["capabilities"] = _ordered(process["capabilities"], _CAPABILITIES)
        if "rlimits" in process:
            process["rlimits"] = _each(process["rlimits"], _RLIMIT)
    return process


def spec_layout(spec: Spec) -> Spec:
    """A copy of ``spec`` whose keys are in the order containerd writes them."""
    out: Spec = _ordered(spec, _SPEC)
    if "process" in out:
        out["process"] = process_layout(out["process"])
    if "root" in out:
        out["root"] = _ordered(out["root"], _ROOT)
    if "mounts" in out:
        out["mounts"] = _each(out["mounts"], _MOUNT)
    linux = out.get("linux")
    if isinstance(linux, dict):
        linux = _ordered(linux, _LINUX)
        resources = linux.get("resources")
        if isinstance(resources, dict):
            resources = _ordered(resources, _RESOURCES)
            if "devices" in resources:
                resources["devices"] = _each(resources["devices"], _DEVICE_RULE)
            if "memory" in resources:
                resources["memory"] = _ordered(resources["memory"], _MEMORY)
            if "cpu" in resources:
                resources["cpu"] = _ordered(resources["cpu"], _CPU)
            linux["resources"] = resources
        if "namespaces" in linux:
            linux["namespaces"] = _each(linux["namespaces"], _NAMESPACE)
        out["linux"] = linux
    return out


def spec_json(spec: Spec) -> bytes:
    """The spec as compact JSON bytes, keys in containerd's order."""
    return json.dumps(spec_layout(spec), separators=(",", ":")).encode()


def process_json(process: dict[str, Any]) -> bytes:
    """A ``process`` object as compact JSON bytes (the payload of Tasks.Exec)."""
    return json.dumps(process_layout(process), separators=(",", ":")).encode()
