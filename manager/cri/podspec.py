"""The pause container's OCI spec and the pod's own files, as containerd's CRI plugin makes them.

containerd (``sandboxContainerSpec``, ``setupSandboxFiles``) starts from the default spec,
without its rlimits and with its root filesystem read-only, the device cgroup left at its
deny-all rule (runc allows the standard devices itself), and:
runs the image's entrypoint/cmd with its env and working dir as the image's user (the pause
image says 65535) unless the pod's security context names one; leaves out ``/run``; joins the
pinned network namespace, or none of network and UTS for hostNetwork, and drops the PID and IPC
namespaces for hostPID/hostIPC; sets the hostname; applies sysctls; puts the cgroup under the
pod's cgroup parent; gives the pause process 2 CPU shares and the sandbox OOM score; and binds
the pod's ``/dev/shm`` and ``/etc/resolv.conf`` into it. Two differences, both forced by this
machine's kernel or chosen on purpose: the OOM score is clamped to 0 or above (the kernel
refuses negatives here), and the hostname and hosts files are bound into the pause container too
(harmless; they let a test read what the pod will see).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import InvalidArgument
from ctrpy.oci import defaults
from ctrpy.oci.defaults import Spec

__all__ = [
    "DEFAULT_SHM_SIZE",
    "SANDBOX_CPU_SHARES",
    "SANDBOX_OOM_SCORE_ADJ",
    "hostname_of",
    "hosts_content",
    "resolv_content",
    "sandbox_spec",
    "spec_annotations",
    "write_files",
]

SANDBOX_CPU_SHARES = 2
#: containerd's DefaultSandboxOOMAdj is -998; this kernel refuses negative values.
SANDBOX_OOM_SCORE_ADJ = 0
DEFAULT_SHM_SIZE = 64 * 1024 * 1024
HOST_RESOLV_CONF = "/etc/resolv.conf"
HOST_HOSTS = "/etc/hosts"

# containerd's annotation keys (pkg/cri/annotations).
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
SANDBOX_IMAGE_NAME = "io.kubernetes.cri.image-name"
ANNOTATION_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period"
ANNOTATION_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota"
ANNOTATION_CPU_SHARES = "io.kubernetes.cri.sandbox-cpu-shares"
ANNOTATION_MEMORY = "io.kubernetes.cri.sandbox-memory"


def hostname_of(config: api.PodSandboxConfig) -> str:
    """The pod's hostname: the config's, else the node's (as containerd)."""
    return config.hostname or socket.gethostname()


def resolv_content(dns: api.DNSConfig | None) -> bytes | None:
    """resolv.conf from the pod's DNSConfig, or None to copy the host's (no servers, searches
    or options given)."""
    if dns is None or not (dns.servers or dns.searches or dns.options):
        return None
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines.extend(f"nameserver {server}" for server in dns.servers)
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return ("\n".join(lines) + "\n").encode()


