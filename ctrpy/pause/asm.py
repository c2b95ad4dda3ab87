"""A tiny two-section assembler: hand-encoded x86_64 and aarch64 instructions with labels.

The pause program is a few dozen instructions, so it is written as calls to one encoder per
instruction form used (``X86.lea_rip``, ``A64.adr`` ...), each producing exactly the bytes an
assembler would. References to labels (jumps, RIP- or PC-relative addresses, absolute pointers in
data) are recorded as fixups and patched by :meth:`Program.link` once both sections have their
addresses. Only the forms the pause program needs exist; each docstring names its encoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

TEXT = ".text"
RODATA = ".rodata"


@dataclass(frozen=True)
class _Fixup:
    """A hole at ``offset`` of ``section`` that ``label``'s address fills, the way ``kind`` says."""

    section: str
    offset: int
    kind: str
    label: str


@dataclass
class Program:
    """Machine code (``.text``) and read-only data (``.rodata``) with symbolic references."""

    text: bytearray = field(default_factory=bytearray)
    rodata: bytearray = field(default_factory=bytearray)
    labels: dict[str, tuple[str, int]] = field(default_factory=dict)
    fixups: list[_Fixup] = field(default_factory=list)

    def label(self, name: str) -> None:
        """Name the next instruction."""
        self._define(name, TEXT, len(self.text))

    def data(self, name: str, value: bytes, align: int = 8) -> None:
        """Append ``value`` to ``.rodata`` under ``name``, aligned to ``align`` bytes."""
        self.rodata.extend(b"\0" * (-len(self.rodata) % align))
        self._define(name, RODATA, len(self.rodata))
        self.rodata.extend(value)

    def pointer(self, label: str) -> None:
        """Append the 64-bit absolute address of ``label`` to ``.rodata``."""
        self.fixups.append(_Fixup(RODATA, len(self.rodata), "abs64", label))
        self.rodata.extend(bytes(8))

    def emit(self, code: bytes, label: str = "", kind: str = "", at: int = 0) -> None:
        """Append one instruction; with ``label``, its bytes from ``at`` on are a ``kind`` fixup."""
        if label:
            self.fixups.append(_Fixup(TEXT, len(self.text) + at, kind, label))
        self.text.extend(code)

    def _define(self, name: str, section: str, offset: int) -> None:
        if name in self.labels:
            raise ValueError(f"label {name!r} defined twice")
        self.labels[name] = (section, offset)

    def link(self, text_addr: int, rodata_addr: int) -> tuple[bytes, bytes]:
        """Patch every fixup for sections loaded at these addresses; return (text, rodata).

        Raises ValueError for an unknown label or a displacement out of its field's range.
        """
        base = {TEXT: text_addr, RODATA: rodata_addr}
        text, rodata = bytearray(self.text), bytearray(self.rodata)
        out = {TEXT: text, RODATA: rodata}
        for fix in self.fixups:
            if fix.label not in self.labels:
                raise ValueError(f"undefined label {fix.label!r}")
            section, offset = self.labels[fix.label]
            target = base[section] + offset
            place = base[fix.section] + fix.offset
            _PATCHERS[fix.kind](out[fix.section], fix.offset, target, place)
        return bytes(text), bytes(rodata)


def _check(value: int, bits: int, what: str) -> int:
    if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
        raise ValueError(f"{what} displacement {value} does not fit {bits} bits")
    return value & ((1 << bits) - 1)


def _abs64(buf: bytearray, at: int, target: int, place: int) -> None:
    struct.pack_into("<Q", buf, at, target)


def _rel8(buf: bytearray, at: int, target: int, place: int) -> None:
    # x86 rel8: relative to the end of the instruction, whose last byte this is.
    buf[at] = _check(target - (place + 1), 8, "rel8")


def _rel32(buf: bytearray, at: int, target: int, place: int) -> None:
    # x86 disp32 of [rip + disp32]: relative to the end of the instruction (no immediate follows).
    struct.pack_into("<I", buf, at, _check(target - (place + 4), 32, "rel32"))


def _a64_patch(buf: bytearray, at: int, bits: int) -> None:
    word = struct.unpack_from("<I", buf, at)[0]
    struct.pack_into("<I", buf, at, word | bits)


def _adr(buf: bytearray, at: int, target: int, place: int) -> None:
    imm = _check(target - place, 21, "adr")
    _a64_patch(buf, at, ((imm & 3) << 29) | ((imm >> 2) << 5))


