"""Registry pulls from a loopback docker-registry: a generated image of ``import_mb`` MB in 8
layers, pulled cold (a fresh namespace each round, so every blob is fetched and every layer
unpacked again) by

- ctrpyd on the server side (``ctrpy images pull --plain-http``, the Transfer service) against
  containerd 1.6 pulling with ``ctr images pull --plain-http`` (ctr does the registry work and
  writes through containerd's Content API; containerd 1.6 has no Transfer service);
- the stock ``ctr images pull --plain-http`` against each daemon (the client-side path through
  the Content API, which ctrpyd serves as well).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ctrpy.testimage import large_image, write_oci_layout_tar
from tests.support.registry import LocalRegistry, skopeo_copy

from .harness import Daemons, Measurement, Settings, Target, alternate, progress, timed

LAYERS = 8
CTRPY = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "ctrpy")


def registry_pull(d: Daemons, s: Settings) -> list[Measurement]:
    archive = d.work / f"pull-{s.import_mb}.tar"
    with LocalRegistry(d.work / "registry") as registry:
        ref = f"{registry.host}/bench/large:{s.import_mb}"
        if not archive.exists():
            write_oci_layout_tar(large_image(total_bytes=s.import_mb << 20, layers=LAYERS, name=ref), archive)
        progress(f"pull: pushing {s.import_mb} MB to the loopback registry")
        skopeo_copy(archive, ref)

        def server_side(which: str, number: int) -> float:
            namespace = f"{d.namespace}-pull-{number}"
            if which == "containerd":  # 1.6: the client does it (no Transfer service)
                return timed(lambda: d.ctr(which, "images", "pull", "--plain-http", ref, namespace=namespace))
            env = {**os.environ, "CTRPY_ADDRESS": d.address(which), "CTRPY_NAMESPACE": namespace}
            return timed(lambda: subprocess.run([CTRPY, "images", "pull", "--plain-http", ref], env=env, check=True,
                                                capture_output=True, timeout=600))

        def stock_ctr(which: str, number: int) -> float:
            namespace = f"{d.namespace}-ctrpull-{number}"
            return timed(lambda: d.ctr(which, "images", "pull", "--plain-http", ref, namespace=namespace))

        server = Measurement(
            "registry pull", f"pull {s.import_mb} MB in {LAYERS} layers, cold: ctrpyd server side "
            "(ctrpy images pull) vs containerd (ctr images pull)", "s", target=Target(1.0))
        client = Measurement(
            "registry pull", f"stock ctr images pull, {s.import_mb} MB in {LAYERS} layers, cold", "s",
            target=Target(1.0))
        return [alternate(s.rounds, server_side, server), alternate(s.rounds, stock_ctr, client)]
