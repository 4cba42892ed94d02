"""common.progress: a bar on a terminal, status lines elsewhere, nothing when disabled."""
from __future__ import annotations

import io
import logging
import os
import pty

from tki_sdk.common.progress import LineStatus, progress_bar


def test_off_a_terminal_status_lines_are_logged_not_carriage_returns(caplog):
    stream = io.StringIO()  # not a terminal
    with caplog.at_level(logging.INFO, logger="tki_sdk.progress"):
        with progress_bar(1000, "embed", unit="img", stream=stream, interval=0.0) as bar:
            for _ in range(10):
                bar.update(100)
    assert stream.getvalue() == ""  # nothing written to the stream itself
    lines = [r.getMessage() for r in caplog.records if r.name == "tki_sdk.progress"]
    assert len(lines) == 11 and lines[-1].startswith("embed: 1000/1000 img (100%)")
    assert not any("\r" in ln for ln in lines)


def test_status_lines_are_rate_limited(caplog):
    with caplog.at_level(logging.INFO, logger="tki_sdk.progress"):
        bar = LineStatus(10_000, "add", "vec", interval=3600.0)
        for _ in range(10_000):
            bar.update(1)
        bar.close()
    assert len([r for r in caplog.records if r.name == "tki_sdk.progress"]) == 1  # the final line only


def test_a_terminal_gets_a_tqdm_bar():
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w") as tty:
            bar = progress_bar(5, "train", stream=tty)
            assert type(bar).__module__.startswith("tqdm")
            bar.close()
    finally:
        os.close(master)


def test_disabled_shows_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="tki_sdk.progress"):
        with progress_bar(3, "x", enabled=False, interval=0.0) as bar:
            bar.update(3)
    assert not caplog.records
