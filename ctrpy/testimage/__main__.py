"""Command line: build a test image archive and print what was written as JSON.

    python -m ctrpy.testimage busybox OUT.tar [--format oci|docker] [--name REF]
    python -m ctrpy.testimage multilayer OUT.tar [--format oci|docker] [--name REF]
    python -m ctrpy.testimage large OUT.tar [--size 200M] [--layers 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys

from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image, large_image, multilayer_image
from ctrpy.testimage.model import Image

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """Parse ``200M``, ``1G``, ``512K`` or a plain byte count (binary units).

    Raises ValueError on anything else.
    """
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"bad size {text!r}: want a number with an optional K, M or G")
    return int(number) * _UNITS[unit]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctrpy.testimage",
                                     description="Build a test container image archive.")
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind, default in (("busybox", "docker.io/library/busybox:latest"),
                          ("multilayer", "docker.io/library/multilayer:latest"),
                          ("large", "docker.io/library/large:latest")):
        sub = kinds.add_parser(kind)
        sub.add_argument("out", help="the archive to write")
        sub.add_argument("--format", choices=("oci", "docker"), default="oci")
        sub.add_argument("--name", default=default, help="full image reference")
        if kind == "large":
            sub.add_argument("--size", type=parse_size, default=200 << 20,
                             help="total data bytes (K, M, G suffixes; default 200M)")
            sub.add_argument("--layers", type=int, default=8)
            sub.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    image: Image
    try:
        if args.kind == "busybox":
            image = busybox_image(args.name)
        elif args.kind == "multilayer":
            image = multilayer_image(args.name)
        else:
            image = large_image(args.size, args.layers, args.seed, name=args.name)
        info = write_archive(image, args.out, args.format)
    except (OSError, ValueError) as err:
        print(f"testimage: {err}", file=sys.stderr)
        return 1
    json.dump(info.to_json(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
