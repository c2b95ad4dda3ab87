"""``python -m bench [--rounds N] [--only CASE ...]``: run the cases and write the report."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from . import cases_images
from .harness import Measurement, daemons, write_report

CASES = {
    "import": cases_images.image_import,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="runs per daemon for the slow cases")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ctrpy-bench-"))
    measurements: list[Measurement] = []
    try:
        with daemons(work / "daemons") as d:
            for name in args.only or list(CASES):
                print(f"bench: {name} ...", file=sys.stderr, flush=True)
                measurements += CASES[name](d, work, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = write_report(measurements)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
