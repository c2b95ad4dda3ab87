"""The pause executable on the host: its bytes (objdump), and its behaviour in a child process.

amd64 runs natively here; arm64 runs under qemu-user when ``qemu-aarch64`` is installed (skipped
otherwise), which emulates the signal frames, so the restorer and handlers are exercised too.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.pause.__main__ import main as pause_main
from ctrpy.pause.elf import (
    EM_AARCH64,
    EM_X86_64,
    MESSAGE,
    SIGCHLD,
    SIGHUP,
    SIGINT,
    SIGTERM,
    TARGETS,
    pause_executable,
)
from tests.pause.procs import children, current_syscall, signal_set, stat_fields
from tests.support.polling import wait_until

ARCHES = sorted(TARGETS)
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "")
QEMU = {"amd64": "qemu-x86_64", "arm64": "qemu-aarch64"}
# The host's ppoll system call, which qemu-user sleeps in while the guest waits for a signal.
HOST_PPOLL = {"x86_64": 271, "aarch64": 73}.get(os.uname().machine, -1)
OBJDUMP = {"amd64": ("objdump", "x86-64"), "arm64": ("aarch64-linux-gnu-objdump", "littleaarch64")}


def runner(arch: str) -> list[str]:
    """The argv prefix that runs an ``arch`` executable here: nothing, qemu-user, or a skip."""
    if arch == HOST_ARCH:
        return []
    qemu = shutil.which(QEMU[arch])
    if qemu is None:
        pytest.skip(f"{QEMU[arch]} (Debian's qemu-user) is needed to run the {arch} program here")
    return [qemu]


@pytest.fixture(params=ARCHES)
def program(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """(arch, path) of the pause executable written by ``python -m ctrpy.pause --binary``."""
    arch: str = request.param
    path = tmp_path / f"pause-{arch}"
    assert pause_main(["--binary", "--arch", arch, str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o755
    return arch, path


class Pause:
    """A pause process started directly, or as PID 1 of a new PID namespace (``unshare``)."""

    def __init__(self, arch: str, path: Path, as_pid1: bool = False) -> None:
        self.emulated = arch != HOST_ARCH
        prefix = ["unshare", "--pid", "--fork", "--kill-child"] if as_pid1 else []
        self.proc = subprocess.Popen([*prefix, *runner(arch), str(path)], stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        if as_pid1:
            found = wait_until(lambda: list(children(self.proc.pid)), "unshare's child")
            self.pid = found[0]
        self._ready()

    def _ready(self) -> None:
        """Wait until the handlers are set, so that a signal meets its handler.

        Natively: /proc shows them caught. Under qemu (which catches every signal itself), once
        the guest sleeps: its last step, after the four rt_sigaction calls.
        """
        if not self.emulated:
            wait_until(lambda: {SIGINT, SIGTERM, SIGCHLD} <= signal_set(self.pid, "SigCgt"), "handlers")
            return
        wait_until(lambda: current_syscall(self.pid) == HOST_PPOLL, "the emulated pause to sleep")

    def wait(self, timeout: float = 30.0) -> tuple[int, bytes]:
        """The exit status and what remains of stderr."""
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        return self.proc.wait(timeout), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def started() -> Iterator[list[Pause]]:
    """Pause processes the test starts; all killed at the end."""
    running: list[Pause] = []
    try:
        yield running
    finally:
        for pause in running:
            pause.kill()


def test_tiny_static_and_deterministic() -> None:
    for arch, machine in (("amd64", EM_X86_64), ("arm64", EM_AARCH64)):
        data = pause_executable(arch)
        assert len(data) < 1024, len(data)
        assert data == pause_executable(arch)
        assert data[:4] == b"\x7fELF" and data[4:6] == b"\x02\x01"  # ELF64, little-endian
        e_type, e_machine = struct.unpack_from("<HH", data, 16)
        assert (e_type, e_machine) == (2, machine)  # ET_EXEC: static, no interpreter
        assert b"/lib" not in data  # no PT_INTERP path
    with pytest.raises(ValueError, match="no pause program"):
        pause_executable("s390x")


@pytest.mark.parametrize("arch", ARCHES)
def test_objdump_decodes_every_byte_of_text(arch: str, tmp_path: Path) -> None:
    tool, flavour = OBJDUMP[arch]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (binutils) is not installed")
    path = tmp_path / "pause"
    path.write_bytes(pause_executable(arch))
    headers = subprocess.run([tool, "-h", str(path)], capture_output=True, text=True, check=True).stdout
    assert f"elf64-{flavour}" in headers
    text_size = int(re.search(r"\.text\s+([0-9a-f]+)", headers).group(1), 16)  # type: ignore[union-attr]
    out = subprocess.run([tool, "-d", str(path)], capture_output=True, text=True, check=True).stdout
    lines = [line.split("\t") for line in out.splitlines() if re.match(r"\s+[0-9a-f]+:\t", line)]
    decoded = sum(len(fields[1].split()) * (1 if arch == "amd64" else 4) for fields in lines)
    mnemonics = [fields[2].split()[0] for fields in lines]
    assert decoded == text_size, out  # no byte of .text left over or misread
    assert not any("bad" in m or m.startswith(".") for m in mnemonics), out
    trap = "syscall" if arch == "amd64" else "svc"
    # 4 x rt_sigaction, pause/ppoll, exit_group on failure, write + exit_group, wait4, rt_sigreturn
    assert mnemonics.count(trap) == 10, out
    assert mnemonics.count("ret") == 1, out


def test_sigterm_and_sigint_exit_0_with_a_short_line(program: tuple[str, Path], started: list[Pause]) -> None:
    arch, path = program
    for signum in (SIGTERM, SIGINT):
        pause = Pause(arch, path)
        started.append(pause)
        os.kill(pause.pid, signum)
        code, err = pause.wait()
        assert code == 0, err
        assert MESSAGE in err, err


def test_sighup_is_ignored(program: tuple[str, Path], started: list[Pause]) -> None:
    arch, path = program
    pause = Pause(arch, path)
    started.append(pause)
    if not pause.emulated:
        assert SIGHUP in signal_set(pause.pid, "SigIgn")
    os.kill(pause.pid, signal.SIGHUP)
    os.kill(pause.pid, signal.SIGCHLD)  # a SIGCHLD without a child to reap changes nothing either
    with pytest.raises(subprocess.TimeoutExpired):
        pause.proc.wait(0.5)
    os.kill(pause.pid, SIGTERM)
    assert pause.wait()[0] == 0


def test_as_pid1_it_reaps_every_orphan(program: tuple[str, Path], started: list[Pause]) -> None:
    """Orphans of the PID namespace are reparented to pause; killed together, none stays a zombie."""
    arch, path = program
    pause = Pause(arch, path, as_pid1=True)
    started.append(pause)
    # nsenter's child shell runs in the namespace, starts three sleeps and exits: they are orphans.
    subprocess.run(["nsenter", "--target", str(pause.pid), "--pid", "--", "sh", "-c",
                    "sleep 1000 & sleep 1000 & sleep 1000 & exit 0"], check=True, timeout=30)
    orphans = wait_until(lambda: (kids := children(pause.pid)) and len(kids) == 3 and kids,
                         "three orphans reparented to pause")
    assert set(orphans.values()) <= {"S", "R"}
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    # Reaped: gone. Not reaped: left as zombies ("Z") whose parent is pause, for ever.
    wait_until(lambda: all(stat_fields(pid) is None for pid in orphans), "the orphans to be reaped",
               timeout=30)
    assert stat_fields(pause.pid) is not None  # pause itself keeps running
    os.kill(pause.pid, SIGTERM)
    code, err = pause.wait()
    assert code == 0 and MESSAGE in err, err
