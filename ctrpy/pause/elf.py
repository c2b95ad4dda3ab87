"""The pause program: a static ELF64 executable emitted byte by byte, for x86_64 and aarch64.

A pod's sandbox container runs it as PID 1 to hold the pod's namespaces. It does what
Kubernetes' ``pause`` does, with no C library and no compiler:

* SIGINT and SIGTERM: write ``pause: shutting down`` to stderr and exit 0;
* SIGCHLD (with SA_NOCLDSTOP): reap every child that has exited, ``wait4(-1, NULL, WNOHANG, NULL)``
  until it answers 0 or an error, so orphans that the kernel reparents to PID 1 of the pod's PID
  namespace never stay zombies;
* SIGHUP is ignored (SIG_IGN), so it behaves the same on a terminal and as PID 1 (where the kernel
  drops a signal that has no handler anyway); every other signal keeps its default action;
* otherwise it sleeps until a signal arrives, forever (``pause()``; aarch64 has no pause system
  call, so ``ppoll(NULL, 0, NULL, NULL, 0)``, which is what a C library does there).

If a handler cannot be installed it exits with that signal's number as its status. It ignores
its arguments and its environment.

Handlers are installed with ``rt_sigaction`` and SA_RESTORER, pointing the restorer at two
instructions that call ``rt_sigreturn``: x86_64 requires a restorer (the kernel pushes its
address as the handler's return address), and on aarch64 it spares the kernel's vDSO trampoline.

The file: an ELF header, two program headers (one read+execute PT_LOAD mapping the whole file at
0x400000; PT_GNU_STACK asking for a non-executable stack), ``.text``, ``.rodata`` (the three
``struct sigaction`` values and the message), ``.shstrtab`` and section headers, so that
``objdump -d`` disassembles ``.text``. About 800 bytes either way (under 1 KiB, tested).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ctrpy.pause.asm import A64, X86, Program

# Signals and flags: the same numbers on x86_64 and aarch64 (asm-generic).
SIGHUP = 1
SIGINT = 2
SIGTERM = 15
SIGCHLD = 17
SIG_IGN = 1
SA_NOCLDSTOP = 0x00000001
SA_RESTORER = 0x04000000
WNOHANG = 1
SIGSET_SIZE = 8  # bytes in the kernel's sigset_t: 64 signals

MESSAGE = b"pause: shutting down\n"

# Linux system call numbers, x86_64 (arch/x86/entry/syscalls/syscall_64.tbl).
X86_64_WRITE = 1
X86_64_RT_SIGACTION = 13
X86_64_RT_SIGRETURN = 15
X86_64_PAUSE = 34
X86_64_WAIT4 = 61
X86_64_EXIT_GROUP = 231

# Linux system call numbers, aarch64 (include/uapi/asm-generic/unistd.h).
AARCH64_WRITE = 64
AARCH64_PPOLL = 73
AARCH64_EXIT_GROUP = 94
AARCH64_RT_SIGACTION = 134
AARCH64_RT_SIGRETURN = 139
AARCH64_WAIT4 = 260

# ELF constants (the System V gABI and the psABIs).
EM_X86_64 = 62
EM_AARCH64 = 183
ET_EXEC = 2
PT_LOAD = 1
PT_GNU_STACK = 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4
SHT_PROGBITS = 1
SHT_STRTAB = 3
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

BASE_ADDRESS = 0x400000
EHDR_SIZE = 64
PHDR_SIZE = 56
SHDR_SIZE = 64


def _sigaction(p: Program, name: str, handler: str | int, flags: int) -> None:
    """The kernel's ``struct sigaction`` (x86_64 and aarch64 alike): handler, flags, restorer,
    mask, 8 bytes each. ``handler`` is a label or a constant such as SIG_IGN."""
    p.data(name, b"")
    if isinstance(handler, str):
        p.pointer(handler)
    else:
        p.rodata.extend(struct.pack("<Q", handler))
    p.rodata.extend(struct.pack("<Q", flags))
    if flags & SA_RESTORER:
        p.pointer("restorer")
    else:
        p.rodata.extend(bytes(8))
    p.rodata.extend(bytes(SIGSET_SIZE))  # sa_mask: block nothing more while handling


def _data(p: Program) -> None:
    _sigaction(p, "act_down", "down", SA_RESTORER)
    _sigaction(p, "act_reap", "reap", SA_RESTORER | SA_NOCLDSTOP)
    _sigaction(p, "act_ignore", SIG_IGN, 0)
    p.data("message", MESSAGE, align=1)


# The handlers to install, in order: signal, the action's label.
_ACTIONS = ((SIGINT, "act_down"), (SIGTERM, "act_down"), (SIGCHLD, "act_reap"), (SIGHUP, "act_ignore"))


def x86_64_program() -> Program:
    """The pause program for x86_64."""
    p = Program()
    x = X86(p)
    p.label("_start")
    for signal, action in _ACTIONS:
        x.mov_r32_imm32(X86.RDI, signal)               # mov edi, signal
        x.lea_rip(X86.RSI, action)                     # lea rsi, [rip+action]  ; new action
        x.xor_r32(X86.RDX)                             # xor edx, edx           ; old action: NULL
        x.mov_r32_imm32(X86.R10, SIGSET_SIZE)          # mov r10d, 8            ; sigsetsize
        x.mov_r32_imm32(X86.RAX, X86_64_RT_SIGACTION)  # mov eax, rt_sigaction
        x.syscall()                                    # syscall
        x.test_r64(X86.RAX)                            # test rax, rax
        x.jcc8(X86.JNZ, "fail")                        # jnz fail               ; edi still = signal
    p.label("sleep")
    x.mov_r32_imm32(X86.RAX, X86_64_PAUSE)             # mov eax, pause
    x.syscall()                                        # syscall                ; returns on a signal
    x.jmp8("sleep")                                    # jmp sleep
    p.label("fail")
    x.mov_r32_imm32(X86.RAX, X86_64_EXIT_GROUP)        # mov eax, exit_group    ; status = signal
    x.syscall()                                        # syscall

    p.label("down")                                    # SIGINT, SIGTERM handler
    x.mov_r32_imm32(X86.RDI, 2)                        # mov edi, 2             ; stderr
    x.lea_rip(X86.RSI, "message")                      # lea rsi, [rip+message]
    x.mov_r32_imm32(X86.RDX, len(MESSAGE))             # mov edx, len(message)
    x.mov_r32_imm32(X86.RAX, X86_64_WRITE)             # mov eax, write
    x.syscall()                                        # syscall
    x.xor_r32(X86.RDI)                                 # xor edi, edi           ; status 0
    x.mov_r32_imm32(X86.RAX, X86_64_EXIT_GROUP)        # mov eax, exit_group
    x.syscall()                                        # syscall

    p.label("reap")                                    # SIGCHLD handler
    x.mov_r64_simm32(X86.RDI, -1)                      # mov rdi, -1            ; any child
    x.xor_r32(X86.RSI)                                 # xor esi, esi           ; status: NULL
    x.mov_r32_imm32(X86.RDX, WNOHANG)                  # mov edx, WNOHANG
    x.xor_r32(X86.R10)                                 # xor r10d, r10d         ; rusage: NULL
    x.mov_r32_imm32(X86.RAX, X86_64_WAIT4)             # mov eax, wait4
    x.syscall()                                        # syscall
    x.test_r64(X86.RAX)                                # test rax, rax
    x.jcc8(X86.JG, "reap")                             # jg reap                ; reaped one: again
    x.ret()                                            # ret                    ; to the restorer

    p.label("restorer")
    x.mov_r32_imm32(X86.RAX, X86_64_RT_SIGRETURN)      # mov eax, rt_sigreturn
    x.syscall()                                        # syscall
    _data(p)
    return p


def aarch64_program() -> Program:
    """The pause program for aarch64."""
    p = Program()
    a = A64(p)
    p.label("_start")
    for signal, action in _ACTIONS:
        a.movz(A64.X19, signal)                        # movz x19, #signal      ; kept for fail
        a.mov(A64.X0, A64.X19)                         # mov x0, x19
        a.adr(A64.X1, action)                          # adr x1, action         ; new action
        a.movz(A64.X2, 0)                              # movz x2, #0            ; old action: NULL
        a.movz(A64.X3, SIGSET_SIZE)                    # movz x3, #8            ; sigsetsize
        a.movz(A64.X8, AARCH64_RT_SIGACTION)           # movz x8, #rt_sigaction
        a.svc0()                                       # svc #0
        a.cbnz(A64.X0, "fail")                         # cbnz x0, fail
    p.label("sleep")
    a.movz(A64.X0, 0)                                  # movz x0, #0            ; fds: NULL
    a.movz(A64.X1, 0)                                  # movz x1, #0            ; nfds: 0
    a.movz(A64.X2, 0)                                  # movz x2, #0            ; timeout: NULL
    a.movz(A64.X3, 0)                                  # movz x3, #0            ; sigmask: NULL
    a.movz(A64.X4, 0)                                  # movz x4, #0            ; sigsetsize
    a.movz(A64.X8, AARCH64_PPOLL)                      # movz x8, #ppoll
    a.svc0()                                           # svc #0                 ; returns on a signal
    a.b("sleep")                                       # b sleep
    p.label("fail")
    a.mov(A64.X0, A64.X19)                             # mov x0, x19            ; status = signal
    a.movz(A64.X8, AARCH64_EXIT_GROUP)                 # movz x8, #exit_group
    a.svc0()                                           # svc #0

    p.label("down")                                    # SIGINT, SIGTERM handler
    a.movz(A64.X0, 2)                                  # movz x0, #2            ; stderr
    a.adr(A64.X1, "message")                           # adr x1, message
    a.movz(A64.X2, len(MESSAGE))                       # movz x2, #len(message)
    a.movz(A64.X8, AARCH64_WRITE)                      # movz x8, #write
    a.svc0()                                           # svc #0
    a.movz(A64.X0, 0)                                  # movz x0, #0            ; status 0
    a.movz(A64.X8, AARCH64_EXIT_GROUP)                 # movz x8, #exit_group
    a.svc0()                                           # svc #0

    p.label("reap")                                    # SIGCHLD handler
    a.movn(A64.X0, 0)                                  # movn x0, #0            ; -1: any child
    a.movz(A64.X1, 0)                                  # movz x1, #0            ; status: NULL
    a.movz(A64.X2, WNOHANG)                            # movz x2, #WNOHANG
    a.movz(A64.X3, 0)                                  # movz x3, #0            ; rusage: NULL
    a.movz(A64.X8, AARCH64_WAIT4)                      # movz x8, #wait4
    a.svc0()                                           # svc #0
    a.cmp_zero(A64.X0)                                 # cmp x0, #0
    a.b_cond(A64.GT, "reap")                           # b.gt reap              ; reaped one: again
    a.ret()                                            # ret                    ; to the restorer

    p.label("restorer")
    a.movz(A64.X8, AARCH64_RT_SIGRETURN)               # movz x8, #rt_sigreturn
    a.svc0()                                           # svc #0
    _data(p)
    return p


@dataclass(frozen=True)
class Target:
    """One architecture: the OCI name, the ELF machine, the program, the segment alignment."""

    oci_arch: str
    machine: int
    program: Callable[[], Program]
    page_align: int
    uname: str


TARGETS = {
    "amd64": Target("amd64", EM_X86_64, x86_64_program, 0x1000, "x86_64"),
    "arm64": Target("arm64", EM_AARCH64, aarch64_program, 0x10000, "aarch64"),
}


def host_arch() -> str:
    """The host's architecture in OCI spelling if the pause program exists for it, else ValueError."""
    machine = os.uname().machine
    for name, target in TARGETS.items():
        if target.uname == machine:
            return name
    raise ValueError(f"no pause program for the {machine} architecture (have: {', '.join(TARGETS)})")


