"""The OCI runtime spec of a CRI container, built the way containerd's CRI plugin builds it.

:func:`container_spec` takes the ``runtime.v1.ContainerConfig``, what the sandbox manager knows
about the pod (:class:`SandboxInfo`), the image config and the container's mounted root
filesystem, and returns the spec (a dict, as ``ctrpy.oci`` makes them). Starting from
containerd's default spec (``ctrpy.oci.defaults``) it applies, in containerd's order
(``containerSpec`` and ``containerSpecOpts`` of ``container_create_linux.go``):

- no /run mount, no default rlimits, new privileges allowed unless ``no_new_privs``;
- args: the config's command, else the image's entrypoint (an entrypoint of one empty string
  counts as none), followed by the config's args, else (only when no command was given) the
  image's cmd; nothing at all is an error;
- env: PATH (the default), TERM=xterm with a tty, HOSTNAME (the pod's or the node's name),
  then the image's variables, then the config's (a config variable replaces the image's of the
  same name where it stands); working dir: the config's, else the image's, else ``/``;
- mounts, devices and the security context (:mod:`.crimounts`, :mod:`.security`,
  :mod:`.seccomp`);
- namespaces joined from the sandbox (network: the pinned netns path; ipc and uts: the pause
  process's; pid: the pause process's (POD), a new one (CONTAINER), the host's (NODE) or the
  target container's (TARGET)); a namespace in NODE mode is left out, so the host's is kept;
- resources: CPU period/quota/shares/cpuset, memory limit (and swap equal to it unless given,
  when the swap controller exists), hugepage limits (ignored when the hugetlb controller is
  missing, as containerd's default ``tolerate_missing_hugetlb_controller``), ``unified`` (only
  on cgroup v2: runc refuses it on v1), oom_score_adj clamped to 0 or above (this kernel refuses
  negative values for a process it did not start with them); cgroups path
  ``<cgroup_parent>/<id>`` (cgroupfs), or ``/<namespace>/<id>`` without a parent;
- a new cgroup namespace on cgroup v2 for unprivileged containers, as containerd;
- containerd's annotations (container type, sandbox id/name/namespace/uid, container name,
  image name). Sysctls stay the sandbox's (containerd sets them only there).

User namespaces: a container of a pod with a user namespace (:mod:`.userns`) joins the pause
process's (``/proc/<pid>/ns/user``) with the pod's mappings in the spec, as containerd; its own
``userns_options``, when given, must be the pod's (InvalidArgument otherwise).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import FailedPrecondition, InvalidArgument
from ctrpy.manager.cri import crimounts, seccomp, security, userns
from ctrpy.manager.cri.crimounts import CriMount
from ctrpy.oci import defaults
from ctrpy.oci.defaults import Spec
from ctrpy.oci.opts import replace_or_append_env

__all__ = [
    "CONTAINER_NAME",
    "HostFacts",
    "ImageInfo",
    "SandboxInfo",
    "container_args",
    "container_env",
    "container_spec",
    "host_facts",
    "kernel_at_least",
    "stop_signal",
]

CRI_NAMESPACE = "k8s.io"
HOSTNAME_ENV = "HOSTNAME"

# containerd's annotation keys (pkg/cri/annotations).
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
IMAGE_NAME = "io.kubernetes.cri.image-name"

#: The first kernel with mount_setattr(2), which runc needs for ``rro``.
MOUNT_SETATTR_KERNEL = (5, 12)


@dataclass(frozen=True)
class SandboxInfo:
    """What the sandbox manager knows about the pod a container joins.

    ``pid`` is the pause process (its ipc, uts and pid namespaces are joined through
    /proc/<pid>/ns); ``netns`` the pinned network namespace ("" with hostNetwork); ``files``
    the paths of the pod's ``hostname``, ``hosts`` and ``resolv.conf`` (as
    ``podspec.write_files`` returns them); ``shm`` the pod's /dev/shm directory.
    """

    id: str
    config: api.PodSandboxConfig
    pid: int
    netns: str = ""
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    shm: str = ""

    @property
    def cgroup_parent(self) -> str:
        return self.config.linux.cgroup_parent

    @property
    def namespace_options(self) -> api.NamespaceOption:
        return self.config.linux.security_context.namespace_options

    @property
    def privileged(self) -> bool:
        return self.config.linux.security_context.privileged


@dataclass(frozen=True)
class ImageInfo:
    """The container's image: its name (for the annotation) and its config document (the
    whole image config JSON, whose ``config`` object holds Entrypoint, Cmd, Env...)."""

    name: str
    config: Mapping[str, Any]

    @property
    def run(self) -> Mapping[str, Any]:
        run = self.config.get("config")
        return run if isinstance(run, dict) else {}

    def strings(self, key: str) -> list[str]:
        value = self.run.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"image config: {key} must be a list of strings")
        return list(value)

    def string(self, key: str) -> str:
        value = self.run.get(key)
        return value if isinstance(value, str) else ""

    @property
    def volumes(self) -> list[str]:
        value = self.run.get("Volumes")
        return sorted(value) if isinstance(value, dict) else []


@dataclass(frozen=True)
class HostFacts:
    """What the host offers that changes the spec (found once by :func:`host_facts`; tests
    pass their own)."""

    hostname: str
    cgroup_v2: bool
    hugetlb: bool
    swap: bool
    rro: bool
    capabilities: tuple[str, ...]
    dev: str = "/dev"


def kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    """Whether the running kernel (``uname -r``, or ``release``) is ``major.minor`` or newer; a
    release that does not parse counts as too old (a feature is then left unadvertised)."""
    numbers = (release if release is not None else os.uname().release).split("-", 1)[0].split(".")
    try:
        found = (int(numbers[0]), int(numbers[1]) if len(numbers) > 1 else 0)
    except ValueError:
        return False
    return found >= (major, minor)


def _runc_mount_options(runc: str) -> frozenset[str]:
    try:
        out = subprocess.run([runc, "features"], capture_output=True, timeout=30, check=False).stdout
        options = json.loads(out).get("mountOptions") or []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(o for o in options if isinstance(o, str))


@functools.lru_cache(maxsize=4)
def host_facts(runc: str = "runc") -> HostFacts:
    """This host's facts: cgroup version and controllers, recursive read-only mounts (runc
    lists ``rro`` among its mount options and the kernel has mount_setattr(2), 5.12 and newer, as
    containerd checks both), the capabilities this process holds."""
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    if v2:
        try:
            with open("/sys/fs/cgroup/cgroup.controllers", encoding="ascii") as f:
                controllers = f.read().split()
        except OSError:
            controllers = []
        hugetlb = "hugetlb" in controllers
        swap = "memory" in controllers
    else:
        hugetlb = os.path.isdir("/sys/fs/cgroup/hugetlb")
        swap = os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
    return HostFacts(
        hostname=socket.gethostname(),
        cgroup_v2=v2,
        hugetlb=hugetlb,
        swap=swap,
        rro=kernel_at_least(*MOUNT_SETATTR_KERNEL) and "rro" in _runc_mount_options(runc),
        capabilities=security.current_capabilities(),
    )


def container_args(config: api.ContainerConfig, image: ImageInfo) -> list[str]:
    """The process's argv (containerd's ``WithProcessArgs``; see the module docstring)."""
    command, args = list(config.command), list(config.args)
    if not command:
        if not args:
            args = image.strings("Cmd")
        entrypoint = image.strings("Entrypoint")
        if entrypoint != [""]:
            command = entrypoint
    argv = command + args
    if not argv:
        raise InvalidArgument("no command specified")
    return argv


def stop_signal(config: api.ContainerConfig, image: ImageInfo) -> str:
    """The signal StopContainer sends first: the config's (cri-api's ``stop_signal``), else the
    image's STOPSIGNAL, else SIGTERM. Not part of the spec; CreateContainer keeps it."""
    if config.stop_signal != api.RUNTIME_DEFAULT:
        return api.Signal.Name(config.stop_signal)
    return image.string("StopSignal") or "SIGTERM"


