"""``ctrpy cri create|start|ps|inspect|logs|exec|stop|rm|stats``: CRI containers, as crictl.

``create`` takes the pod id, a container config file and the pod's config file in the CRI's
JSON form (crictl's ``container-config.json`` and ``pod-config.json``) and prints the new
container id. ``ps`` prints crictl's table (running containers; ``-a`` for all; ``--pod``,
``--id``, ``--name``, ``--state``, ``--label`` filter; ``-q`` ids only). ``inspect`` prints the
status and verbose info as JSON; ``logs`` prints the content of the container's CRI log file
(``--tail N`` for the last lines); ``exec --sync`` runs a command with ExecSync and exits with
its exit code (``exec`` without ``--sync`` is streaming, not served yet). ``stats`` prints CPU
time, memory working set and writable layer usage per running container.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri import CriClient
from ctrpy.errors import InvalidArgument

from . import crifmt, output
from .progress import human_bytes

__all__ = ["VERBS"]

_STATES = {"created": api.CONTAINER_CREATED, "running": api.CONTAINER_RUNNING, "exited": api.CONTAINER_EXITED,
           "unknown": api.CONTAINER_UNKNOWN}


def _read(path: str, message: Message, what: str) -> Any:
    try:
        with open(path) as f:
            text = f.read()
        return json_format.Parse(text, message)
    except OSError as exc:
        raise InvalidArgument(f"{what} {path}: {exc.strerror or exc}") from None
    except json_format.ParseError as exc:
        raise InvalidArgument(f"{what} {path}: {exc}") from None


def create(cri: CriClient, args: argparse.Namespace) -> int:
    config = _read(args.config, api.ContainerConfig(), "container config")
    pod = _read(args.pod_config, api.PodSandboxConfig(), "pod config")
    print(cri.create_container(args.pod, config, pod))
    return 0


def start(cri: CriClient, args: argparse.Namespace) -> int:
    for container_id in args.ids:
        cri.start_container(container_id)
        print(container_id)
    return 0


def _labels(items: list[str] | None) -> dict[str, str]:
    labels = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise InvalidArgument(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def ps(cri: CriClient, args: argparse.Namespace) -> int:
    wanted = api.ContainerFilter(id=args.id or "", pod_sandbox_id=args.pod or "", label_selector=_labels(args.label))
    if args.state:
        wanted.state.state = _STATES[args.state.lower()]
    elif not args.all:
        wanted.state.state = api.CONTAINER_RUNNING
    found = [c for c in cri.list_containers(wanted) if not args.name or args.name in c.metadata.name]
    found.sort(key=lambda c: c.created_at, reverse=True)
    if args.format == "json" or args.output == "json":
        output.emit_json({"containers": [crifmt.as_dict(c) for c in found]})
        return 0
    if args.quiet:
        for container in found:
            print(container.id)
        return 0
    rows = [(c.id[:13], c.image.image or c.image_ref, crifmt.age(c.created_at), api.ContainerState.Name(c.state),
             c.metadata.name, c.metadata.attempt, c.pod_sandbox_id[:13]) for c in found]
    output.table(("CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"), rows)
    return 0


def inspect(cri: CriClient, args: argparse.Namespace) -> int:
    answers = []
    for container_id in args.ids:
        response = cri.container_status(container_id, verbose=True)
        answers.append(crifmt.with_info({"status": crifmt.as_dict(response.status)}, response.info))
    output.emit_json(answers[0] if len(answers) == 1 else answers)
    return 0


def logs(cri: CriClient, args: argparse.Namespace) -> int:
    path = cri.container_status(args.id).status.log_path
    if not path:
        raise InvalidArgument(f"container {args.id} has no log path")
    try:
        with open(path, "rb") as f:
            records = f.read().splitlines()
    except OSError as exc:
        raise InvalidArgument(f"log {path}: {exc.strerror or exc}") from None
    lines: list[tuple[bytes, bytes]] = []  # (stream, content)
    partial = b""
    for record in records:
        parts = record.split(b" ", 3)
        if len(parts) == 3:
            parts.append(b"")  # an empty line: "<time> <stream> F "
        if len(parts) != 4:
            continue
        _, stream, tag, content = parts
        if tag == b"P":
            partial += content
            continue
        lines.append((stream, partial + content))
        partial = b""
    if args.tail >= 0:
        lines = lines[len(lines) - args.tail:] if args.tail else []
    for stream, content in lines:
        out = sys.stderr.buffer if stream == b"stderr" else sys.stdout.buffer
        out.write(content + b"\n")
    sys.stdout.flush()
    return 0


def exec_(cri: CriClient, args: argparse.Namespace) -> int:
    if not args.sync:
        raise errors.NotImplemented("streaming exec: use --sync (-s)")
    result = cri.exec_sync(args.id, list(args.cmd), timeout=args.exec_timeout)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    return int(result.exit_code)


def stop(cri: CriClient, args: argparse.Namespace) -> int:
    for container_id in args.ids:
        cri.stop_container(container_id, args.stop_timeout)
        print(container_id)
    return 0


def rm(cri: CriClient, args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.all:
        ids += [c.id for c in cri.list_containers()]
    if not ids:
        raise InvalidArgument("rm: give container ids, or --all")
    for container_id in ids:
        cri.remove_container(container_id)
        print(container_id)
    return 0


def stats(cri: CriClient, args: argparse.Namespace) -> int:
    if args.ids:
        found = [cri.container_stats(i) for i in args.ids]
    else:
        found = cri.list_container_stats(api.ContainerStatsFilter(pod_sandbox_id=args.pod or "",
                                                                  label_selector=_labels(args.label)))
    if args.format == "json" or args.output == "json":
        output.emit_json({"stats": [crifmt.as_dict(s) for s in found]})
        return 0
    rows = [(s.attributes.id[:13], s.attributes.metadata.name,
             f"{s.cpu.usage_core_nano_seconds.value / 1e9:.2f}s", human_bytes(s.memory.working_set_bytes.value),
             human_bytes(s.writable_layer.used_bytes.value), s.writable_layer.inodes_used.value) for s in found]
    output.table(("CONTAINER", "NAME", "CPU TIME", "MEM", "DISK", "INODES"), rows)
    return 0


def _create_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pod", metavar="POD-ID")
    parser.add_argument("config", help="container config JSON file")
    parser.add_argument("pod_config", metavar="pod-config", help="the pod's config JSON file")


def _ids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="+", metavar="CONTAINER-ID")


def _ps_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", "-a", action="store_true", help="every container, not only running ones")
    parser.add_argument("--id", default="", help="containers whose id starts with this")
    parser.add_argument("--pod", "-p", default="", help="containers of this pod (id or prefix)")
    parser.add_argument("--name", default="", help="containers whose name contains this")
    parser.add_argument("--state", "-s", choices=tuple(_STATES) + tuple(s.capitalize() for s in _STATES), default="")
    parser.add_argument("--label", action="append", help="KEY=VALUE (repeatable)")
    parser.add_argument("--quiet", "-q", action="store_true", help="only container ids")
    parser.add_argument("--output", "-o", choices=("table", "json"), default="table")


def _logs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="CONTAINER-ID")
    parser.add_argument("--tail", type=int, default=-1, help="only the last N lines")


def _exec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sync", "-s", action="store_true", help="run with ExecSync and wait")
    # Own dests: ``args.timeout`` is the global per-call timeout.
    parser.add_argument("--timeout", type=int, default=0, dest="exec_timeout",
                        help="seconds before the command is killed (0: none)")
    parser.add_argument("id", metavar="CONTAINER-ID")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND")


def _stop_args(parser: argparse.ArgumentParser) -> None:
    _ids(parser)
    parser.add_argument("--timeout", "-t", type=int, default=0, dest="stop_timeout", help="seconds before SIGKILL")


def _rm_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
    parser.add_argument("--all", "-a", action="store_true", help="remove every container")
    parser.add_argument("--force", "-f", action="store_true", help="(always: a running container is stopped first)")


def _stats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
    parser.add_argument("--pod", "-p", default="", help="containers of this pod")
    parser.add_argument("--label", action="append", help="KEY=VALUE (repeatable)")
    parser.add_argument("--output", "-o", choices=("table", "json"), default="table")


#: verb -> (help, command, argument adder, aliases), merged into ctrpy.cli.cri.VERBS.
VERBS = {
    "create": ("create a container in a pod from config files", create, _create_args, ()),
    "start": ("start created containers", start, _ids, ()),
    "ps": ("list containers", ps, _ps_args, ()),
    "inspect": ("a container's status, verbose", inspect, _ids, ()),
    "logs": ("a container's log", logs, _logs_args, ()),
    "exec": ("run a command in a container (--sync)", exec_, _exec_args, ()),
    "stop": ("stop containers", stop, _stop_args, ()),
    "rm": ("remove containers", rm, _rm_args, ()),
    "stats": ("containers' resource usage", stats, _stats_args, ()),
}
