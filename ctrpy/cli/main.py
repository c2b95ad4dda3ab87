"""``ctrpy``: the command line for ctrpyd (and, since the API is the same, for containerd).

Commands read like ``ctr``'s: ``ctrpy NOUN VERB [ARGS]``. The global options ``--address``,
``--namespace`` and ``--timeout`` are applied once, by :class:`ctrpy.client.Client`; every command
prints an aligned table, or JSON with ``--format json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from ctrpy.client import Client, default_address, default_namespace
from ctrpy.errors import CtrpyError
from ctrpy.version import version

from . import (
    completion,
    containers,
    content,
    doctor,
    events,
    images,
    leases,
    namespaces,
    run,
    snapshots,
    system,
    tasks,
)
from . import cri as cri_commands

Command = Callable[[Client, argparse.Namespace], int]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctrpy", description="Manage containers through ctrpyd.")
    parser.add_argument(
        "--address", "-a", default=default_address(),
        help="ctrpyd's socket (env CTRPY_ADDRESS, default %(default)s)",
    )
    parser.add_argument(
        "--namespace", "-n", default=default_namespace(),
        help="namespace to work in (env CTRPY_NAMESPACE, default %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for each call")
    parser.add_argument("--version", "-v", action="version", version=f"ctrpy {version()}")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    nouns = parser.add_subparsers(dest="noun", metavar="COMMAND", required=True)
    for module in (system, namespaces, leases, containers, images, content, snapshots, doctor, tasks, run, events,
                   cri_commands, completion):
        module.register(nouns)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    run: Command | None = getattr(args, "run", None)
    if run is None:
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return 2
    try:
        with Client(args.address, args.namespace, args.timeout) as client:
            return run(client, args)
    except CtrpyError as exc:
        print(f"ctrpy: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def entry() -> NoReturn:
    """The ``ctrpy`` command: :func:`main`, then out at once. The interpreter's own shutdown is
    skipped: grpc's can hang on a stream thread still inside the C core after a failed call
    (seen under load after a failed pull had printed its error), and a command that has said
    what it had to say must end."""
    code = main()  # argparse's SystemExit (--help, usage errors) leaves the normal way
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe (| head): nothing more can be said anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
