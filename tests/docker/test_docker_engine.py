"""Docker Engine 20.10 on ctrpyd: the everyday commands, through Debian's docker client.

One ctrpyd and one dockerd serve the whole module (the ``engine`` fixture removes each test's
containers); dockerd keeps root filesystems itself and uses ctrpyd for tasks and events.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.crash.support import mounts_under, processes_naming
from tests.docker.support import BUSYBOX, NAMESPACE, DockerEngine, Stack, wait_for

# A container that runs until told to stop, and stops promptly on SIGTERM (a shell as pid 1
# ignores SIGTERM unless it traps it).
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


def run_detached(engine: DockerEngine, name: str, *args: str) -> str:
    """``docker run -d --name NAME ... BUSYBOX [args or LOOP]``; returns the full id."""
    return engine.ok("run", "-d", "--name", name, BUSYBOX, *(args or LOOP)).strip()


def comm(pid: int) -> str:
    """The process's command name ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_dockerd_starts_on_a_fresh_ctrpyd_with_no_namespace(stack: Stack) -> None:
    assert stack.namespaces_before == ()
    components = stack.engine.ok("version", "--format", "{{range .Server.Components}}{{.Name}} {{end}}")
    assert "containerd" in components.split()
    stack.engine.ok("run", "--rm", BUSYBOX, "true")
    assert NAMESPACE in stack.ctrpyd.ctr("namespaces", "ls", "-q").stdout.split()