def _merge_env(base: list[str], overrides: list[str]) -> list[str]:
    """``base`` with each of ``overrides`` replacing the variable of the same name where it
    stands, or appended."""
    result = list(base)
    where = {entry.partition("=")[0]: i for i, entry in enumerate(result)}
    for entry in overrides:
        key = entry.partition("=")[0]
        if key in where:
            result[where[key]] = entry
        else:
            where[key] = len(result)
            result.append(entry)
    return result


def _text(value: bytes | str) -> str:
    # KeyValue.value is bytes in ctrpy's proto; environment values are text.
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def container_env(config: api.ContainerConfig, image: ImageInfo, hostname: str) -> list[str]:
    """The process's environment (see the module docstring)."""
    env = [defaults.DEFAULT_PATH_ENV]
    if config.tty:
        env.append("TERM=xterm")
    env = replace_or_append_env(env, [f"{HOSTNAME_ENV}={hostname}"])
    wanted = _merge_env(image.strings("Env"), [f"{kv.key}={_text(kv.value)}" for kv in config.envs])
    return _merge_env(env, wanted)


def _namespaces(spec: Spec, config: api.ContainerConfig, sandbox: SandboxInfo, target_pid: int | None) -> None:
    options = config.linux.security_context.namespace_options
    pod = sandbox.namespace_options
    pod_userns = userns.pod_userns(pod)
    userns.container_check(options, pod_userns)
    host_network = pod.network == api.NODE
    wanted: dict[str, str | None] = {"mount": None}
    if pod_userns is not None:
        wanted["user"] = _pause_ns(sandbox, "user")
        defaults.linux(spec).update(pod_userns.oci())
    if not host_network:
        if sandbox.netns:
            wanted["network"] = sandbox.netns
        elif sandbox.pid > 0:
            wanted["network"] = f"/proc/{sandbox.pid}/ns/net"
        else:
            raise FailedPrecondition(f"sandbox {sandbox.id!r} has no network namespace")
        wanted["uts"] = _pause_ns(sandbox, "uts")
    if pod.ipc != api.NODE:
        wanted["ipc"] = _pause_ns(sandbox, "ipc")
    if options.pid == api.CONTAINER:
        wanted["pid"] = None
    elif options.pid == api.POD:
        wanted["pid"] = _pause_ns(sandbox, "pid")
    elif options.pid == api.TARGET:
        if not options.target_id or target_pid is None or target_pid <= 0:
            raise FailedPrecondition(f"target container {options.target_id!r} of the pid namespace is not running")
        wanted["pid"] = f"/proc/{target_pid}/ns/pid"
    # The default spec's order (pid, ipc, uts, mount, network), as containerd's CRI keeps it;
    # the pod's user namespace first (the one to join first), the cgroup one appended.
    order = ("user", "pid", "ipc", "uts", "mount", "network", "cgroup")
    namespaces = []
    for kind in order:
        if kind not in wanted:
            continue
        entry: dict[str, str] = {"type": kind}
        path = wanted[kind]
        if path:
            entry["path"] = path
        namespaces.append(entry)
    defaults.linux(spec)["namespaces"] = namespaces


