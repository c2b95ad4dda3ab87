"""Command line: write the pause image archive and print what was written as JSON.

    python -m ctrpy.pause OUT.tar [--name REF] [--arch amd64|arm64]
    python -m ctrpy.pause --binary OUT [--arch amd64|arm64]     # the bare executable
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ctrpy.pause.elf import TARGETS, pause_executable
from ctrpy.pause.image import DEFAULT_NAME, write_pause_archive


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctrpy.pause",
                                     description="Write ctrpy's pause image as an OCI layout tar.")
    parser.add_argument("out", help="the archive (or, with --binary, the executable) to write")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"full image reference (default {DEFAULT_NAME})")
    parser.add_argument("--arch", choices=sorted(TARGETS), help="architecture (default: this machine's)")
    parser.add_argument("--binary", action="store_true", help="write only the pause executable")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.binary:
            data = pause_executable(args.arch)
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            return 0
        info = write_pause_archive(args.out, args.name, args.arch)
    except (OSError, ValueError) as err:
        print(f"pause: {err}", file=sys.stderr)
        return 1
    json.dump(info.to_json(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
