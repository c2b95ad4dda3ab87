"""Run a real ctrpyd for a test or a benchmark: its own root, state and socket in a temp dir.

Plain Python (no pytest at module level), so benchmarks can use it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctrpy.client import Client

CTR = shutil.which("ctr") or "/usr/bin/ctr"


class Daemon:
    """One ctrpyd process. ``start()``, ``stop()``, ``kill()``, ``restart()``; ``ctr(...)`` runs the stock client."""

    def __init__(self, base: Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        # Unix socket paths are limited to 108 bytes: keep the base directory short.
        self.base = base or Path(tempfile.mkdtemp(prefix="ctrpyd-"))
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.address = self.base / "ctrpy.sock"
        self.log_path = self.base / "ctrpyd.log"
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "ctrpy.manager.main",
            "--root", str(self.root), "--state", str(self.state), "--address", str(self.address),
            "--log-level", "debug", *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ctrpyd exited with {self.process.returncode}:\n{self.log()}")
            if self.address.exists():
                try:
                    with self.client() as client:
                        from google.protobuf import empty_pb2

                        client.call(client.version.Version, empty_pb2.Empty())
                    return self
                except Exception:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"ctrpyd did not come up in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, namespace: str = "default", timeout: float | None = 30.0) -> Client:
        return Client(str(self.address), namespace, timeout)

    def ctr_command(self, namespace: str = "default") -> list[str]:
        """The argv prefix that points the stock ctr at this daemon."""
        return [CTR, "--address", str(self.address), "--namespace", namespace]

    def ctr(
        self, *args: str, namespace: str = "default", input: bytes | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the stock ``ctr`` against this daemon; never raises on a non-zero exit."""
        return subprocess.run(
            [*self.ctr_command(namespace), *args],
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self) -> Daemon:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.kill()
        # Unmount anything left below our dirs (deepest first), then remove them.
        mounts = []
        with open("/proc/self/mountinfo") as table:
            for line in table:
                point = line.split()[4]
                if point.startswith(str(self.base) + "/"):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