def _align(value: int, to: int) -> int:
    return value + (-value % to)


def pause_executable(arch: str | None = None) -> bytes:
    """The pause executable for ``arch`` (OCI spelling: amd64, arm64; default the host's).

    The bytes are a pure function of ``arch``. Raises ValueError for another architecture.
    """
    name = arch or host_arch()
    if name not in TARGETS:
        raise ValueError(f"no pause program for the {name} architecture (have: {', '.join(TARGETS)})")
    target = TARGETS[name]
    program = target.program()
    text_off = EHDR_SIZE + 2 * PHDR_SIZE
    rodata_off = _align(text_off + len(program.text), 8)
    text, rodata = program.link(BASE_ADDRESS + text_off, BASE_ADDRESS + rodata_off)
    names = b"\0.text\0.rodata\0.shstrtab\0"
    strtab_off = rodata_off + len(rodata)
    shdr_off = _align(strtab_off + len(names), 8)
    loaded = strtab_off  # the segment maps headers, code and data; not the section tables

    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1, System V
    entry = BASE_ADDRESS + text_off + program.labels["_start"][1]
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", ET_EXEC, target.machine, 1, entry, EHDR_SIZE, shdr_off,
                               0, EHDR_SIZE, PHDR_SIZE, 2, SHDR_SIZE, 4, 3)
    load = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_X, 0, BASE_ADDRESS, BASE_ADDRESS, loaded, loaded,
                       target.page_align)
    stack = struct.pack("<IIQQQQQQ", PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 0, 16)

    def section(name: bytes, kind: int, flags: int, offset: int, size: int, align: int) -> bytes:
        addr = BASE_ADDRESS + offset if flags & SHF_ALLOC else 0
        return struct.pack("<IIQQQQIIQQ", names.index(name + b"\0"), kind, flags, addr, offset, size, 0, 0,
                           align, 0)

    shdrs = (bytes(SHDR_SIZE)
             + section(b".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, text_off, len(text), 4)
             + section(b".rodata", SHT_PROGBITS, SHF_ALLOC, rodata_off, len(rodata), 8)
             + section(b".shstrtab", SHT_STRTAB, 0, strtab_off, len(names), 1))
    out = bytearray(ehdr + load + stack + text)
    out.extend(bytes(rodata_off - len(out)))
    out.extend(rodata + names)
    out.extend(bytes(shdr_off - len(out)))
    out.extend(shdrs)
    return bytes(out)
