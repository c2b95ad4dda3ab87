"""``ctrpy tasks ls|start|attach|ps|exec|kill|pause|resume|metrics|rm|timeline``: the running side of
containers, over the Tasks API, as ``ctr tasks`` does it.

``start``, ``attach`` and ``exec`` stay attached until the process exits and then exit with its
status (``-d`` returns once it started); ``attach`` deletes the task afterwards, as ctr does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
from collections.abc import Iterator
from typing import Any

from google.protobuf import any_pb2

from ctrpy import cio, errors, identifiers
from ctrpy.api.cgroups.cgroup1.stats import metrics_pb2 as cgroup1
from ctrpy.api.cgroups.cgroup2.stats import metrics_pb2 as cgroup2
from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2 as api
from ctrpy.api.containerd.types.runc.options import oci_pb2
from ctrpy.client import Client
from ctrpy.images import snapshots
from ctrpy.images.convert import mount_to_proto
from ctrpy.oci import (
    PROCESS_URL,
    STOP_SIGNAL_LABEL,
    get_container,
    mounted_snapshot,
    process_json,
    resolve_user,
)

from . import output, timeline
from .common import verb, verbs
from .events import message_json, rfc3339, type_name, unpack
from .process import (
    IOOptions,
    ProcessIO,
    Waiter,
    attach_and_wait,
    close_stdin,
    console_resize,
    delete_exec,
    delete_task,
    forward_signals,
    get_process,
    loaded_io,
    make_io,
    status_name,
    warn,
)

METRICS_TYPES: dict[str, type[cgroup1.Metrics] | type[cgroup2.Metrics]] = {
    cgroup1.Metrics.DESCRIPTOR.full_name: cgroup1.Metrics,
    cgroup2.Metrics.DESCRIPTOR.full_name: cgroup2.Metrics,
}


def parse_signal(text: str) -> int:
    """A signal given as a number or a name (``9``, ``KILL``, ``SIGKILL``, any case)."""
    if text.isdigit():
        number = int(text)
        if not 0 < number < signal.NSIG:
            raise errors.InvalidArgument(f"invalid signal {text!r}")
        return number
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise errors.InvalidArgument(f"invalid signal {text!r}") from None


def spec_of(container: containers_pb2.Container) -> dict[str, Any]:
    """The container's OCI spec; raises InvalidArgument when it has none that is JSON."""
    try:
        spec = json.loads(container.spec.value)
    except ValueError:
        spec = None
    if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
        raise errors.InvalidArgument(f'container "{container.id}": spec has no process')
    return spec


def _io_options(args: argparse.Namespace) -> IOOptions:
    return IOOptions(null_io=getattr(args, "null_io", False), log_uri=getattr(args, "log_uri", "") or "",
                     fifo_dir=getattr(args, "fifo_dir", None))


def create_task(client: Client, container: containers_pb2.Container, io: ProcessIO) -> int:
    """Tasks.Create with the container's rootfs mounts and ``io``'s stdio; returns the pid."""
    rootfs = []
    if container.snapshot_key:
        rootfs = [mount_to_proto(m) for m in snapshots.mounts(client, container.snapshotter, container.snapshot_key)]
    request = api.CreateTaskRequest(container_id=container.id, rootfs=rootfs, stdin=io.config.stdin,
                                    stdout=io.config.stdout, stderr=io.config.stderr, terminal=io.config.terminal)
    response: api.CreateTaskResponse = client.call(client.tasks.Create, request)
    return response.pid


def _discard(client: Client, container_id: str, exec_id: str, io: ProcessIO) -> None:
    """After a failure half-way: kill and delete the process, remove its stdio; quietly."""
    with contextlib.suppress(errors.CtrpyError):
        if exec_id:
            delete_exec(client, container_id, exec_id, force=True)
        else:
            delete_task(client, container_id, force=True)
    io.close(remove=True)