def test_run_propagates_output_and_exit_codes(engine: DockerEngine) -> None:
    assert engine.ok("run", "--rm", BUSYBOX, "echo", "hello") == "hello\n"
    assert engine.docker("run", "--rm", BUSYBOX, "true").returncode == 0
    failed = engine.docker("run", "--rm", BUSYBOX, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (failed.returncode, failed.stdout, failed.stderr) == (7, "out\n", "err\n")
    assert engine.ok("run", "--rm", "-i", BUSYBOX, "cat", input="piped\n") == "piped\n"


def test_detached_run_logs_and_inspect(engine: DockerEngine) -> None:
    run_detached(engine, "logs1", "sh", "-c", "echo started; echo to-stderr >&2; exec sleep 600")
    assert engine.inspect("logs1", "{{.State.Status}}") == "running"
    pid = int(engine.inspect("logs1", "{{.State.Pid}}"))
    assert pid > 0 and Path(f"/proc/{pid}").exists()
    wait_for(lambda: "to-stderr" in engine.docker("logs", "logs1").stderr, "the logs")
    logs = engine.docker("logs", "logs1")
    assert (logs.stdout, logs.stderr) == ("started\n", "to-stderr\n")


def test_exec_plain_and_with_stdin(engine: DockerEngine) -> None:
    run_detached(engine, "exec1")
    assert engine.ok("exec", "exec1", "echo", "from-exec") == "from-exec\n"
    assert engine.docker("exec", "exec1", "sh", "-c", "exit 4").returncode == 4
    assert engine.ok("exec", "-i", "exec1", "sh", "-c", "cat; echo done", input="line 1\nline 2\n") == (
        "line 1\nline 2\ndone\n"
    )
    # Every exec process ended: only the container's own processes are left.
    top = engine.ok("top", "exec1")
    assert "cat" not in top and "echo" not in top


class Terminal:
    """A docker client run with a pty as its terminal (``pty.fork``); read, write, resize, wait."""

    def __init__(self, engine: DockerEngine, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the docker client, the pty its controlling terminal
            os.execve(engine.docker_command()[0], [*engine.docker_command(), *args], engine.env())
        self.output = b""

    def read_until(self, marker: bytes, limit: float = 30) -> None:
        deadline = time.monotonic() + limit
        while marker not in self.output and time.monotonic() < deadline:
            readable, _, _ = select.select([self.fd], [], [], 0.5)
            if readable:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:
                    break
        assert marker in self.output, self.output

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def resize(self, rows: int, columns: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_exec_with_a_terminal(engine: DockerEngine) -> None:
    run_detached(engine, "tty1")
    terminal = Terminal(engine, "exec", "-it", "tty1", "sh")
    try:
        terminal.read_until(b"# ")  # the shell's prompt: the exec is running with its terminal
        terminal.write(b"echo tty-$((40+2))\n")
        terminal.read_until(b"tty-42")
        terminal.write(b"tty\n")
        terminal.read_until(b"/dev/pts/")
        terminal.write(b"exit 6\n")
        assert terminal.wait() == 6
    finally:
        terminal.close()


def test_run_with_a_terminal_follows_resizes(engine: DockerEngine) -> None:
    terminal = Terminal(engine, "run", "-it", "--rm", "--name", "tty2", BUSYBOX, "sh")
    try:
        terminal.read_until(b"# ")
        terminal.resize(33, 111)  # the client sends the new size: Tasks.ResizePty of the init
        size = ("exec", "tty2", "sh", "-c", "stty size < /proc/1/fd/0")  # the init's terminal

        def resized() -> bool:
            if engine.docker(*size).stdout == "33 111\n":
                return True
            # The SIGWINCH may have come before the client set its handler (then it is lost):
            # change the size again. The kernel signals only a change, hence the detour.
            terminal.resize(33, 110)
            terminal.resize(33, 111)
            return False

        wait_for(resized, "the new terminal size")
        terminal.write(b"stty size; exit 3\n")
        terminal.read_until(b"33 111")
        assert terminal.wait() == 3
    finally:
        terminal.close()


def test_top_pause_unpause_and_stats(engine: DockerEngine) -> None:
    run_detached(engine, "ps1", "sleep", "600")
    assert "sleep 600" in engine.ok("top", "ps1")
    engine.ok("pause", "ps1")
    assert engine.inspect("ps1", "{{.State.Status}} {{.State.Paused}}") == "paused true"
    assert engine.docker("exec", "ps1", "true").returncode != 0  # a paused container runs nothing
    engine.ok("unpause", "ps1")
    assert engine.inspect("ps1", "{{.State.Status}} {{.State.Paused}}") == "running false"
    assert engine.ok("exec", "ps1", "echo", "again") == "again\n"
    name, memory, pids = engine.ok("stats", "--no-stream", "--format", "{{.Name}}|{{.MemUsage}}|{{.PIDs}}",
                                   "ps1").strip().split("|")
    assert name == "ps1" and int(pids) >= 1
    assert not memory.startswith("0B"), memory


def test_update_memory_reaches_the_cgroup(engine: DockerEngine) -> None:
    cid = run_detached(engine, "upd1")
    limit = Path(f"/sys/fs/cgroup/memory/{engine.cgroup_parent}/{cid}/memory.limit_in_bytes")
    engine.ok("update", "--memory", "64m", "--memory-swap", "128m", "upd1")
    assert int(limit.read_text()) == 64 << 20
    assert engine.inspect("upd1", "{{.HostConfig.Memory}}") == str(64 << 20)
    engine.ok("update", "--memory", "96m", "upd1")
    assert int(limit.read_text()) == 96 << 20
    engine.ok("update", "--cpus", "0.5", "--cpu-shares", "512", "--pids-limit", "50", "upd1")
    cgroup = Path("/sys/fs/cgroup")
    assert (cgroup / f"cpu/{engine.cgroup_parent}/{cid}/cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cgroup / f"cpu/{engine.cgroup_parent}/{cid}/cpu.shares").read_text().strip() == "512"
    assert (cgroup / f"pids/{engine.cgroup_parent}/{cid}/pids.max").read_text().strip() == "50"


def test_kill_restart_stop_and_rm(engine: DockerEngine) -> None:
    cid = run_detached(engine, "life1")
    first_pid = int(engine.inspect("life1", "{{.State.Pid}}"))
    engine.ok("kill", "life1")
    assert engine.ok("wait", "life1").strip() == "137"
    assert engine.inspect("life1", "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    engine.ok("restart", "-t", "5", "life1")
    assert engine.inspect("life1", "{{.State.Status}}") == "running"
    assert int(engine.inspect("life1", "{{.State.Pid}}")) != first_pid
    engine.ok("restart", "-t", "5", "life1")  # a running one: stopped, then started again
    assert engine.inspect("life1", "{{.State.Status}} {{.RestartCount}}") == "running 0"
    engine.ok("kill", "--signal", "TERM", "life1")  # the container's trap turns it into exit 0
    assert engine.ok("wait", "life1").strip() == "0"
    engine.ok("start", "life1")
    engine.ok("stop", "-t", "20", "life1")  # the trap: exits 0 on SIGTERM, well before the timeout
    assert engine.inspect("life1", "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
    engine.ok("rm", "life1")
    assert engine.docker("inspect", "life1").returncode != 0
    assert not Path(f"/sys/fs/cgroup/memory/{engine.cgroup_parent}/{cid}").exists()


def test_wait_attach_and_start_attached(engine: DockerEngine) -> None:
    cid = engine.ok("run", "-d", BUSYBOX, "sh", "-c", "sleep 1; echo out; exit 5").strip()
    attached = engine.docker("attach", cid)
    assert (attached.returncode, attached.stdout) == (5, "out\n")
    assert engine.ok("wait", cid).strip() == "5"  # an exited container answers at once
    started = engine.docker("start", "-a", cid)
    assert (started.returncode, started.stdout) == (5, "out\n")


def test_events_show_start_and_die(engine: DockerEngine) -> None:
    # --since: dockerd replays what happened after that instant, so the subscription can't be late.
    events = subprocess.Popen(
        [*engine.docker_command(), "events", "--since", f"{time.time() - 1:.3f}", "--filter", "container=ev1",
         "--format", '{{.Status}}={{index .Actor.Attributes "exitCode"}}'],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=engine.env(),
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert events.stdout is not None
        for line in events.stdout:
            lines.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert engine.docker("run", "--name", "ev1", BUSYBOX, "sh", "-c", "exit 3").returncode == 3
        wait_for(lambda: "die=3" in lines, "the die event")
    finally:
        events.kill()
        events.wait()
        reader.join(5)
    assert lines.index("start=") < lines.index("die=3"), lines


def test_oom_kill_is_137_and_reported(engine: DockerEngine) -> None:
    result = engine.docker(
        "run", "--name", "oom1", "-m", "16m", "--memory-swap", "16m", BUSYBOX,
        "sh", "-c", "x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived",
    )  # fmt: skip
    assert result.returncode == 137 and "survived" not in result.stdout, result
    assert engine.inspect("oom1", "{{.State.ExitCode}} {{.State.OOMKilled}}") == "137 true"


def test_restart_policy_on_failure_counts_restarts(engine: DockerEngine) -> None:
    engine.ok("run", "-d", "--name", "rp1", "--restart", "on-failure:2", BUSYBOX, "sh", "-c", "exit 3")
    wait_for(lambda: engine.inspect("rp1", "{{.State.Status}} {{.RestartCount}}") == "exited 2",
             "two restarts, then exited")
    assert engine.inspect("rp1", "{{.State.ExitCode}}") == "3"
    time.sleep(1)  # no third start
    assert engine.inspect("rp1", "{{.State.Status}} {{.RestartCount}}") == "exited 2"


def test_restart_policy_always_restarts(engine: DockerEngine) -> None:
    engine.ok("run", "-d", "--name", "rp2", "--restart", "always", BUSYBOX, "sh", "-c", "exit 1")
    wait_for(lambda: int(engine.inspect("rp2", "{{.RestartCount}}")) >= 2, "two restarts")
    engine.ok("rm", "-f", "rp2")


def test_ten_parallel_runs_leave_nothing_behind(stack: Stack, engine: DockerEngine) -> None:
    def run(number: int) -> str:
        return engine.ok("run", "--rm", BUSYBOX, "echo", f"run-{number}")

    with ThreadPoolExecutor(10) as pool:
        outputs = list(pool.map(run, range(10)))
    assert outputs == [f"run-{n}\n" for n in range(10)]
    daemon = stack.ctrpyd
    state = daemon.state

    def leftovers() -> dict[str, object]:
        return {
            "containers": engine.docker("ps", "-aq").stdout.split(),
            "ctrpyd containers": daemon.ctr("containers", "ls", "-q", namespace=NAMESPACE).stdout.split(),
            "bundles": sorted(str(p) for p in (state / "tasks").glob("*/*")),
            "shims": [pid for pid in processes_naming(str(state) + "/") if comm(pid) == "ctrpy-shim"],
            "mounts": mounts_under(state),
            "overlay mounts": engine.overlay_mounts(),
            "cgroups": engine.cgroups(),
        }  # fmt: skip

    empty: dict[str, object] = {key: [] for key in leftovers()}
    wait_for(lambda: leftovers() == empty, "nothing left behind", timeout=30)
