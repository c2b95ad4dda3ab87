"""Image import: `ctr images import` of a generated multi-layer image into each daemon."""

from __future__ import annotations

from pathlib import Path

from ctrpy.testimage import large_image, write_oci_layout_tar

from .harness import Daemons, Measurement, Target, alternate, timed


def image_import(d: Daemons, work: Path, rounds: int, size: int = 200 << 20, layers: int = 8) -> list[Measurement]:
    archive = work / "large.tar"
    if not archive.exists():
        write_oci_layout_tar(large_image(total_bytes=size, layers=layers, name="bench.local/large:1"), archive)

    def run(which: str, number: int) -> float:
        # A fresh namespace each round: both daemons write and unpack every layer again.
        namespace = f"bench-import-{number}"
        return timed(lambda: d.ctr(which, "images", "import", str(archive), namespace=namespace))

    measurement = Measurement(
        "image import", f"ctr images import, {size >> 20} MB in {layers} layers", "s", target=Target(1.0)
    )
    return [alternate(rounds, run, measurement)]