def start_process(client: Client, container_id: str, exec_id: str, io: ProcessIO,
                  console: cio.Console | None, detach: bool) -> int:
    """Start a created task or exec and, unless ``detach``, stay with it until it exits: Wait
    issued first, stdin copied (end of input sends CloseIO, without a terminal), signals
    forwarded or the pty resized; then the output drains, the process is deleted, its FIFOs
    removed. Returns the exit status (0 when detached)."""
    request = api.StartRequest(container_id=container_id, exec_id=exec_id)
    if detach:
        try:
            client.call(client.tasks.Start, request)
        except BaseException:
            _discard(client, container_id, exec_id, io)
            raise
        io.close(remove=False)  # the FIFOs stay for `tasks attach`
        return 0
    try:
        io.start_stdin(None if console is not None else close_stdin(client, container_id, exec_id))
        waiter = Waiter(client, container_id, exec_id)
        # Signals are forwarded from before Start: one that comes as soon as the process shows
        # signs of life must not kill us instead.
        with contextlib.nullcontext() if console is not None else forward_signals(client, container_id, exec_id):
            client.call(client.tasks.Start, request)
            if console is not None:
                with console_resize(client, container_id, exec_id, console):
                    code = waiter.result()
            else:
                code = waiter.result()
    except BaseException:
        _discard(client, container_id, exec_id, io)
        raise
    try:
        if exec_id:
            delete_exec(client, container_id, exec_id, io=io)
        else:
            delete_task(client, container_id, io=io)
    finally:
        io.close(remove=True)
    return code


@contextlib.contextmanager
def _raw(console: cio.Console | None) -> Iterator[None]:
    if console is not None:
        console.set_raw()
    try:
        yield
    finally:
        if console is not None:
            console.reset()


def run_task(client: Client, container: containers_pb2.Container, options: IOOptions, detach: bool) -> int:
    """Create the container's task and start it (``run``'s second half, ``tasks start``)."""
    terminal = bool(spec_of(container)["process"].get("terminal"))
    console = cio.Console.current() if terminal and not detach else None
    io = make_io(container.id, terminal=terminal, options=options, attach=not detach)
    with _raw(console):
        try:
            create_task(client, container, io)
        except BaseException:
            io.close(remove=True)
            raise
        return start_process(client, container.id, "", io, console, detach)


# ---- verbs --------------------------------------------------------------------------------


def ls(client: Client, args: argparse.Namespace) -> int:
    found = client.call(client.tasks.List, api.ListTasksRequest()).tasks
    if args.quiet:
        for task in found:
            print(task.id)
    elif args.format == "json":
        output.emit_json([{"id": t.id, "pid": t.pid, "status": status_name(t.status)} for t in found])
    else:
        output.table(("TASK", "PID", "STATUS"), [(t.id, t.pid, status_name(t.status)) for t in found])
    return 0


def start(client: Client, args: argparse.Namespace) -> int:
    container = get_container(client, args.id)
    return run_task(client, container, _io_options(args), args.detach)


def attach(client: Client, args: argparse.Namespace) -> int:
    container = get_container(client, args.id)
    terminal = bool(spec_of(container)["process"].get("terminal"))
    process = get_process(client, args.id)
    console = cio.Console.current() if terminal else None
    io = loaded_io(process)
    try:
        with _raw(console):
            io.start_stdin(None)
            waiter = Waiter(client, args.id)
            code = attach_and_wait(client, args.id, "", waiter, console)
            delete_task(client, args.id, io=io)
    finally:
        io.close(remove=False)
    return code


def ps(client: Client, args: argparse.Namespace) -> int:
    get_process(client, args.id)
    found = client.call(client.tasks.ListPids, api.ListPidsRequest(container_id=args.id)).processes
    rows = []
    for info in found:
        exec_id = ""
        if info.HasField("info"):
            details = unpack(info.info, {oci_pb2.ProcessDetails.DESCRIPTOR.full_name: oci_pb2.ProcessDetails})
            if isinstance(details, oci_pb2.ProcessDetails):
                exec_id = details.exec_id
        rows.append((info.pid, exec_id))
    if args.format == "json":
        output.emit_json([{"pid": pid, "exec_id": exec_id} for pid, exec_id in rows])
    else:
        output.table(("PID", "EXEC_ID"), [(pid, exec_id or "-") for pid, exec_id in rows])
    return 0


