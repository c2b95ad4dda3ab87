"""``ctrpy-shim``: the command line of the shim.

    ctrpy-shim start    --namespace NS --id ID --bundle DIR --address SOCK --state-root DIR
                        [--runtime-binary runc] [--runtime-root DIR]
        Fork a detached shim serving ctrpy.shim.v1.TaskService over ttrpc, print its address,
        return. --address is ctrpyd's ttrpc socket, where task events are forwarded.
    ctrpy-shim delete   (same options)
        Clean up the bundle of a dead shim; print {"pid", "exit_status", "exited_at"} as JSON.
    ctrpy-shim template --socket PATH [--spare]
        Serve fork requests (see ctrpy.shim.template) until stdin closes; with --spare, keep a
        spare shim forked ahead of time (ctrpy.shim.spare).

Exit status: 0 on success, 1 with a message on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys

from ctrpy.errors import CtrpyError

from .config import ShimConfig


def _add_shim_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--address", default="", help="ctrpyd's ttrpc socket, for events")
    parser.add_argument("--state-root", required=True)
    parser.add_argument("--runtime-binary", default="runc")
    parser.add_argument("--runtime-root", default="")


def _config(args: argparse.Namespace) -> ShimConfig:
    return ShimConfig(
        namespace=args.namespace,
        id=args.id,
        bundle=args.bundle,
        address=args.address,
        state_root=args.state_root,
        runtime_binary=args.runtime_binary,
        runtime_root=args.runtime_root,
    )


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``ctrpy-shim``."""
    p = argparse.ArgumentParser(prog="ctrpy-shim", description="ctrpy's per-container shim")
    sub = p.add_subparsers(dest="command", required=True)
    _add_shim_options(sub.add_parser("start", help="start a detached shim and print its address"))
    _add_shim_options(sub.add_parser("delete", help="clean up the bundle of a dead shim"))
    template = sub.add_parser("template", help="fork shims on request")
    template.add_argument("--socket", required=True)
    template.add_argument("--spare", action="store_true", help="keep a spare shim forked ahead of time")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``ctrpy-shim``; returns the exit status."""
    args = parser().parse_args(argv)
    # Each command imports only what it needs: `delete` must not pay for the server.
    try:
        if args.command == "template":
            from . import template

            return template.run(args.socket, spare=args.spare)
        config = _config(args)
        if args.command == "start":
            from . import daemon

            reply = daemon.start(config)
            if "error" in reply:
                print(f"ctrpy-shim: {reply['error']}", file=sys.stderr)
                return 1
            print(reply["address"], flush=True)
            return 0
        from . import cleanup

        info = cleanup.delete_bundle(config)
        print(info.to_json())
        return 0
    except CtrpyError as exc:
        print(f"ctrpy-shim: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
