"""Registry pulls from a loopback docker-registry: generated images of ``import_mb`` MB in 8
layers, pulled cold (an image no namespace of the daemon has pulled before, so every blob is
fetched and every layer unpacked) by

- ctrpyd on the server side (``ctrpy images pull --plain-http``, the Transfer service) against
  containerd 1.6 pulling with ``ctr images pull --plain-http`` (ctr does the registry work and
  writes through containerd's Content API; containerd 1.6 has no Transfer service);
- the stock ``ctr images pull --plain-http`` against each daemon (the client-side path through
  the Content API, which ctrpyd serves as well).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from pathlib import Path

from ctrpy.testimage import large_image, write_oci_layout_tar
from tests.support.registry import LocalRegistry, skopeo_copy

from .harness import Daemons, Measurement, Settings, Target, alternate, progress

LAYERS = 8
CTRPY = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "ctrpy")
CTR = shutil.which("ctr") or "/usr/bin/ctr"


def _phases(argv: list[str], env: dict[str, str] | None, marker: bytes) -> tuple[float, float]:
    """Run ``argv``; return (total seconds, seconds until ``marker`` last appeared on its output).

    The marker ends the download: ctr prints ``unpacking`` once every blob is fetched; ctrpy
    prints one line per layer event, and the last ``complete`` is the last blob in. What
    follows it is unpacking the download did not hide."""
    start = time.perf_counter()
    last = 0.0
    tail = b""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = process.stdout
    assert isinstance(out, io.BufferedReader)
    while chunk := out.read1(1 << 16):
        if marker in tail[-len(marker):] + chunk:
            last = time.perf_counter() - start
        tail = chunk
    _, errors = process.communicate(timeout=600)
    total = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {errors.decode(errors='replace').strip()}")
    return total, last or total


def registry_pull(d: Daemons, s: Settings) -> list[Measurement]:
    with LocalRegistry(d.work / "registry") as registry:
        # Both daemons keep one blob store for all namespaces and link a blob another namespace
        # already has without fetching it (containerd's "shared" content policy): a pull is cold
        # only if no namespace ever pulled its layers. So every pull of a round gets an image of
        # its own (another seed: other bytes in every layer), and each daemon pulls it once.
        refs: dict[tuple[str, int], str] = {}
        for kind in ("server", "ctr"):
            for number in range(s.rounds):
                seed = 1000 * (kind == "ctr") + number
                ref = f"{registry.host}/bench/large-{kind}:{s.import_mb}-{number}"
                archive = d.work / f"pull-{s.import_mb}-{seed}.tar"
                if not archive.exists():
                    image = large_image(total_bytes=s.import_mb << 20, layers=LAYERS, seed=seed, name=ref)
                    write_oci_layout_tar(image, archive)
                progress(f"pull: pushing {ref} to the loopback registry")
                skopeo_copy(archive, ref)
                refs[kind, number] = ref
        what = f"{s.import_mb} MB in {LAYERS} layers, cold"
        server = Measurement(
            "registry pull", f"pull {what}: ctrpyd server side (ctrpy images pull) vs containerd "
            "(ctr images pull)", "s", target=Target(1.0))
        server_download = Measurement("registry pull", "  of which: until the last blob is in", "s")
        server_unpack = Measurement("registry pull", "  of which: unpacking after the last blob", "s")
        client = Measurement("registry pull", f"stock ctr images pull, {what}", "s", target=Target(1.0))
        client_download = Measurement("registry pull", "  of which: download (ctr's fetch)", "s")
        client_unpack = Measurement("registry pull", "  of which: unpack (ctr's, after the fetch)", "s")

        def record(which: str, phases: tuple[float, float], download: Measurement, unpack: Measurement) -> float:
            getattr(download, which).append(phases[1])
            getattr(unpack, which).append(phases[0] - phases[1])
            return phases[0]

        def ctr_pull(which: str, namespace: str, ref: str) -> tuple[float, float]:
            argv = [CTR, "--address", d.address(which), "--namespace", namespace,
                    "images", "pull", "--plain-http", ref]
            return _phases(argv, None, b"unpacking")

        def server_side(which: str, number: int) -> float:
            namespace = f"{d.namespace}-pull-{number}"
            ref = refs["server", number]
            if which == "containerd":  # 1.6: the client does it (no Transfer service)
                phases = ctr_pull(which, namespace, ref)
            else:
                env = {**os.environ, "CTRPY_ADDRESS": d.address(which), "CTRPY_NAMESPACE": namespace}
                phases = _phases([CTRPY, "images", "pull", "--plain-http", ref], env, b": complete ")
            return record(which, phases, server_download, server_unpack)

        def stock_ctr(which: str, number: int) -> float:
            phases = ctr_pull(which, f"{d.namespace}-ctrpull-{number}", refs["ctr", number])
            return record(which, phases, client_download, client_unpack)

        return [alternate(s.rounds, server_side, server), server_download, server_unpack,
                alternate(s.rounds, stock_ctr, client), client_download, client_unpack]
