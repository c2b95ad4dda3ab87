"""Client-side stdio (ctrpy.cio) on real FIFOs, with the test playing the shim's part."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from ctrpy import cio
from ctrpy.errors import InvalidArgument


def test_fifo_set_new_and_remove(tmp_path: Path) -> None:
    fifos = cio.FIFOSet.new("c1", terminal=False, fifo_dir=str(tmp_path / "fifo"))
    config = fifos.config
    assert [os.path.basename(p) for p in config.paths()] == ["c1-stdin", "c1-stdout", "c1-stderr"]
    assert os.path.dirname(config.stdin).startswith(str(tmp_path / "fifo") + "/")
    for path in config.paths():
        assert stat.S_ISFIFO(os.stat(path).st_mode)
    fifos.remove()
    assert list((tmp_path / "fifo").iterdir()) == []
    terminal = cio.FIFOSet.new("c2", terminal=True, fifo_dir=str(tmp_path / "fifo"))
    assert terminal.config.stderr == "" and terminal.config.terminal
    terminal.remove()


def test_load_removes_only_fifos(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("keep me")
    made = cio.FIFOSet.new("c1", terminal=False, fifo_dir=str(tmp_path / "fifo"))
    loaded = cio.FIFOSet.load(cio.Config(made.config.stdin, made.config.stdout, str(log)))
    loaded.remove()
    assert log.read_text() == "keep me"
    assert not os.path.exists(made.config.stdout)
    assert os.path.exists(made.config.stderr)  # not named by the loaded config
    made.remove()


def test_log_uri() -> None:
    assert cio.log_uri("file:///var/log/x") == cio.Config("", "file:///var/log/x", "file:///var/log/x")
    with pytest.raises(InvalidArgument):
        cio.log_uri("/var/log/x")


def test_attached_copies_both_ways(tmp_path: Path) -> None:
    fifos = cio.FIFOSet.new("p1", terminal=False, fifo_dir=str(tmp_path / "fifo"))
    our_in_r, our_in_w = os.pipe()
    our_out_r, our_out_w = os.pipe()
    our_err_r, our_err_w = os.pipe()
    attached = cio.Attached(fifos, cio.Streams(stdin=our_in_r, stdout=our_out_w, stderr=our_err_w))
    events: list[str] = []
    # The "shim": opens its ends after ours, as a real one does during Tasks.Create.
    shim_in = os.open(fifos.config.stdin, os.O_RDONLY)
    shim_out = os.open(fifos.config.stdout, os.O_WRONLY)
    shim_err = os.open(fifos.config.stderr, os.O_WRONLY)
    received = bytearray()

    def shim_reads_stdin() -> None:
        while data := os.read(shim_in, 4096):
            received.extend(data)
        events.append("shim saw EOF")

    reader = threading.Thread(target=shim_reads_stdin)
    reader.start()

    def close_io() -> None:
        # Our end must be closed already: the shim reaches EOF without anything else happening.
        reader.join(30)
        events.append("CloseIO")

    attached.start_stdin(close_io)
    os.write(our_in_w, b"hello ")
    os.write(our_in_w, b"world")
    os.close(our_in_w)
    reader.join(30)
    os.write(shim_out, b"out")
    os.write(shim_err, b"err")
    os.close(shim_out)
    os.close(shim_err)
    attached.wait()  # both outputs reached EOF
    attached.close()
    os.close(shim_in)
    assert bytes(received) == b"hello world"
    # our end was closed (the shim saw EOF) before CloseIO was sent
    assert events == ["shim saw EOF", "CloseIO"]
    os.close(our_out_w)
    os.close(our_err_w)
    assert os.read(our_out_r, 100) == b"out"
    assert os.read(our_err_r, 100) == b"err"
    assert list((tmp_path / "fifo").iterdir()) == []
    for fd in (our_in_r, our_out_r, our_err_r):
        os.close(fd)


def test_attached_close_without_a_writer(tmp_path: Path) -> None:
    """A process that never opened its FIFOs (creation failed) must not hang close()."""
    fifos = cio.FIFOSet.new("p2", terminal=False, fifo_dir=str(tmp_path / "fifo"))
    r, w = os.pipe()
    attached = cio.Attached(fifos, cio.Streams(stdin=r, stdout=w, stderr=w))
    attached.start_stdin(None)
    attached.close()
    assert list((tmp_path / "fifo").iterdir()) == []
    os.close(r)
    os.close(w)


def test_held_keeps_output_for_later(tmp_path: Path) -> None:
    fifos = cio.FIFOSet.new("p3", terminal=True, fifo_dir=str(tmp_path / "fifo"))
    held = cio.Held(fifos)
    # With our read end held, a writer that insists on a reader can open at once.
    writer = os.open(fifos.config.stdout, os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, b"later")
    held.close(remove=False)
    # The writer still holds the FIFO, so what it wrote waits there for an attach.
    reader = os.open(fifos.config.stdout, os.O_RDONLY | os.O_NONBLOCK)
    os.close(writer)
    assert os.read(reader, 100) == b"later"
    os.close(reader)
    fifos.remove()
    assert list((tmp_path / "fifo").iterdir()) == []