def _pause_ns(sandbox: SandboxInfo, kind: str) -> str:
    if sandbox.pid <= 0:
        raise FailedPrecondition(f"sandbox {sandbox.id!r} has no running pause process")
    return f"/proc/{sandbox.pid}/ns/{kind}"


def cpu_resources(resources: api.LinuxContainerResources) -> dict[str, Any]:
    """The OCI ``cpu`` resources of what ``resources`` sets (nothing for what it leaves 0)."""
    cpu: dict[str, Any] = {}
    if resources.cpu_period:
        cpu["period"] = resources.cpu_period
    if resources.cpu_quota:
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_shares:
        cpu["shares"] = resources.cpu_shares
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    return cpu


def _resources(spec: Spec, resources: api.LinuxContainerResources, facts: HostFacts) -> None:
    """containerd's ``WithResources`` and ``WithOOMScoreAdj`` (clamped)."""
    out = defaults.resources(spec)
    if cpu := cpu_resources(resources):
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if resources.memory_limit_in_bytes:
        memory["limit"] = resources.memory_limit_in_bytes
        if not resources.memory_swap_limit_in_bytes and facts.swap:
            memory["swap"] = resources.memory_limit_in_bytes
    if resources.memory_swap_limit_in_bytes and facts.swap:
        memory["swap"] = resources.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if resources.hugepage_limits and facts.hugetlb:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in resources.hugepage_limits]
    if resources.unified and facts.cgroup_v2:
        out["unified"] = dict(resources.unified)
    defaults.process(spec)["oomScoreAdj"] = max(0, min(1000, resources.oom_score_adj))


def _cgroups_path(parent: str, container_id: str, namespace: str) -> str:
    if not parent:
        return f"/{namespace}/{container_id}"
    if not parent.startswith("/"):
        parent = "/" + parent
    return os.path.join(parent, container_id)


def _annotations(spec: Spec, config: api.ContainerConfig, sandbox: SandboxInfo, image: ImageInfo) -> None:
    meta = sandbox.config.metadata
    spec["annotations"] = {
        CONTAINER_TYPE: "container",
        SANDBOX_ID: sandbox.id,
        SANDBOX_NAMESPACE: meta.namespace,
        SANDBOX_UID: meta.uid,
        SANDBOX_NAME: meta.name,
        CONTAINER_NAME: config.metadata.name,
        IMAGE_NAME: image.name,
    }


