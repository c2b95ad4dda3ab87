"""Seccomp for CRI containers: the runtime's default profile and the choice of profile.

containerd's RuntimeDefault is a long *allowlist* (several hundred syscall names, grouped by the
capabilities that re-enable them). ctrpy writes a short *denylist* instead: everything is allowed
except the syscalls that containerd's and Docker's default profiles keep out of an unprivileged
container. Each denied group is allowed again when the container holds the capability that makes
the call meaningful (``CAP_SYS_ADMIN`` for mount/unshare/setns, ``CAP_SYS_MODULE`` for modules...),
as the upstream profile does. The trade-off, chosen on purpose: a syscall added to the kernel
after this list was written is allowed (an allowlist would refuse it), but the list is short
enough to review, and it never breaks a program that uses an ordinary new syscall. Denied calls
fail with EPERM, like upstream; ``clone3`` fails with ENOSYS so that libc falls back to
``clone``, whose namespace flags are then checked argument by argument (seccomp cannot look into
``clone3``'s struct).

The profile choice follows containerd: the deprecated ``seccomp_profile_path`` string
(``runtime/default``, ``docker/default``, ``unconfined``, ``localhost/<path>``) is read only when
the ``SecurityProfile`` field is absent; nothing given means no filter (containerd's default
``unset_seccomp_profile``); a privileged container never gets a filter.
"""

from __future__ import annotations

import json
import platform
from typing import Any

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import InvalidArgument, NotFound

__all__ = ["default_profile", "load_localhost", "profile_for", "security_profile"]

EPERM = 1
ENOSYS = 38

RUNTIME_DEFAULT = "runtime/default"
DOCKER_DEFAULT = "docker/default"
UNCONFINED = "unconfined"
LOCALHOST_PREFIX = "localhost/"

# Syscalls denied unless the container holds the capability (None: denied to everyone unprivileged).
_DENIED: tuple[tuple[str | None, tuple[str, ...]], ...] = (
    (None, (
        "add_key", "keyctl", "request_key", "get_kernel_syms", "query_module", "create_module",
        "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old",
    )),
    ("CAP_SYS_ADMIN", (
        "mount", "umount", "umount2", "pivot_root", "setns", "unshare", "swapon", "swapoff",
        "quotactl", "quotactl_fd", "lookup_dcookie", "fanotify_init", "name_to_handle_at",
        "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    )),
    ("CAP_SYS_BOOT", ("reboot", "kexec_load", "kexec_file_load")),
    ("CAP_SYS_MODULE", ("init_module", "finit_module", "delete_module")),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime",
                      "clock_adjtime64")),
    ("CAP_SYS_PACCT", ("acct",)),
    ("CAP_SYS_PTRACE", ("kcmp", "pidfd_getfd", "userfaultfd")),
    ("CAP_SYS_NICE", ("mbind", "set_mempolicy", "get_mempolicy", "move_pages")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    ("CAP_BPF", ("bpf",)),
    ("CAP_PERFMON", ("perf_event_open",)),
)  # fmt: skip

# Namespace flags of clone(2) that only CAP_SYS_ADMIN may use.
_CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}


def _errno(names: list[str], errno: int = EPERM) -> dict[str, Any]:
    return {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno}


def default_profile(capabilities: set[str] | frozenset[str], machine: str | None = None) -> dict[str, Any]:
    """The RuntimeDefault profile (the spec's ``linux.seccomp``) for a container whose bounding
    set is ``capabilities`` (see the module docstring)."""
    denied: list[str] = []
    for capability, names in _DENIED:
        if capability is None or capability not in capabilities:
            denied.extend(names)
    # CAP_BPF and CAP_PERFMON are recent; CAP_SYS_ADMIN covered them before and still does.
    if "CAP_SYS_ADMIN" in capabilities:
        denied = [n for n in denied if n not in ("bpf", "perf_event_open")]
    rules = [_errno(sorted(denied))] if denied else []
    if "CAP_SYS_ADMIN" not in capabilities:
        rules.append(_errno(["clone3"], ENOSYS))
        for flag in _CLONE_NS_FLAGS:
            rule = _errno(["clone"])
            rule["args"] = [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]
            rules.append(rule)
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW"}
    arches = _ARCHES.get(machine or platform.machine())
    if arches:
        profile["architectures"] = list(arches)
    profile["syscalls"] = rules
    return profile


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
