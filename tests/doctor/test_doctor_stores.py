"""ctrpy doctor on the root: snapshotters out of step with their directories and with meta.db,
temporary leftovers, stale ingests, and content referenced but missing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from ctrpy.manager.content import ContentStore
from ctrpy.manager.doctor import Target, examine, run
from ctrpy.snapshotter.native import NativeSnapshotter
from ctrpy.snapshotter.overlay import OverlaySnapshotter

from .conftest import BUSYBOX, Daemon, Processes
from .helpers import doctor, doctor_json, problems, rows

DAY_NS = 86_400 * 10**9


def _query(daemon: Daemon, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(daemon.root / "meta.db")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _blob(daemon: Daemon, digest: str) -> Path:
    algorithm, encoded = digest.split(":")
    return daemon.root / "content" / "blobs" / algorithm / encoded


def _age(ingest_dir: Path, days: int) -> None:
    """Make an ingest look untouched for ``days`` days."""
    old = (ingest_dir / "data").stat().st_mtime_ns - days * DAY_NS
    for name in ("updatedat", "startedat"):
        (ingest_dir / name).write_text(str(old))
    os.utime(ingest_dir / "data", ns=(old, old))


def test_a_healthy_store_is_clean_and_a_running_ctrpyd_is_not_touched(
    loaded: tuple[Daemon, Processes],
) -> None:
    daemon, _ = loaded
    result = doctor(daemon)
    assert (result.returncode, rows(result)) == (0, []), result.stdout + result.stderr
    assert "no problems found" in result.stderr

    leftover = daemon.root / "snapshots" / "overlayfs" / "snapshots" / "new-xyz"
    leftover.mkdir()
    result = doctor(daemon)
    assert result.returncode == 1
    [row] = rows(result)
    assert row.split()[:2] == ["temp", str(leftover)]
    assert "ctrpyd is running" in result.stderr and "report only" in result.stderr

    refused = doctor(daemon, "--fix")
    assert refused.returncode == 2
    assert "ctrpyd is running" in refused.stderr and "stop it before repairing" in refused.stderr
    assert leftover.is_dir()  # nothing changed

    daemon.stop()
    fixed = doctor(daemon, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "remove: done" in rows(fixed)[0]
    assert not leftover.exists()
    assert (doctor(daemon).returncode, rows(doctor(daemon))) == (0, [])


def test_snapshot_directories_and_metadata_out_of_step(loaded: tuple[Daemon, Processes]) -> None:
    daemon, _ = loaded
    [(chain_id, layer_backend)] = _query(daemon, "SELECT key, backend_key FROM snapshots WHERE kind = 3")
    assert daemon.ctr("snapshots", "prepare", "extra", str(chain_id)).returncode == 0
    [(extra_backend,)] = _query(daemon, "SELECT backend_key FROM snapshots WHERE key = 'extra'")
    daemon.stop()

    overlay = daemon.root / "snapshots" / "overlayfs"
    with OverlaySnapshotter(overlay) as backend:
        backend.prepare("orphan-of-a-crash")  # a backend snapshot no namespace references
    conn = sqlite3.connect(overlay / "metadata.db")
    ids = dict(conn.execute("SELECT key, id FROM snapshots").fetchall())
    conn.close()
    extra_dir = ids[extra_backend]
    # The "extra" snapshot's directory vanishes behind the snapshotter's back.
    subprocess.run(["rm", "-rf", str(overlay / "snapshots" / str(extra_dir))], check=True)
    stray = overlay / "snapshots" / str(max(ids.values()) + 100)
    (stray / "fs").mkdir(parents=True)
    (overlay / "snapshots" / "rm-abc").mkdir()
    with NativeSnapshotter(daemon.root / "snapshots" / "native") as native:
        native.prepare("native-orphan")

    code, report = doctor_json(daemon)
    assert code == 1
    found = problems(report)
    assert {
        ("snapshots", str(stray)),
        ("temp", str(overlay / "snapshots" / "rm-abc")),
        ("snapshots", f"overlayfs:{extra_backend}"),  # metadata with no directory
        ("snapshots", "overlayfs:orphan-of-a-crash"),
        ("snapshots", "native:native-orphan"),
    } == found, report
    problem_of = {(f["object"], f["problem"]) for f in report["findings"]}
    assert any(o == f"overlayfs:{extra_backend}" and "metadata with no directory" in p for o, p in problem_of)

    code, report = doctor_json(daemon, "--fix")
    assert code == 0, report
    # Removing the record uncovered meta.db's row for it, which the next round dropped.
    assert ("snapshots", "default/overlayfs/extra") in problems(report)
    assert all(f["outcome"] and f["outcome"]["fixed"] for f in report["findings"]), report
    assert os.listdir(overlay / "snapshots") == [str(ids[str(layer_backend)])]  # the image's layer
    assert _query(daemon, "SELECT key FROM snapshots WHERE key = 'extra'") == []
    assert (doctor(daemon).returncode, rows(doctor(daemon))) == (0, [])

    daemon.start()  # the image still runs
    assert daemon.ctr("snapshots", "ls").stdout.count("Committed") == 1


def test_an_interrupted_commit_is_settled(loaded: tuple[Daemon, Processes]) -> None:
    daemon, _ = loaded
    [(chain_id,)] = _query(daemon, "SELECT key FROM snapshots WHERE kind = 3")
    assert daemon.ctr("snapshots", "prepare", "work", str(chain_id)).returncode == 0
    daemon.stop()
    # The crash came after the intent was written, before the snapshotter committed.
    conn = sqlite3.connect(daemon.root / "meta.db")
    conn.execute(
        "UPDATE snapshots SET commit_intent = ? WHERE key = 'work'",
        ('{"name": "done", "backend_key": "default/999/done", "labels": {}}',),
    )
    conn.commit()
    conn.close()
    target = Target.at(daemon.root, daemon.state)
    [finding] = examine(target)
    assert (finding.object, finding.repair) == ("default/overlayfs/work", "settle-commit")
    assert "not done" in finding.problem
    code, report = doctor_json(daemon, "--fix")
    assert code == 0 and report["findings"][0]["outcome"]["detail"] == "commit abandoned"
    assert _query(daemon, "SELECT commit_intent FROM snapshots WHERE key = 'work'") == [(None,)]


def test_stale_ingests_and_missing_content(loaded: tuple[Daemon, Processes]) -> None:
    daemon, _ = loaded
    [(target_digest,)] = _query(daemon, "SELECT target_digest FROM images WHERE name = ?", BUSYBOX)
    layers = [d for (d,) in _query(daemon, "SELECT digest FROM content") if d != target_digest]
    daemon.stop()

    store = ContentStore(daemon.root)
    with store.writer("default/abandoned") as writer:
        writer.write(b"half a layer")
    ingest_root = daemon.root / "content" / "ingest"
    [abandoned] = list(ingest_root.iterdir())
    _age(abandoned, days=2)
    with store.writer("default/recent") as writer:
        writer.write(b"still coming")
    lost = layers[0]
    os.chmod(_blob(daemon, lost), 0o644)
    _blob(daemon, lost).unlink()

    result = doctor(daemon)
    assert result.returncode == 1
    table = "\n".join(rows(result))
    assert str(abandoned) in table and "stale ingest" in table and "default/abandoned" in table
    assert f"default/{lost}" in table and "blob file is missing" in table
    assert "recent" not in table  # a fresh ingest may still be resumed

    code, report = doctor_json(daemon, "--fix")
    assert code == 0, report
    assert not abandoned.exists()
    assert [s.ref for s in store.list_statuses()] == ["default/recent"]
    assert _query(daemon, "SELECT 1 FROM content WHERE digest = ?", lost) == []

    # An image whose target blob is gone is only reported.
    os.chmod(_blob(daemon, target_digest), 0o644)
    _blob(daemon, target_digest).unlink()
    code, report = doctor_json(daemon, "--fix")
    assert code == 1
    image = next(f for f in report["findings"] if f["check"] == "images")
    assert image["object"] == f"default/{BUSYBOX}" and not image["fixable"]
    assert image["action"] == "none (report only)"
    assert [(f["check"], f["object"]) for f in report["remaining"]] == [("images", f"default/{BUSYBOX}")]
    assert _query(daemon, "SELECT name FROM images") == [(BUSYBOX,)]


def test_without_meta_db_no_snapshot_is_taken_for_garbage(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with NativeSnapshotter(root / "snapshots" / "native") as native:
        native.prepare("precious")
    target = Target.at(root, tmp_path / "state")
    [finding] = examine(target)
    assert (finding.object, finding.fixable) == (str(root / "meta.db"), False)
    report = run(target, fix=True)
    assert not report.ok and report.outcomes == ()
    with NativeSnapshotter(root / "snapshots" / "native") as native:
        assert [i.name for i in native.walk()] == ["precious"]
