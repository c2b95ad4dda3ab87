"""The ``[gc]`` section of ctrpyd's configuration."""

from __future__ import annotations

import dataclasses

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager import config


def test_defaults_are_containerds_but_for_the_schedule_delay() -> None:
    gc = config.Config().gc
    assert (gc.pause_threshold, gc.deletion_threshold, gc.mutation_threshold) == (0.02, 0, 100)
    assert (gc.schedule_delay, gc.startup_delay) == (1.0, 0.1)


def test_gc_section_reads_and_renders_back() -> None:
    text = (
        "[gc]\npause_threshold = 0.1\ndeletion_threshold = 5\nmutation_threshold = 0\n"
        "schedule_delay = 2\nstartup_delay = 0.25\n"
    )
    parsed = config.parse(text)
    assert parsed.gc == config.GcConfig(0.1, 5, 0, 2.0, 0.25)
    assert isinstance(parsed.gc.schedule_delay, float)
    assert config.parse(config.render(parsed)) == parsed
    assert config.parse("[gc]\nstartup_delay = 0\n").gc == dataclasses.replace(config.GcConfig(), startup_delay=0.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[gc]\ndelay = 1", r"unknown keys in \[gc\]"),
        ("[gc]\nschedule_delay = -1", "must not be negative"),
        ("[gc]\ndeletion_threshold = 1.5", "must be a int"),
        ("[gc]\nmutation_threshold = true", "must be a int"),
        ("[gc]\npause_threshold = 'low'", "must be a float"),
    ],
)
def test_bad_gc_settings_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        config.parse(text)
