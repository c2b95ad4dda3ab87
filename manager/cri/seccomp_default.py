"""The RuntimeDefault seccomp profile: an allowlist, built the way containerd builds its own.

Everything not listed fails with EPERM (``defaultAction: SCMP_ACT_ERRNO``). What is listed:

- :data:`_BASE`: the syscalls an ordinary program needs (files, memory, processes, signals,
  sockets, time, IPC...), the same set as containerd 1.6's default profile;
- ``personality`` only with the values a program may ask for harmlessly (Linux, Linux32, their
  UNAME26 forms, and the query ``0xffffffff``);
- ``ptrace`` on kernels from 4.8 on (before 4.8 a ptrace could bypass seccomp);
- :data:`_BY_ARCH`: the machine's own extra calls (``arch_prctl`` on x86-64, ``set_tls`` on
  ARM, ...);
- :data:`_BY_CAPABILITY`: calls that only make sense with a capability, allowed when the
  container's bounding set holds it (``mount``/``unshare``/``setns``/``sethostname`` with
  ``CAP_SYS_ADMIN``, ``chroot`` with ``CAP_SYS_CHROOT``, ...);
- without ``CAP_SYS_ADMIN``: ``clone`` only when none of the namespace flags is set (seccomp can
  compare the flags argument, index 1 on s390 where the first two arguments are swapped), and
  ``clone3`` fails with ENOSYS instead of EPERM, so that libc falls back to ``clone``, whose
  flags can be checked (``clone3`` takes them in a struct seccomp cannot read).

Why an allowlist: a syscall added to the kernel after this list was written is refused until it
is reviewed and listed, which is what containerd and Docker do; a denylist would let it through.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ENOSYS", "build"]

ENOSYS = 38

# The namespace flags of clone(2): NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

#: Allowed to every container, grouped by what they are for (one string per group, split on
#: whitespace; 32-bit and time64 variants next to their plain forms).
_BASE_GROUPS: tuple[str, ...] = (
    # files and directories
    """access faccessat faccessat2 chdir fchdir getcwd chmod fchmod fchmodat chown chown32 fchown fchown32
    fchownat lchown lchown32 creat open openat openat2 close close_range dup dup2 dup3 fcntl fcntl64 flock
    link linkat symlink symlinkat unlink unlinkat rename renameat renameat2 mkdir mkdirat rmdir mknod mknodat
    readlink readlinkat getdents getdents64 stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx
    statfs statfs64 fstatfs fstatfs64 truncate truncate64 ftruncate ftruncate64 fallocate fadvise64
    fadvise64_64 readahead umask utime utimes utimensat utimensat_time64 futimesat sync syncfs fsync
    fdatasync sync_file_range copy_file_range sendfile sendfile64 splice tee vmsplice""",
    # reading and writing
    """read readv pread64 preadv preadv2 write writev pwrite64 pwritev pwritev2 lseek _llseek ioctl""",
    # extended attributes
    """getxattr lgetxattr fgetxattr setxattr lsetxattr fsetxattr listxattr llistxattr flistxattr
    removexattr lremovexattr fremovexattr""",
    # waiting on file descriptors, events, notifications
    """select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64 epoll_create epoll_create1
    epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd
    signalfd4 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
    inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark pipe pipe2""",
    # asynchronous I/O
    """io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
    io_uring_setup io_uring_enter io_uring_register""",
    # memory
    """brk mmap mmap2 munmap mremap mprotect madvise mincore msync mlock mlock2 mlockall munlock munlockall
    memfd_create memfd_secret membarrier remap_file_pages pkey_alloc pkey_free pkey_mprotect""",
    # processes and threads
    """execve execveat fork vfork exit exit_group wait4 waitid waitpid kill tkill tgkill getpid getppid
    gettid getpgid getpgrp setpgid getsid setsid set_tid_address set_robust_list get_robust_list
    set_thread_area get_thread_area futex futex_time64 futex_waitv rseq restart_syscall prctl seccomp
    capget capset pidfd_open pidfd_send_signal process_mrelease""",
    # identities
    """getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid getresuid32 getresgid
    getresgid32 getgroups getgroups32 setuid setuid32 setgid setgid32 setreuid setreuid32 setregid
    setregid32 setresuid setresuid32 setresgid setresgid32 setfsuid setfsuid32 setfsgid setfsgid32
    setgroups setgroups32""",
    # scheduling, priorities and limits
    """sched_yield sched_getaffinity sched_setaffinity sched_getattr sched_setattr sched_getparam
    sched_setparam sched_getscheduler sched_setscheduler sched_get_priority_max sched_get_priority_min
    sched_rr_get_interval sched_rr_get_interval_time64 getpriority setpriority ioprio_get ioprio_set
    getrlimit setrlimit ugetrlimit prlimit64 getrusage times getcpu""",
    # signals
    """rt_sigaction rt_sigprocmask rt_sigpending rt_sigsuspend rt_sigreturn rt_sigqueueinfo
    rt_tgsigqueueinfo rt_sigtimedwait rt_sigtimedwait_time64 sigaltstack sigprocmask sigreturn pause""",
    # time and timers
    """time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64 clock_nanosleep
    clock_nanosleep_time64 nanosleep adjtimex clock_adjtime clock_adjtime64 alarm getitimer setitimer
    timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
    timer_settime64""",
    # sockets
    """socket socketpair socketcall bind connect listen accept accept4 getsockname getpeername getsockopt
    setsockopt send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64 shutdown""",
    # System V and POSIX IPC
    """ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl shmget shmat shmdt
    shmctl mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive mq_timedreceive_time64
    mq_notify mq_getsetattr""",
    # the system, read only; sandboxing a process further
    """uname sysinfo getrandom landlock_create_ruleset landlock_add_rule landlock_restrict_self""",
)

_BASE: frozenset[str] = frozenset(name for group in _BASE_GROUPS for name in group.split())

#: personality(2) values allowed: PER_LINUX, PER_LINUX32, their UNAME26 forms, and the query.
_PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

#: Extra calls of each machine (Python's ``platform.machine()`` spelling).
_BY_ARCH: Mapping[str, tuple[str, ...]] = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "i686": ("modify_ldt",),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
                "set_tls"),
    "armv7l": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
               "set_tls"),
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache",),
}  # fmt: skip

#: The seccomp architectures each machine's filter covers (its native one and its compat ones).
_ARCHITECTURES: Mapping[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
    "s390x": ("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
    "mips64": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"),
}

#: Calls allowed when the bounding set holds the capability.
_BY_CAPABILITY: Mapping[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
        "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_tree", "perf_event_open", "quotactl",
        "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
    ),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}  # fmt: skip


def _kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    """Whether the running kernel (or ``release``, as ``uname -r`` prints it) is ``major.minor`` or later."""
    text = release if release is not None else os.uname().release
    parts: list[int] = []
    for piece in text.split(".")[:2]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return (parts[0], parts[1]) >= (major, minor)


def _allow(names: Iterable[str]) -> dict[str, Any]:
    return {"names": sorted(set(names)), "action": "SCMP_ACT_ALLOW"}


def build(capabilities: Iterable[str], machine: str | None = None, kernel: str | None = None) -> dict[str, Any]:
    """The profile (the spec's ``linux.seccomp``) for a container whose bounding set is
    ``capabilities``, on ``machine`` (default: this one) and ``kernel`` release (default: this one)."""
    machine = machine or platform.machine()
    held = set(capabilities)
    rules: list[dict[str, Any]] = [_allow(_BASE)]
    for value in _PERSONALITIES:
        rule = _allow(["personality"])
        rule["args"] = [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]
        rules.append(rule)
    if _kernel_at_least(4, 8, kernel):
        rules.append(_allow(["ptrace"]))
    if machine in _BY_ARCH:
        rules.append(_allow(_BY_ARCH[machine]))
    for capability, names in _BY_CAPABILITY.items():
        if capability in held:
            rules.append(_allow(names))
    if "CAP_SYS_ADMIN" not in held:
        # s390's clone takes the stack first and the flags second.
        index = 1 if machine.startswith("s390") else 0
        rule = _allow(["clone"])
        rule["args"] = [{"index": index, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
        rules.append(rule)
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ERRNO"}
    architectures = _ARCHITECTURES.get(machine)
    if architectures:
        profile["architectures"] = list(architectures)
    profile["syscalls"] = rules
    return profile