def exec_(client: Client, args: argparse.Namespace) -> int:
    if not args.command:
        raise errors.InvalidArgument("a command to run must be provided")
    exec_id = identifiers.validate(args.exec_id or f"exec-{secrets.token_hex(4)}")
    container = get_container(client, args.id)
    process: dict[str, Any] = spec_of(container)["process"]
    if args.user:
        with mounted_snapshot(client, container.snapshotter, container.snapshot_key) as root:
            uid, gid = resolve_user(root, args.user)
        process["user"] = {"uid": uid, "gid": gid, "additionalGids": [gid]}
    process["terminal"] = args.tty
    if not args.tty:
        del process["terminal"]
    process["args"] = list(args.command)
    process.pop("commandLine", None)
    if args.cwd:
        process["cwd"] = args.cwd
    get_process(client, args.id)  # the task must exist
    if args.fifo_dir and args.log_uri:
        raise errors.InvalidArgument("can't use log-uri with fifo-dir")
    console = cio.Console.current() if args.tty and not args.detach else None
    io = make_io(exec_id, terminal=args.tty, options=_io_options(args), attach=not args.detach)
    with _raw(console):
        try:
            spec = any_pb2.Any(type_url=PROCESS_URL, value=process_json(process))
            client.call(client.tasks.Exec, api.ExecProcessRequest(
                container_id=args.id, exec_id=exec_id, stdin=io.config.stdin, stdout=io.config.stdout,
                stderr=io.config.stderr, terminal=io.config.terminal, spec=spec))
        except BaseException:
            io.close(remove=True)
            raise
        return start_process(client, args.id, exec_id, io, console, args.detach)


def kill(client: Client, args: argparse.Namespace) -> int:
    if args.all and args.exec_id:
        raise errors.InvalidArgument("specify an exec-id or all; not both")
    container = get_container(client, args.id)
    name = args.signal or container.labels.get(STOP_SIGNAL_LABEL) or "SIGTERM"
    signum = parse_signal(name)
    get_process(client, args.id)
    client.call(client.tasks.Kill, api.KillRequest(container_id=args.id, exec_id=args.exec_id or "",
                                                    signal=signum, all=args.all))
    return 0


def pause(client: Client, args: argparse.Namespace) -> int:
    get_process(client, args.id)
    client.call(client.tasks.Pause, api.PauseTaskRequest(container_id=args.id))
    return 0


def resume(client: Client, args: argparse.Namespace) -> int:
    get_process(client, args.id)
    client.call(client.tasks.Resume, api.ResumeTaskRequest(container_id=args.id))
    return 0


def _metric_rows(data: cgroup1.Metrics | cgroup2.Metrics) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    if isinstance(data, cgroup1.Metrics):
        if data.HasField("memory"):
            rows += [("memory.usage_in_bytes", data.memory.usage.usage),
                     ("memory.limit_in_bytes", data.memory.usage.limit),
                     ("memory.stat.cache", data.memory.total_cache)]
        if data.HasField("cpu"):
            rows += [("cpuacct.usage", data.cpu.usage.total),
                     ("cpuacct.usage_percpu", list(data.cpu.usage.per_cpu))]
        if data.HasField("pids"):
            rows += [("pids.current", data.pids.current), ("pids.limit", data.pids.limit)]
        return rows
    if data.HasField("pids"):
        rows += [("pids.current", data.pids.current), ("pids.limit", data.pids.limit)]
    if data.HasField("cpu"):
        rows += [("cpu.usage_usec", data.cpu.usage_usec), ("cpu.user_usec", data.cpu.user_usec),
                 ("cpu.system_usec", data.cpu.system_usec), ("cpu.nr_periods", data.cpu.nr_periods),
                 ("cpu.nr_throttled", data.cpu.nr_throttled), ("cpu.throttled_usec", data.cpu.throttled_usec)]
    if data.HasField("memory"):
        rows += [("memory.usage", data.memory.usage), ("memory.usage_limit", data.memory.usage_limit),
                 ("memory.swap_usage", data.memory.swap_usage), ("memory.swap_limit", data.memory.swap_limit)]
    return rows


