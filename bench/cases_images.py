"""Image import: `ctr images import` of a generated multi-layer image into each daemon."""

from __future__ import annotations

from ctrpy.testimage import large_image, write_oci_layout_tar

from .harness import Daemons, Measurement, Settings, Target, alternate, timed

LAYERS = 8


def image_import(d: Daemons, s: Settings) -> list[Measurement]:
    size = s.import_mb << 20
    archive = d.work / f"large-{s.import_mb}.tar"
    if not archive.exists():
        write_oci_layout_tar(large_image(total_bytes=size, layers=LAYERS, name="bench.local/large:1"), archive)

    def run(which: str, number: int) -> float:
        # A fresh namespace each round: both daemons write and unpack every layer again.
        namespace = f"{d.namespace}-import-{number}"
        return timed(lambda: d.ctr(which, "images", "import", str(archive), namespace=namespace))

    measurement = Measurement(
        "image import", f"ctr images import, {s.import_mb} MB in {LAYERS} layers", "s", target=Target(0.9)  # issue 13
    )
    return [alternate(s.rounds, run, measurement)]