def _mounts(spec: Spec, config: api.ContainerConfig, sandbox: SandboxInfo, image: ImageInfo, rootfs: str,
            volumes_dir: str | None, facts: HostFacts) -> None:
    context = config.linux.security_context
    requested = [CriMount.from_api(m) for m in config.mounts]
    if any(m.recursive_read_only for m in requested) and not facts.rro:
        raise InvalidArgument("recursive read-only mounts are not supported by this runtime (runc needs rro)")
    host_ipc = context.namespace_options.ipc == api.NODE or sandbox.namespace_options.ipc == api.NODE
    extra = crimounts.sandbox_mounts(dict(sandbox.files), sandbox.shm, readonly_rootfs=context.readonly_rootfs,
                                     host_ipc=host_ipc)
    taken = {os.path.normpath(m.container_path) for m in (*requested, *extra)}
    volumes = crimounts.volume_mounts(image.volumes, taken, rootfs, volumes_dir) if volumes_dir else []
    crimounts.apply_mounts(spec, [*requested, *extra, *volumes])


def container_spec(
    container_id: str,
    config: api.ContainerConfig,
    sandbox: SandboxInfo,
    image: ImageInfo,
    rootfs: str,
    *,
    namespace: str = CRI_NAMESPACE,
    volumes_dir: str | None = None,
    target_pid: int | None = None,
    facts: HostFacts | None = None,
) -> Spec:
    """The OCI spec of CRI container ``container_id`` (see the module docstring).

    ``rootfs`` is the container's root filesystem, mounted (read-only is enough): users and
    groups are looked up in its /etc/passwd and /etc/group and image volumes copied from it.
    ``target_pid`` is the pid of the container named by a TARGET pid namespace option. Raises
    InvalidArgument for a config that cannot be honoured (a user namespace option other than
    the pod's among them), NotFound for an unknown user or group name or a missing seccomp
    profile, FailedPrecondition when a mount's propagation or the sandbox does not allow it.
    """
    facts = facts or host_facts()
    linux_config = config.linux
    context = linux_config.security_context
    if context.privileged and not sandbox.privileged:
        raise InvalidArgument("no privileged container allowed in sandbox")
    security.check_apparmor(context)

    # The device cgroup keeps the default spec's deny-all rule alone, as containerd's CRI
    # leaves it: runc allows the standard devices (null, zero, tty, ptmx...) itself.
    spec = defaults.default_spec(namespace, container_id)
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/run"]
    process = defaults.process(spec)
    process.pop("rlimits", None)
    process["noNewPrivileges"] = bool(context.no_new_privs)
    process["args"] = container_args(config, image)
    hostname = sandbox.config.hostname or facts.hostname
    process["env"] = container_env(config, image, hostname)
    process["cwd"] = config.working_dir or image.string("WorkingDir") or "/"
    if config.tty:
        process["terminal"] = True

    _mounts(spec, config, sandbox, image, rootfs, volumes_dir, facts)
    security.apply_paths(spec, context)
    if context.privileged:
        security.apply_privileged(spec, facts.capabilities, facts.dev)
    else:
        crimounts.apply_devices(spec, config.devices)
        if context.HasField("capabilities"):
            security.apply_capabilities(spec, context.capabilities, facts.capabilities)
    if context.readonly_rootfs:
        spec["root"]["readonly"] = True

    linux = defaults.linux(spec)
    if linux_config.HasField("resources"):
        _resources(spec, linux_config.resources, facts)
    linux["cgroupsPath"] = _cgroups_path(sandbox.cgroup_parent, container_id, namespace)
    _namespaces(spec, config, sandbox, target_pid)
    if facts.cgroup_v2 and not context.privileged:
        linux["namespaces"].append({"type": "cgroup"})
    _annotations(spec, config, sandbox, image)

    security.apply_identity(spec, context, image.string("User"), rootfs)
    profile = seccomp.security_profile(context.seccomp if context.HasField("seccomp") else None,
                                       context.seccomp_profile_path)
    caps = frozenset(process["capabilities"]["bounding"])
    chosen = seccomp.profile_for(profile, privileged=context.privileged, capabilities=caps)
    if chosen is not None:
        linux["seccomp"] = chosen
    return spec
