"""``ctrpy run`` and ``ctrpy containers create|rm`` against real daemons and real runc.

Every test runs against the reference containerd and against ctrpyd (the ``backend`` fixture),
so ctrpy's client side is checked against containerd's behaviour and ctrpyd's at once. The spec
``ctrpy run`` builds is compared field by field with the one the stock ``ctr run`` builds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from ctrpy import cio
from ctrpy.testimage import Layer, busybox_image, directory, file, write_oci_layout_tar
from tests.oci.harness import (  # noqa: F401  (fixtures)
    LIMIT,
    PtyProcess,
    Runner,
    backend_fixture,
    busybox_tar_fixture,
    read_until,
    runner_fixture,
    spawn_in_pty,
    wait_stopped,
)

CGROUP_MOUNT = "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev"


def test_run_prints_and_cleans_up(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), runner.image, "t1", "echo", "hi")
    assert result.stdout == "hi\n"
    assert "t1" not in runner.container_ids()
    assert "t1" not in runner.snapshot_keys()
    assert runner.fifo_entries() == []  # the run's FIFO directory is gone


def test_run_exits_with_the_container_status(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), runner.image, "t2", "sh", "-c", "exit 7",
                          check=False)
    assert result.returncode == 7, result.stderr
    assert "t2" not in runner.container_ids()


def test_run_separates_stdout_and_stderr(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), runner.image, "t3",
                          "sh", "-c", "echo out; echo err >&2")
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


def test_run_without_rm_keeps_the_container(runner: Runner) -> None:
    runner.ctrpy("run", *runner.run_flags(), runner.image, "keep", "true")
    assert "keep" in runner.container_ids()
    assert runner.task_status("keep") is None  # the task is deleted once it exited
    runner.ctrpy("containers", "rm", "keep")
    assert "keep" not in runner.container_ids()
    assert "keep" not in runner.snapshot_keys()


def test_null_io_and_log_uri(runner: Runner, tmp_path: Path) -> None:
    quiet = runner.ctrpy("run", "--rm", "--null-io", *runner.run_flags(), runner.image, "n1", "echo", "lost")
    assert quiet.stdout == ""
    log = tmp_path / "logs" / "l1.log"
    logged = runner.ctrpy("run", "--rm", "--log-uri", f"file://{log}", *runner.run_flags(), runner.image, "l1",
                          "echo", "to-log")
    assert logged.stdout == ""
    assert log.read_text() == "to-log\n"
    assert runner.fifo_entries() == []  # neither makes FIFOs


def test_env(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), "--env", "GREETING=hello", "--env", "EMPTY=",
                          runner.image, "env1", "env")
    lines = result.stdout.splitlines()
    assert "GREETING=hello" in lines
    assert "EMPTY=" in lines
    assert lines[0].startswith("PATH=")  # the image's variables come first


def test_bind_mount_read_only(runner: Runner, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note").write_text("from the host\n")
    mount = f"type=bind,src={shared},dst=/host,options=rbind:ro"
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), "--mount", mount, runner.image, "m1",
                          "cat", "/host/note")
    assert result.stdout == "from the host\n"
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), "--mount", mount, runner.image, "m2",
                          "touch", "/host/new", check=False)
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr
    assert not (shared / "new").exists()


def test_memory_limit_is_the_cgroup_limit(runner: Runner) -> None:
    # ctr's default spec mounts no cgroupfs; the test mounts it to look from inside.
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), "--memory-limit", "33554432",
                          "--mount", CGROUP_MOUNT, runner.image, "mem1",
                          "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert result.stdout.strip() == "33554432"


def test_out_of_memory_exits_137(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), "--memory-limit", "16777216", runner.image,
                          "oom1", "sh", "-c", 'x=$(head -c 64m /dev/zero | tr "\\0" a)', check=False)
    assert result.returncode == 137, result.stderr


def test_cpus_set_the_cfs_quota(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), "--cpus", "0.5", "--mount", CGROUP_MOUNT,
                          runner.image, "cpu1", "sh", "-c",
                          "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us")
    assert result.stdout.split() == ["50000", "100000"]


def test_net_host_shares_the_network_namespace(runner: Runner) -> None:
    host = os.readlink("/proc/self/ns/net")
    shared = runner.ctrpy("run", "--rm", *runner.run_flags(), "--net-host", runner.image, "net1",
                          "sh", "-c", "readlink /proc/self/ns/net; echo $HOSTNAME; cat /etc/hosts")
    lines = shared.stdout.splitlines()
    assert lines[0] == host
    assert lines[1] == os.uname().nodename
    assert "\n".join(lines[2:]) + "\n" == Path("/etc/hosts").read_text()
    own = runner.ctrpy("run", "--rm", *runner.run_flags(), runner.image, "net2", "readlink", "/proc/self/ns/net")
    assert own.stdout.strip() != host


def test_piped_stdin_reaches_cat_and_closeio_ends_it(runner: Runner) -> None:
    # A pipe from another process, not a file (G18): the input arrives in two writes.
    producer = subprocess.Popen(["sh", "-c", "echo one; sleep 0.2; echo two"], stdout=subprocess.PIPE)
    assert producer.stdout is not None
    try:
        consumer = subprocess.run(runner.command("run", "--rm", *runner.run_flags(), runner.image, "cat1", "cat"),
                                  stdin=producer.stdout, capture_output=True, timeout=LIMIT)
    finally:
        producer.stdout.close()
        producer.wait(LIMIT)
    assert consumer.returncode == 0, consumer.stderr
    assert consumer.stdout == b"one\ntwo\n"


def test_signals_are_forwarded(runner: Runner) -> None:
    script = 'trap "echo got-term; exit 42" TERM; echo ready; while true; do sleep 0.1; done'
    process = runner.popen("run", "--rm", *runner.run_flags(), runner.image, "sig1", "sh", "-c", script,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    try:
        seen = read_until(process.stdout.fileno(), b"ready\n")
        process.send_signal(signal.SIGTERM)
        rest = process.stdout.read()
        code = process.wait(LIMIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 42, process.stderr.read() if process.stderr else ""
    assert b"got-term" in seen + rest


TTY_SCRIPT = (
    'echo ready; read line; echo "got:$line"; [ -t 0 ] && echo is-a-tty; echo "$TERM"; '
    'while read line; do [ "$line" = q ] && exit 3; busybox stty size 2>&1; echo end; done'
)


def _size_until(session: PtyProcess, wanted: bytes, resize: tuple[int, int] | None = None) -> None:
    """Ask the container for its terminal size until it answers ``wanted`` (the size is set
    by ResizePty, which arrives after Start, or after a SIGWINCH, a moment later). With
    ``resize``, the terminal is resized now and again every 100 questions, as a person dragging
    a window would: once under heavy load in CI a single SIGWINCH went unanswered."""
    seen = b""
    for attempt in range(500):
        if resize is not None and attempt % 100 == 0:
            if attempt:  # the kernel signals only a change: step away and back
                session.resize(resize[0] - 1, resize[1])
            session.resize(*resize)
        session.write(b"\n")
        seen = session.read_until(b"end\r\n")
        if b"\r\n" + wanted + b"\r\n" in seen:
            return
    pytest.fail(f"the container's terminal never got the size {wanted!r}: last {seen!r}")


def test_tty(runner: Runner) -> None:
    # A script rather than an interactive shell: no line editing to answer.
    session = spawn_in_pty(runner.command("run", "--rm", "-t", *runner.run_flags(), runner.image, "tty1",
                                          "sh", "-c", TTY_SCRIPT), columns=100, rows=30)
    try:
        session.read_until(b"ready")
        session.write(b"tty-ok\n")
        out = session.read_until(b"xterm\r\n")
        _size_until(session, b"30 100")  # our size, sent after Start
        _size_until(session, b"40 120", resize=(120, 40))  # SIGWINCH: ctrpy sends the new size
        session.write(b"q\n")
        code, _ = session.finish()
    finally:
        session.close()
    assert b"\r\ngot:tty-ok\r\n" in out  # output lines end in CRLF: they went through a pty
    assert b"\r\nis-a-tty\r\nxterm\r\n" in out
    assert code == 3


def test_default_fifo_dir_is_cleaned(runner: Runner) -> None:
    root = Path(cio.DEFAULT_FIFO_DIR)
    before = set(os.listdir(root)) if root.exists() else set()
    flags = ["--runc-root", str(runner.backend.scratch.parent / "runc")] if runner.kind == "containerd" else []
    result = runner.ctrpy("run", "--rm", *flags, runner.image, "dflt", "echo", "default")
    assert result.stdout == "default\n"
    assert set(os.listdir(root)) <= before  # ours came and went (others may come and go too)


def test_detached_run_starts_and_returns(runner: Runner) -> None:
    result = runner.ctrpy("run", "-d", *runner.run_flags(), runner.image, "bg1", "sleep", "1000")
    assert result.stdout == ""
    assert runner.task_status("bg1") == "RUNNING"
    bad = runner.ctrpy("run", "-d", "--rm", *runner.run_flags(), runner.image, "bg2", "true", check=False)
    assert bad.returncode == 1
    assert "cannot be specified together" in bad.stderr


def test_missing_image(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), "docker.io/library/nope:latest", "x1", "true",
                          check=False)
    assert result.returncode == 1
    assert 'image "docker.io/library/nope:latest": not found' in result.stderr
    assert runner.container_ids() == []


def test_bad_id(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), runner.image, "bad/id", "true", check=False)
    assert result.returncode == 1
    assert 'identifier "bad/id"' in result.stderr and "invalid argument" in result.stderr
    assert runner.container_ids() == []
    assert not any(key.startswith("bad") for key in runner.snapshot_keys())


def test_unknown_runtime_leaves_nothing(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", "--fifo-dir", str(runner.fifo_dir), "--runtime", "io.example.nothing",
                          runner.image, "rt1", "true", check=False)
    assert result.returncode == 1
    assert "nothing" in result.stderr  # the daemon's reason names the runtime
    assert runner.container_ids() == []
    assert "rt1" not in runner.snapshot_keys()
    assert runner.fifo_entries() == []


def test_bad_mount_flag(runner: Runner) -> None:
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), "--mount", "type=bind,bogus=1,dst=/x",
                          runner.image, "bm1", "true", check=False)
    assert result.returncode == 1
    assert "not supported" in result.stderr
    assert runner.container_ids() == []


# ---- the spec, compared with ctr's --------------------------------------------------------


def _spec(runner: Runner, container_id: str, tool: str) -> dict[str, object]:
    if tool == "ctr":
        record = json.loads(runner.ctr("containers", "info", container_id).stdout)
        spec, labels, runtime = record["Spec"], record["Labels"], record["Runtime"]["Name"]
        image, key = record["Image"], record["SnapshotKey"]
    else:
        record = json.loads(runner.ctrpy("containers", "info", container_id).stdout)
        spec, labels, runtime = record["spec"], record["labels"], record["runtime"]["name"]
        image, key = record["image"], record["snapshot_key"]
    assert key == container_id
    # The only field that names the container.
    assert spec["linux"]["cgroupsPath"] == f"/{runner.namespace}/{container_id}"
    spec["linux"]["cgroupsPath"] = "/<ns>/<id>"
    return {"spec": spec, "labels": labels, "runtime": runtime, "image": image}


FLAG_SETS = {
    "defaults": [],
    "everything": ["--env", "A=B", "--env", "PATH=/bin:/usr/bin", "--label", "team=blue",
                   "--mount", "type=bind,src=/tmp,dst=/host,options=rbind:ro", "--memory-limit", "100000000",
                   "--cpus", "1.5", "--net-host", "--cwd", "/tmp", "--read-only"],
}


@pytest.mark.parametrize("flags", sorted(FLAG_SETS))
def test_run_spec_matches_ctr(runner: Runner, flags: str) -> None:
    """``ctrpy run -d`` and ``ctr run -d`` with the same flags make the same container."""
    extra = FLAG_SETS[flags]
    runner.ctr("run", "-d", *runner.run_flags(), *extra, runner.image, "by-ctr", "sleep", "1000")
    runner.ctrpy("run", "-d", *runner.run_flags(), *extra, runner.image, "by-ctrpy", "sleep", "1000")
    assert _spec(runner, "by-ctrpy", "ctrpy") == _spec(runner, "by-ctr", "ctr")


def test_image_config_spec_matches_ctr(runner: Runner, tmp_path: Path) -> None:
    """An image with a user, an entrypoint, a working directory, labels and a stop signal, and
    a second layer whose /etc/group gives the user a supplementary group (read from the
    mounted root filesystem, G8)."""
    groups = file("/etc/group", b"root:x:0:\nnobody:x:65534:\nusers:x:100:nobody\n")
    image = dataclasses.replace(
        busybox_image("docker.io/library/configured:1"),
        env=("PATH=/bin", "FOO=bar"), entrypoint=("/bin/sh", "-c"), cmd=("echo $FOO; id",),
        working_dir="/tmp", user="nobody", labels=(("made.by", "ctrpy-tests"),))
    image = dataclasses.replace(image, layers=(*image.layers, Layer((directory("/etc"), groups))))
    write_oci_layout_tar(image, tmp_path / "configured.tar")
    runner.ctrpy("images", "import", str(tmp_path / "configured.tar"))
    runner.ctr("containers", "create", image.name, "by-ctr")
    runner.ctrpy("containers", "create", *runner.create_flags(), image.name, "by-ctrpy")
    mine, theirs = _spec(runner, "by-ctrpy", "ctrpy"), _spec(runner, "by-ctr", "ctr")
    assert mine == theirs
    process = mine["spec"]["process"]  # type: ignore[index]
    assert process["user"] == {"uid": 65534, "gid": 65534, "additionalGids": [65534, 100]}
    assert process["args"] == ["/bin/sh", "-c", "echo $FOO; id"]
    assert mine["labels"] == {"made.by": "ctrpy-tests", "io.containerd.image.config.stop-signal": "SIGTERM"}
    result = runner.ctrpy("tasks", "start", *runner.io_flags(), "by-ctrpy")
    assert result.stdout == "bar\nuid=65534(nobody) gid=65534(nobody) groups=100(users),65534(nobody)\n"


def test_run_unpacks_when_needed(runner: Runner, busybox_tar: Path) -> None:
    other = runner.backend.other_namespace()
    runner.ctrpy("images", "import", "--no-unpack", str(busybox_tar), namespace=other)
    check = runner.ctrpy("images", "check", namespace=other).stdout
    assert check.split()[-1] == "false"  # not unpacked in that namespace's view
    result = runner.ctrpy("run", "--rm", *runner.run_flags(), runner.image, "u1", "echo", "unpacked",
                          namespace=other)
    assert result.stdout == "unpacked\n"
    assert runner.ctrpy("images", "check", namespace=other).stdout.split()[-1] == "true"


def test_containers_create_spec_matches_ctr(runner: Runner) -> None:
    """``containers create`` with a terminal (which ``ctr run`` cannot do without a console)."""
    extra = ["-t", "--env", "PATH", "--env", "X=1"]
    runner.ctr("containers", "create", *extra, runner.image, "by-ctr", "sh")
    runner.ctrpy("containers", "create", *extra, runner.image, "by-ctrpy", "sh")
    mine, theirs = _spec(runner, "by-ctrpy", "ctrpy"), _spec(runner, "by-ctr", "ctr")
    assert mine == theirs
    process = mine["spec"]["process"]  # type: ignore[index]
    assert process["terminal"] is True
    assert process["env"][-1] == "TERM=xterm"


def test_containers_rm_refuses_a_running_container(runner: Runner) -> None:
    runner.ctrpy("run", "-d", *runner.run_flags(), runner.image, "busy", "sleep", "1000")
    result = runner.ctrpy("containers", "rm", "busy", check=False)
    assert result.returncode == 1
    assert "cannot delete a non stopped container: running" in result.stderr
    assert "busy" in runner.container_ids()
    runner.ctrpy("tasks", "kill", "-s", "KILL", "busy")
    # Wait for the task to stop (tasks rm -f waits), then the container goes with its snapshot.
    runner.ctrpy("tasks", "rm", "-f", "busy")
    runner.ctrpy("containers", "rm", "busy")
    assert "busy" not in runner.container_ids()
    assert "busy" not in runner.snapshot_keys()


def test_containers_rm_deletes_a_stopped_task_first(runner: Runner) -> None:
    runner.ctrpy("run", "-d", *runner.run_flags(), runner.image, "done1", "sh", "-c", "exit 0")
    wait_stopped(runner, "done1")
    runner.ctrpy("containers", "rm", "done1")
    assert runner.container_ids() == []
    assert runner.task_status("done1") is None
    assert runner.fifo_entries() == []  # the detached run's FIFOs went with its task


# ---- events --------------------------------------------------------------------------------


def test_events_of_one_run_in_order(runner: Runner) -> None:
    events = runner.popen("events", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert events.stdout is not None
    seen = b""
    try:
        # Subscribing takes a moment: make marker events until one shows up.
        for attempt in range(50):
            marker = f"{runner.namespace}-m{attempt}"
            runner.ctrpy("namespaces", "create", marker)
            runner.ctrpy("namespaces", "rm", marker)
            try:
                seen += read_until(events.stdout.fileno(), f"/namespaces/delete {{\"name\":\"{marker}\"}}".encode(),
                                   limit=2)
                break
            except pytest.fail.Exception:
                continue
        else:
            pytest.fail("ctrpy events showed none of the marker events")
        runner.ctrpy("run", "--rm", *runner.run_flags(), runner.image, "ev1", "sh", "-c", "exit 3", check=False)
        seen += read_until(events.stdout.fileno(), b'/tasks/delete {"container_id":"ev1"')
    finally:
        events.terminate()
        events.wait(LIMIT)
    lines = [line.split(" ", 6) for line in seen.decode().splitlines()]
    mine = [(fields[5], json.loads(fields[6])) for fields in lines
            if len(fields) == 7 and fields[4] == runner.namespace and fields[5].startswith("/tasks/")]
    assert [topic for topic, _ in mine] == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert all(event["container_id"] == "ev1" for _, event in mine)
    exit_event = dict(mine)["/tasks/exit"]
    assert exit_event["exit_status"] == 3
    assert exit_event["pid"] == dict(mine)["/tasks/start"]["pid"]
    assert lines[0][3] == "UTC"  # <date> <time> +0000 UTC <namespace> <topic> <event>