def hosts_content() -> bytes:
    """The pod's /etc/hosts: the host's, as containerd 1.6 copies it (the kubelet manages the
    pods' own hosts files)."""
    try:
        with open(HOST_HOSTS, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


#: The pod's own files, mounted into each of its containers.
FILE_NAMES = ("hostname", "hosts", "resolv.conf")


def file_paths(directory: str) -> dict[str, str]:
    """Where :func:`write_files` puts the pod's files (known before they are written)."""
    return {name: os.path.join(directory, name) for name in FILE_NAMES}


def write_files(directory: str, config: api.PodSandboxConfig) -> dict[str, str]:
    """Write hostname, hosts and resolv.conf of the pod into ``directory``; return their paths."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    dns = config.dns_config if config.HasField("dns_config") else None
    resolv = resolv_content(dns)
    if resolv is None:
        try:
            with open(HOST_RESOLV_CONF, "rb") as f:
                resolv = f.read()
        except FileNotFoundError:
            resolv = b""
    files = {
        "hostname": (hostname_of(config) + "\n").encode(),
        "hosts": hosts_content(),
        "resolv.conf": resolv,
    }
    paths = {}
    for name, content in files.items():
        path = os.path.join(directory, name)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        paths[name] = path
    return paths


def spec_annotations(sandbox_id: str, config: api.PodSandboxConfig, image: str) -> dict[str, str]:
    """The spec's annotations: the pod's own, then containerd's sandbox keys."""
    found = dict(config.annotations)
    meta = config.metadata
    found.update({
        CONTAINER_TYPE: "sandbox",
        SANDBOX_ID: sandbox_id,
        SANDBOX_NAME: meta.name,
        SANDBOX_NAMESPACE: meta.namespace,
        SANDBOX_UID: meta.uid,
        SANDBOX_LOG_DIR: config.log_directory,
        SANDBOX_IMAGE_NAME: image,
    })  # fmt: skip
    if config.linux.HasField("resources"):
        # containerd 1.7+: the pod's resources travel as annotations (the kubelet sizes the
        # pod's cgroup, the cgroup parent, itself).
        res = config.linux.resources
        found.update({
            ANNOTATION_CPU_PERIOD: str(res.cpu_period), ANNOTATION_CPU_QUOTA: str(res.cpu_quota),
            ANNOTATION_CPU_SHARES: str(res.cpu_shares), ANNOTATION_MEMORY: str(res.memory_limit_in_bytes),
        })  # fmt: skip
    return found


def _user(config: api.PodSandboxConfig, image_user: str) -> dict[str, Any]:
    """The pause process's user: the security context's run-as ids, else the image's numeric
    USER (the pause image: 65535:65535), else root."""
    context = config.linux.security_context
    uid: int | None = context.run_as_user.value if context.HasField("run_as_user") else None
    gid: int | None = context.run_as_group.value if context.HasField("run_as_group") else None
    if uid is None and image_user:
        name, _, group = image_user.partition(":")
        if name.isdigit():
            uid = int(name)
            if gid is None and group.isdigit():
                gid = int(group)
    user: dict[str, Any] = {"uid": uid or 0, "gid": gid or 0}
    if context.supplemental_groups:
        user["additionalGids"] = [int(g) for g in context.supplemental_groups]
    return user


def _cgroups_path(parent: str, sandbox_id: str, namespace: str) -> str:
    if not parent:
        return f"/{namespace}/{sandbox_id}"
    if not parent.startswith("/"):
        parent = "/" + parent
    return os.path.join(parent, sandbox_id)


def sandbox_spec(
    sandbox_id: str,
    config: api.PodSandboxConfig,
    image_config: Mapping[str, Any],
    *,
    namespace: str,
    image: str,
    netns: str,
    files: Mapping[str, str],
    shm: str,
    userns: Mapping[str, Any] | None = None,
) -> Spec:
    """The OCI spec of the pause container (see the module docstring). ``userns``: the
    ``linux`` mapping keys of the pod's new user namespace (``userns.PodUserns.oci``), if any."""
    run = image_config.get("config") if isinstance(image_config.get("config"), dict) else {}
    assert isinstance(run, dict)
    args = [*(run.get("Entrypoint") or []), *(run.get("Cmd") or [])]
    if not args:
        raise InvalidArgument(f"sandbox image {image!r} has neither entrypoint nor cmd")
    spec = defaults.default_spec(namespace, sandbox_id)
    spec["root"]["readonly"] = True
    process = defaults.process(spec)
    process.pop("rlimits", None)
    process["args"] = [str(a) for a in args]
    process["env"] = [str(e) for e in (run.get("Env") or [defaults.DEFAULT_PATH_ENV])]
    process["cwd"] = run.get("WorkingDir") or "/"
    process["user"] = _user(config, str(run.get("User") or ""))
    process["oomScoreAdj"] = SANDBOX_OOM_SCORE_ADJ
    spec["hostname"] = hostname_of(config)

    linux = defaults.linux(spec)
    options = config.linux.security_context.namespace_options
    host_network = options.network == api.NODE
    dropped = set()
    if host_network:
        dropped |= {"network", "uts"}
    if options.pid == api.NODE:
        dropped.add("pid")
    if options.ipc == api.NODE:
        dropped.add("ipc")
    namespaces = [n for n in linux["namespaces"] if n["type"] not in dropped]
    for entry in namespaces:
        if entry["type"] == "network" and netns:
            entry["path"] = netns
    if userns is not None:
        namespaces.append({"type": "user"})
        linux.update(userns)
    linux["namespaces"] = namespaces
    if host_network:
        spec.pop("hostname", None)
    linux["cgroupsPath"] = _cgroups_path(config.linux.cgroup_parent, sandbox_id, namespace)
    if config.linux.sysctls:
        linux["sysctl"] = dict(config.linux.sysctls)
    resources = defaults.resources(spec)
    resources["cpu"] = {"shares": SANDBOX_CPU_SHARES}

    mounts = [m for m in spec["mounts"] if m["destination"] not in ("/run", "/dev/shm")]
    shm_source = "/dev/shm" if options.ipc == api.NODE else shm
    mounts.append({"destination": "/dev/shm", "type": "bind", "source": shm_source,
                   "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
    for name, destination in (("resolv.conf", "/etc/resolv.conf"), ("hostname", "/etc/hostname"),
                              ("hosts", "/etc/hosts")):
        if name in files:
            mounts.append({"destination": destination, "type": "bind", "source": files[name],
                           "options": ["rbind", "ro"]})
    spec["mounts"] = mounts

    context = config.linux.security_context
    if context.privileged:
        # containerd: a privileged sandbox has every capability and no masked paths.
        capabilities = current_capabilities()
        process["capabilities"] = {k: list(capabilities) for k in ("bounding", "effective", "permitted")}
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
    spec["annotations"] = spec_annotations(sandbox_id, config, image)
    return spec


# Capability names by number (<linux/capability.h>).
_CAP_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)  # fmt: skip


def current_capabilities() -> list[str]:
    """The capabilities in ctrpyd's own bounding set, as containerd's privileged option takes
    them (``cap.Current()``): a privileged pod gets what the runtime has, never more, or runc
    fails to apply them."""
    mask = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                mask = int(line.split()[1], 16)
    return [f"CAP_{name}" for bit, name in enumerate(_CAP_NAMES) if mask >> bit & 1]