def metrics(client: Client, args: argparse.Namespace) -> int:
    get_container(client, args.id)
    get_process(client, args.id)
    found = client.call(client.tasks.Metrics, api.MetricsRequest(filters=[f"id=={args.id}"])).metrics
    if not found:
        raise errors.NotFound(f"task {args.id}: no metrics received")
    metric = found[0]
    data = unpack(metric.data, dict(METRICS_TYPES))
    if not isinstance(data, cgroup1.Metrics | cgroup2.Metrics):
        raise errors.InvalidArgument(
            f"cannot convert metric data of type {type_name(metric.data)!r} to cgroups v1 or v2 Metrics")
    stamp = rfc3339(metric.timestamp) if metric.HasField("timestamp") else "-"
    if args.format == "json":
        output.emit_json({"id": metric.id, "timestamp": stamp, "type": type_name(metric.data),
                          "data": message_json(data)})
        return 0
    output.table(("ID", "TIMESTAMP"), [(metric.id, stamp)])
    print()
    output.table(("METRIC", "VALUE"), [(name, value) for name, value in _metric_rows(data)])
    return 0


def rm(client: Client, args: argparse.Namespace) -> int:
    if args.exec_id:
        get_container(client, args.ids[0])
        response = delete_exec(client, args.ids[0], args.exec_id, force=args.force)
        return response.exit_status & 0xFF
    status = 0
    for container_id in args.ids:
        try:
            get_container(client, container_id)
            response = delete_task(client, container_id, force=args.force)
        except errors.CtrpyError as exc:
            warn(f"unable to delete {container_id}: {exc.message}")
            status = 1
            continue
        if response.exit_status:
            warn(f"task {container_id} exit with non-zero exit code {response.exit_status}")
    return status


def add_io_flags(parser: argparse.ArgumentParser, *, null_io: bool = True) -> None:
    if null_io:
        parser.add_argument("--null-io", action="store_true", help="send all IO to /dev/null")
    parser.add_argument("--log-uri", default="", help="send output to a file://, binary:// or ctrpy-crilog:// URI")
    parser.add_argument("--fifo-dir", default=None, help="directory for the IO FIFOs (default /run/ctrpy/fifo)")


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = verbs(nouns, "tasks", "manage tasks (a container's running processes)", aliases=["task", "t"])
    parser = verb(group, "ls", "list tasks", ls, aliases=["list"])
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the task ids")

    parser = verb(group, "start", "start a container that has been created", start)
    add_io_flags(parser)
    parser.add_argument("-d", "--detach", action="store_true", help="return once the task has started")
    parser.add_argument("id", metavar="CONTAINER")

    verb(group, "attach", "attach to the IO of a running task (deletes it when it exits)",
         attach).add_argument("id", metavar="CONTAINER")
    verb(group, "ps", "list a task's processes", ps).add_argument("id", metavar="CONTAINER")

    parser = verb(group, "exec", "run another process in a running container", exec_)
    parser.add_argument("--exec-id", default="", help="the process's id (default: a random one)")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    parser.add_argument("-d", "--detach", action="store_true", help="return once the process has started")
    parser.add_argument("--cwd", default="", help="working directory of the new process")
    parser.add_argument("--user", default="", help="user id or name (looked up in the container's /etc/passwd)")
    add_io_flags(parser, null_io=False)
    parser.add_argument("id", metavar="CONTAINER")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")

    parser = verb(group, "kill", "signal a task (default: the image's stop signal, else SIGTERM)", kill)
    parser.add_argument("-s", "--signal", default="", help="signal name or number")
    parser.add_argument("--exec-id", default="", help="signal this exec process")
    parser.add_argument("-a", "--all", action="store_true", help="signal every process in the container")
    parser.add_argument("id", metavar="CONTAINER")

    verb(group, "pause", "pause a task", pause).add_argument("id", metavar="CONTAINER")
    verb(group, "resume", "resume a paused task", resume).add_argument("id", metavar="CONTAINER")
    verb(group, "metrics", "memory, cpu and pids figures of a task", metrics,
         aliases=["metric"]).add_argument("id", metavar="CONTAINER")

    parser = verb(group, "rm", "delete stopped tasks", rm, aliases=["remove", "delete", "del"])
    parser.add_argument("-f", "--force", action="store_true", help="kill the task first")
    parser.add_argument("--exec-id", default="", help="delete this exec process of the (one) container")
    parser.add_argument("ids", nargs="+", metavar="CONTAINER")

    timeline.add_task_verb(group)
