"""``python -m bench [--quick] [--runs N] [--rounds N] [--only CASE ...]``: run the cases, write the report."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import (
    cases_cri,
    cases_docker,
    cases_images,
    cases_latency,
    cases_metadata,
    cases_metrics,
    cases_pull,
    cases_scale,
    cases_storm,
    cases_throughput,
    cases_timeline,
)
from .harness import Daemons, Measurement, Settings, daemons, progress
from .report import write_report

Case = Callable[[Daemons, Settings], list[Measurement]]

CASES: dict[str, Case] = {
    "run": cases_latency.ctr_run,
    "api": cases_latency.api_run,
    "throughput": cases_throughput.throughput,
    "metadata": cases_metadata.metadata,
    "import": cases_images.image_import,
    "pull": cases_pull.registry_pull,
    "docker": cases_docker.docker_run,
    "cri": cases_cri.cri,
    "storm": cases_storm.pod_storm,
    "scale": cases_scale.scale,
    "metrics": cases_metrics.metrics,
    "tracing": cases_metrics.tracing_latency,
    "timeline": cases_timeline.timeline,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few runs, few containers")
    parser.add_argument("--runs", type=int, help="lifecycles per daemon in the latency cases (30)")
    parser.add_argument("--rounds", type=int, help="rounds per daemon of throughput, metadata, import (3)")
    parser.add_argument("--containers", type=int, help="containers at once in the throughput case (50)")
    parser.add_argument("--metadata", type=int, help="containers in the metadata case (1000)")
    parser.add_argument("--import-mb", type=int, help="size of the imported image (200)")
    parser.add_argument("--scale", type=int, nargs="+", metavar="N",
                        help="containers running at each level of the scale case (0 100 500)")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    overrides = {name: getattr(args, name) for name in ("runs", "rounds", "containers", "metadata", "import_mb")}
    if args.scale:
        overrides["scale"] = tuple(args.scale)
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    # Short: unix socket paths under it must stay within 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="ctrpy-bench-"))
    measurements: list[Measurement] = []
    began = time.monotonic()
    try:
        with daemons(work / "d") as d:
            measurements += cases_throughput.idle(d)
            for name in args.only or list(CASES):
                progress(f"{name} ...")
                measurements += CASES[name](d, settings)
            measurements += cases_throughput.idle_after(d)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    recorded = {**dataclasses.asdict(settings), "cases": " ".join(args.only or CASES),
                "minutes": round((time.monotonic() - began) / 60, 1)}
    report = write_report(measurements, recorded)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
