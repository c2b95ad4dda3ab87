"""The CRI log format without a container: lines into records, timestamps, URIs, the file.

The splitting cases mirror containerd's own table for ``redirectLogs`` (pkg/cri/io), so that
a log written by ctrpy's shim reads like one written by containerd's CRI plugin.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from ctrpy import cio
from ctrpy.errors import CtrpyError, InvalidArgument
from ctrpy.shim import crilog
from ctrpy.shim.crilog import FULL, PARTIAL, Clock, LineSplitter, LogFile

P, F = PARTIAL, FULL
MAX = 4096 * 4


def split(data: bytes | list[bytes], max_line_size: int = MAX) -> list[tuple[bytes, bytes]]:
    """Every record of a whole stream, fed in the given pieces."""
    lines = LineSplitter(max_line_size)
    records = []
    for piece in [data] if isinstance(data, bytes) else data:
        records += lines.feed(piece)
    return records + lines.finish()


def a(n: int) -> bytes:
    return b"a" * n


@pytest.mark.parametrize(
    ("data", "max_line_size", "expected"),
    [
        (b"one\ntwo\n", MAX, [(F, b"one"), (F, b"two")]),
        (b"one\ntwo", MAX, [(F, b"one"), (P, b"two")]),  # a partial line at EOF is P
        (b"", MAX, []),
        (b"\n\n", MAX, [(F, b""), (F, b"")]),  # empty lines are records
        (b"one\r\ntwo\r\n", MAX, [(F, b"one"), (F, b"two")]),
        (b"a\rb\n", MAX, [(F, b"a\rb")]),  # only \r right before \n goes
        (b"tail\r", MAX, [(P, b"tail\r")]),
        (a(MAX) + b"\n" + a(MAX) + b"\n", MAX, [(F, a(MAX)), (F, a(MAX))]),
        (a(MAX + 1) + b"\n", MAX, [(P, a(MAX)), (F, b"a")]),
        (a(MAX * 2) + b"\n", MAX, [(P, a(MAX)), (F, a(MAX))]),
        (a(MAX * 2 + 1) + b"\n", MAX, [(P, a(MAX)), (P, a(MAX)), (F, b"a")]),
        (a(MAX * 2), MAX, [(P, a(MAX)), (P, a(MAX))]),
        (a(6154) + b"\n", 6144, [(P, a(6144)), (F, a(10))]),
        (a(4096 * 10 + 10) + b"\n", 0, [(F, a(4096 * 10 + 10))]),  # 0: no limit
        (a(4096 * 10 + 20) + b"\n", -1, [(F, a(4096 * 10 + 20))]),  # negative: no limit
        (a(4095) + b"\r\n" + a(4095) + b"\r\n", -1, [(F, a(4095)), (F, a(4095))]),
        (a(4) + b"\r\n", 4, [(F, a(4))]),  # the \r of \r\n never makes a line too long
        (a(4) + b"\rX\n", 4, [(P, a(4)), (F, b"\rX")]),
        (a(4) + b"\r", 4, [(P, a(4)), (P, b"\r")]),
        (b"\x00\xff\xfe binary \x1b[0m\n", MAX, [(F, b"\x00\xff\xfe binary \x1b[0m")]),
    ],
)
def test_lines_become_records_as_in_containerd(
    data: bytes, max_line_size: int, expected: list[tuple[bytes, bytes]]
) -> None:
    assert split(data, max_line_size) == expected
    # However the stream arrives, byte by byte included, the records are the same.
    if len(data) < 200:
        assert split([bytes([b]) for b in data], max_line_size) == expected
    assert split([data[:7], data[7:100], data[100:]], max_line_size) == expected


def test_pieces_of_an_overlong_line_are_written_before_the_line_ends() -> None:
    lines = LineSplitter(4)
    assert lines.feed(b"abcd") == []  # may still be a whole line
    assert lines.feed(b"\r") == []  # may still be "abcd\r\n"
    assert lines.feed(b"e") == [(P, b"abcd")]
    assert lines.feed(b"fg") == []
    assert lines.feed(b"h") == [(P, b"\refg")]
    assert lines.feed(b"ij\nk") == [(F, b"hij")]
    assert lines.finish() == [(P, b"k")]
    assert lines.finish() == []


def test_held_bytes_stay_bounded_by_the_line_size() -> None:
    lines = LineSplitter(16)
    for _ in range(1000):
        lines.feed(b"x" * 1000)
        assert len(lines._pending) <= 16


def test_timestamps_are_rfc3339nano_as_go_formats_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        clock = Clock()
        base = 1_796_000_000 * 1_000_000_000  # 2026-12-01T...
        head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base // 1_000_000_000))
        assert clock.format(base + 123_456_789) == f"{head}.123456789Z".encode()
        assert clock.format(base + 120_000_000) == f"{head}.12Z".encode()  # zeros trimmed
        assert clock.format(base + 1) == f"{head}.000000001Z".encode()
        assert clock.format(base) == f"{head}Z".encode()  # no fraction at all
        monkeypatch.setenv("TZ", "XYZ-05:30")
        time.tzset()
        assert Clock().format(base + 5_000).endswith(b".000005+05:30")
        monkeypatch.setenv("TZ", "XYZ+03")
        time.tzset()
        assert Clock().format(base).endswith(b"-03:00")
    finally:
        monkeypatch.undo()  # TZ as it was, and the C library told
        time.tzset()
    # What the shim writes parses back to the time it was written.
    stamp = Clock().now().decode()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?(Z|[+-]\d\d:\d\d)", stamp)
    written = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    assert abs(written - time.time()) < 60


def test_records_are_formatted_with_stream_and_tag() -> None:
    data = crilog.format_records(b"T", crilog.STDERR, [(P, b"ab"), (F, b"")])
    assert data == b"T stderr P ab\nT stderr F \n"


def test_uris() -> None:
    uri = crilog.uri("/var/log/pods/x y/c/0.log", 100)
    assert crilog.is_uri(uri)
    assert crilog.parse_uri(uri) == crilog.Target("/var/log/pods/x y/c/0.log", 100)
    assert crilog.parse_uri("ctrpy-crilog:///l/0.log") == crilog.Target("/l/0.log", 16384)
    assert crilog.parse_uri("ctrpy-crilog:///l/0.log?max_line_size=-1").max_line_size == -1
    for bad in (
        "ctrpy-crilog://relative/0.log",
        "ctrpy-crilog:///",
        "ctrpy-crilog:///l/0.log?max_line_size=big",
        "ctrpy-crilog:///l/0.log?colour=red",
        "file:///l/0.log",
    ):
        with pytest.raises(InvalidArgument):
            crilog.parse_uri(bad)
    with pytest.raises(InvalidArgument):
        crilog.uri("relative.log")


def test_clients_may_pass_the_uri_as_a_log_uri() -> None:
    uri = crilog.uri("/l/0.log")
    assert cio.log_uri(uri) == cio.Config("", uri, uri)


def test_the_file_is_created_appended_and_reopened(tmp_path: Path) -> None:
    path = tmp_path / "pods" / "c" / "0.log"
    log = LogFile(str(path))  # the directories are made (containerd's openLogFile does too)
    try:
        assert path.stat().st_mode & 0o777 == 0o640
        assert path.parent.stat().st_mode & 0o777 == 0o755
        log.write(crilog.STDOUT, [(F, b"one")])
        os.rename(path, tmp_path / "rotated")
        log.write(crilog.STDOUT, [(F, b"two")])  # still the renamed file
        log.reopen()
        log.write(crilog.STDERR, [(F, b"three")])
        assert contents(tmp_path / "rotated") == [b"stdout F one", b"stdout F two"]
        assert contents(path) == [b"stderr F three"]
        # A reopen that cannot open the path says why and keeps writing to the old file.
        os.rename(path, tmp_path / "rotated.2")
        os.rmdir(path.parent)
        path.parent.write_text("not a directory")
        with pytest.raises(CtrpyError, match="failed to open the CRI log"):
            log.reopen()
        log.write(crilog.STDOUT, [(F, b"four")])
        assert contents(tmp_path / "rotated.2") == [b"stderr F three", b"stdout F four"]
    finally:
        log.close()
    log.write(crilog.STDOUT, [(F, b"dropped")])  # closed: nothing, no error


def contents(path: Path) -> list[bytes]:
    """The records of a log file without their timestamps."""
    return [line.split(b" ", 1)[1] for line in path.read_bytes().splitlines()]
