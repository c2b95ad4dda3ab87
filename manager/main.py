"""The ``ctrpyd`` command: parse flags, load the configuration, and serve."""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

from ctrpy.errors import CtrpyError

from . import config as configuration
from . import lazyssl


class _VersionAction(argparse.Action):
    """``--version``, with the version looked up only when asked: :func:`ctrpy.version.version`
    reads the installed distribution's metadata through ``importlib.metadata``, whose imports
    (email, zipfile, csv, importlib.resources) cost a serving daemon about 2 MiB of resident
    memory for one string it never prints."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from ctrpy.version import version

        sys.stdout.write(f"ctrpyd {version()}\n")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctrpyd", description="ctrpy's container manager daemon (containerd API v1 compatible)."
    )
    parser.add_argument("--version", "-v", action=_VersionAction, help="show program's version number and exit")
    parser.add_argument("--config", "-c", type=Path, help="TOML configuration file")
    parser.add_argument("--root", type=Path, help="durable root directory (default /var/lib/ctrpy)")
    parser.add_argument("--state", type=Path, help="volatile state directory (default /run/ctrpy)")
    parser.add_argument("--address", "-a", type=Path, help="unix socket to serve on")
    parser.add_argument("--log-level", "-l", choices=configuration.LOG_LEVELS)
    parser.add_argument("--log-format", choices=configuration.LOG_FORMATS)
    commands = parser.add_subparsers(dest="command")
    config_command = commands.add_parser("config", help="work with the configuration")
    config_command.add_argument("action", choices=["default", "dump"], help="print the defaults, or the effective config")
    return parser


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one, as Go programs (containerd) do at
    start: ctrpyd holds a few descriptors per task (its shim's channel, a pidfd), and a shell's
    usual 1024 would stop it short of 500 tasks. Containers get the limits their specs set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # as it was: not worth failing to start over


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        base = configuration.Config()
        loaded = configuration.load(args.config) if args.config else base
        config = configuration.validate(
            loaded.with_overrides(
                root=args.root,
                state=args.state,
                address=args.address,
                log_level=args.log_level,
                log_format=args.log_format,
            )
        )
    except (CtrpyError, OSError) as exc:
        print(f"ctrpyd: {exc}", file=sys.stderr)
        return 1
    if args.command == "config":
        sys.stdout.write(configuration.render(base if args.action == "default" else config))
        return 0
    lazyssl.import_asyncio()  # before structlog or grpc import it: see manager/lazyssl.py
    import asyncio

    from . import logsetup

    logsetup.configure(config.log_level, config.log_format)
    from .server import serve  # imported late: `ctrpyd config` should not load grpc

    _raise_open_files_limit()
    try:
        asyncio.run(serve(config))
    except CtrpyError as exc:
        print(f"ctrpyd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