def _imm19(buf: bytearray, at: int, target: int, place: int) -> None:
    _a64_patch(buf, at, _check((target - place) // 4, 19, "imm19") << 5)


def _imm26(buf: bytearray, at: int, target: int, place: int) -> None:
    _a64_patch(buf, at, _check((target - place) // 4, 26, "imm26"))


_PATCHERS = {"abs64": _abs64, "rel8": _rel8, "rel32": _rel32, "adr": _adr, "imm19": _imm19,
             "imm26": _imm26}


class X86:
    """x86_64 encoders. Registers by number: rax 0, rcx 1, rdx 2, rbx 3, rsp 4, rbp 5, rsi 6,
    rdi 7, r8-r15 8-15; a REX prefix carries the fourth bit of a register number."""

    RAX, RDX, RSI, RDI, R10 = 0, 2, 6, 7, 10
    JNZ, JG = 0x5, 0xF  # condition codes of Jcc

    def __init__(self, program: Program) -> None:
        self.p = program

    @staticmethod
    def _rex(w: bool, reg: int = 0, rm: int = 0) -> bytes:
        bits = (8 if w else 0) | (4 if reg >= 8 else 0) | (1 if rm >= 8 else 0)
        return bytes([0x40 | bits]) if bits else b""

    def mov_r32_imm32(self, reg: int, imm: int) -> None:
        """``mov r32, imm32``: [REX.B] B8+r id (zero-extends into the 64-bit register)."""
        self.p.emit(self._rex(False, rm=reg) + bytes([0xB8 | (reg & 7)]) + struct.pack("<I", imm))

    def mov_r64_simm32(self, reg: int, imm: int) -> None:
        """``mov r64, simm32``: REX.W C7 /0 id (the immediate is sign-extended)."""
        self.p.emit(self._rex(True, rm=reg) + bytes([0xC7, 0xC0 | (reg & 7)]) + struct.pack("<i", imm))

    def xor_r32(self, reg: int) -> None:
        """``xor r32, r32`` of a register with itself (zeroes all 64 bits): 31 /r."""
        self.p.emit(self._rex(False, reg, reg) + bytes([0x31, 0xC0 | (reg & 7) << 3 | (reg & 7)]))

    def lea_rip(self, reg: int, label: str) -> None:
        """``lea r64, [rip + disp32]``: REX.W 8D /r with mod 00, r/m 101."""
        code = self._rex(True, reg=reg) + bytes([0x8D, (reg & 7) << 3 | 0b101]) + bytes(4)
        self.p.emit(code, label, "rel32", len(code) - 4)

    def test_r64(self, reg: int) -> None:
        """``test r64, r64`` of a register with itself: REX.W 85 /r."""
        self.p.emit(self._rex(True, reg, reg) + bytes([0x85, 0xC0 | (reg & 7) << 3 | (reg & 7)]))

    def jcc8(self, cc: int, label: str) -> None:
        """``jcc rel8``: 70+cc cb."""
        self.p.emit(bytes([0x70 | cc, 0]), label, "rel8", 1)

    def jmp8(self, label: str) -> None:
        """``jmp rel8``: EB cb."""
        self.p.emit(bytes([0xEB, 0]), label, "rel8", 1)

    def syscall(self) -> None:
        """``syscall``: 0F 05 (number in rax; arguments rdi, rsi, rdx, r10; rcx and r11 lost)."""
        self.p.emit(b"\x0f\x05")

    def ret(self) -> None:
        """``ret``: C3."""
        self.p.emit(b"\xc3")


class A64:
    """aarch64 (A64) encoders: every instruction is one little-endian 32-bit word."""

    X0, X1, X2, X3, X4, X8, X19 = 0, 1, 2, 3, 4, 8, 19
    XZR = 31
    NE, GT = 0x1, 0xC  # condition codes of B.cond

    def __init__(self, program: Program) -> None:
        self.p = program

    def _word(self, word: int, label: str = "", kind: str = "") -> None:
        self.p.emit(struct.pack("<I", word), label, kind)

    def movz(self, rd: int, imm16: int) -> None:
        """``movz xd, #imm16``: 0xD2800000 | imm16 << 5 | rd."""
        self._word(0xD2800000 | (imm16 & 0xFFFF) << 5 | rd)

    def movn(self, rd: int, imm16: int) -> None:
        """``movn xd, #imm16`` (xd = ~imm16): 0x92800000 | imm16 << 5 | rd."""
        self._word(0x92800000 | (imm16 & 0xFFFF) << 5 | rd)

    def mov(self, rd: int, rm: int) -> None:
        """``mov xd, xm`` (an alias of ``orr xd, xzr, xm``): 0xAA0003E0 | rm << 16 | rd."""
        self._word(0xAA0003E0 | rm << 16 | rd)

    def adr(self, rd: int, label: str) -> None:
        """``adr xd, label``: 0x10000000 with the 21-bit offset split into immlo:immhi."""
        self._word(0x10000000 | rd, label, "adr")

    def cmp_zero(self, rn: int) -> None:
        """``cmp xn, #0`` (an alias of ``subs xzr, xn, #0``): 0xF100001F | rn << 5."""
        self._word(0xF100001F | rn << 5)

    def b_cond(self, cond: int, label: str) -> None:
        """``b.cond label``: 0x54000000 | imm19 << 5 | cond."""
        self._word(0x54000000 | cond, label, "imm19")

    def cbnz(self, rt: int, label: str) -> None:
        """``cbnz xt, label``: 0xB5000000 | imm19 << 5 | rt."""
        self._word(0xB5000000 | rt, label, "imm19")

    def b(self, label: str) -> None:
        """``b label``: 0x14000000 | imm26."""
        self._word(0x14000000, label, "imm26")

    def svc0(self) -> None:
        """``svc #0``: 0xD4000001 (number in x8; arguments x0-x5; result in x0)."""
        self._word(0xD4000001)

    def ret(self) -> None:
        """``ret`` (to x30): 0xD65F03C0."""
        self._word(0xD65F03C0)
