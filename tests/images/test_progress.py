"""The CLI's human sizes and ages, and its progress bar (drawn only on a terminal)."""

from __future__ import annotations

import io

import pytest

from ctrpy.cli.progress import Bar, human_bytes, human_duration, human_size


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("size", "text"), [
    (0, "0.0 B"), (1023, "1023.0 B"), (1024, "1.0 KiB"), (1033811, "1009.6 KiB"), (2 << 20, "2.0 MiB")])
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


@pytest.mark.parametrize(("size", "text"), [(370, "370B"), (2028032, "2.028MB"), (10240, "10.24kB")])
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
    (600, "10 minutes"), (3600, "About an hour"), (5 * 3600, "5 hours"), (3 * 86400, "3 days")])
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_bar_draws_on_a_terminal_only() -> None:
    plain = io.StringIO()
    bar = Bar("importing", plain)
    bar.update(5, 10)
    bar.finish()
    assert plain.getvalue() == ""

    tty = Terminal()
    bar = Bar("importing", tty, width=10)
    bar.update(5, 10)
    bar.update(10, 10)
    bar.finish()
    text = tty.getvalue()
    assert text.startswith("\rimporting [#####.....]  50% 5.0 B/10.0 B")
    assert "[##########] 100%" in text and text.endswith("\n")
