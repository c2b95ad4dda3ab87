"""``ctrpy cri runp|pods|inspectp|stopp|rmp``: pod sandboxes from the command line, as crictl.

``runp`` takes a pod config file in the CRI's JSON form (crictl's ``pod-config.json``: the
``PodSandboxConfig`` message with camelCase or snake_case names) and prints the new sandbox id.
``pods`` prints crictl's table (``--id``, ``--name``, ``--namespace``, ``--state``, ``--label``
filter it; ``-q`` prints ids only). ``inspectp`` prints the status and the verbose info as JSON.
``stopp``/``rmp`` take ids (or unique prefixes) and say what they did, in crictl's words.
"""

from __future__ import annotations

import argparse
import sys

from google.protobuf import json_format

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri import CriClient
from ctrpy.errors import InvalidArgument

from . import crifmt, output

__all__ = ["VERBS"]

_STATES = {"ready": api.SANDBOX_READY, "notready": api.SANDBOX_NOTREADY}


def _read_config(path: str) -> api.PodSandboxConfig:
    try:
        with (sys.stdin if path == "-" else open(path)) as f:
            text = f.read()
        return json_format.Parse(text, api.PodSandboxConfig(), ignore_unknown_fields=False)
    except OSError as exc:
        raise InvalidArgument(f"pod config {path}: {exc.strerror or exc}") from None
    except json_format.ParseError as exc:
        raise InvalidArgument(f"pod config {path}: {exc}") from None


def runp(cri: CriClient, args: argparse.Namespace) -> int:
    print(cri.run_pod_sandbox(_read_config(args.config), args.runtime or ""))
    return 0


def _filter(args: argparse.Namespace) -> api.PodSandboxFilter | None:
    labels = {}
    for item in args.label or []:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise InvalidArgument(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    wanted = api.PodSandboxFilter(id=args.id or "", label_selector=labels)
    if args.state:
        wanted.state.state = _STATES[args.state.lower()]
    return wanted


def pods(cri: CriClient, args: argparse.Namespace) -> int:
    found = [p for p in cri.list_pod_sandbox(_filter(args))
             if (not args.name or args.name in p.metadata.name)
             and (not args.namespace or p.metadata.namespace == args.namespace)]
    found.sort(key=lambda p: p.created_at, reverse=True)
    if args.format == "json" or args.output == "json":
        output.emit_json({"items": [crifmt.as_dict(p) for p in found]})
        return 0
    if args.quiet:
        for pod in found:
            print(pod.id)
        return 0
    rows = [(p.id[:13], crifmt.age(p.created_at), api.PodSandboxState.Name(p.state), p.metadata.name,
             p.metadata.namespace, p.metadata.attempt, p.runtime_handler or "(default)") for p in found]
    output.table(("POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"), rows)
    return 0


def inspectp(cri: CriClient, args: argparse.Namespace) -> int:
    answers = []
    for sandbox_id in args.ids:
        response = cri.pod_sandbox_status(sandbox_id, verbose=True)
        answers.append(crifmt.with_info({"status": crifmt.as_dict(response.status)}, response.info))
    output.emit_json(answers[0] if len(answers) == 1 else answers)
    return 0


def stopp(cri: CriClient, args: argparse.Namespace) -> int:
    for sandbox_id in args.ids:
        cri.stop_pod_sandbox(sandbox_id)
        print(f"Stopped sandbox {sandbox_id}")
    return 0


def rmp(cri: CriClient, args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.all:
        ids += [p.id for p in cri.list_pod_sandbox()]
    if not ids:
        raise InvalidArgument("rmp: give sandbox ids, or --all")
    for sandbox_id in ids:
        cri.remove_pod_sandbox(sandbox_id)
        print(f"Removed sandbox {sandbox_id}")
    return 0


def _runp_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pod config JSON file (- for stdin)")
    parser.add_argument("--runtime", "-r", default="", help="runtime handler")


def _pods_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", default="", help="pods whose id starts with this")
    parser.add_argument("--name", default="", help="pods whose name contains this")
    parser.add_argument("--namespace", default="", help="pods of this Kubernetes namespace")
    parser.add_argument("--state", "-s", choices=("ready", "notready", "Ready", "NotReady"), default="")
    parser.add_argument("--label", action="append", help="KEY=VALUE (repeatable)")
    parser.add_argument("--quiet", "-q", action="store_true", help="only pod ids")
    parser.add_argument("--output", "-o", choices=("table", "json"), default="table")


def _ids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="+", metavar="POD-ID")


def _rmp_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="POD-ID")
    parser.add_argument("--all", "-a", action="store_true", help="remove every pod")
    parser.add_argument("--force", "-f", action="store_true", help="(always: a ready pod is stopped first)")


#: verb -> (help, command, argument adder, aliases), merged into ctrpy.cli.cri.VERBS.
VERBS = {
    "runp": ("run a pod sandbox from a pod config file", runp, _runp_args, ()),
    "pods": ("list pod sandboxes", pods, _pods_args, ()),
    "inspectp": ("a pod sandbox's status, verbose", inspectp, _ids, ()),
    "stopp": ("stop pod sandboxes", stopp, _ids, ()),
    "rmp": ("remove pod sandboxes", rmp, _rmp_args, ()),
}
