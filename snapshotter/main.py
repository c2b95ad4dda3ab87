"""The ``ctrpy-snapshotter`` command: one snapshotter served over gRPC from its own process.

    ctrpy-snapshotter --address /run/ctrpy-snapshotter.sock --root /var/lib/ctrpy-snapshotter \\
        [--snapshotter overlayfs|native]

``--root`` is the snapshotter's own root (``metadata.db`` and ``snapshots/`` right inside it).
ctrpyd (``[proxy_plugins.NAME] type = "snapshot"``) or containerd (``proxy_plugins``) then use
it by address. At start the snapshotter's leftovers are cleaned up; SIGTERM or SIGINT stops
the server (calls in flight get a few seconds) and closes the snapshotter.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import structlog

from ctrpy.errors import CtrpyError

from .base import Snapshotter

log = structlog.get_logger(__name__)

BACKENDS = ("overlayfs", "native")
SHUTDOWN_GRACE_SECONDS = 5.0
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctrpy-snapshotter",
        description="Serve one snapshotter as containerd's Snapshots gRPC service (a proxy plugin).",
    )
    parser.add_argument("--address", "-a", required=True, help="unix socket to serve on")
    parser.add_argument("--root", required=True, type=Path, help="the snapshotter's root directory")
    parser.add_argument("--snapshotter", "-s", choices=BACKENDS, default="overlayfs")
    parser.add_argument("--log-level", "-l", choices=_LOG_LEVELS, default="info")
    return parser


def open_backend(kind: str, root: Path) -> Snapshotter:
    """The snapshotter ``kind`` (``overlayfs`` or ``native``) on ``root``.

    Raises FailedPrecondition when overlayfs cannot work there.
    """
    if kind == "native":
        from .native import NativeSnapshotter

        return NativeSnapshotter(root)
    from .overlay import OverlaySnapshotter

    return OverlaySnapshotter(root)


def _configure_logging(level: str) -> None:
    # ctrpy.manager.logsetup would invert the package's import direction; this is its small twin.
    import logging

    levels = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "error": logging.ERROR,
    }
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levels[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    from .server import make_server  # grpc is loaded only once the arguments are good

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("shutting down", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        backend = open_backend(args.snapshotter, args.root)
    except (CtrpyError, OSError) as exc:
        print(f"ctrpy-snapshotter: {exc}", file=sys.stderr)
        return 1
    try:
        backend.cleanup()
        server = make_server(backend, args.address)
    except (CtrpyError, OSError) as exc:
        backend.close()
        print(f"ctrpy-snapshotter: {exc}", file=sys.stderr)
        return 1
    log.info("serving", address=args.address, root=str(args.root), snapshotter=args.snapshotter)
    try:
        stop.wait()
    finally:
        server.stop(SHUTDOWN_GRACE_SECONDS).wait()
        backend.close()
        Path(args.address).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
