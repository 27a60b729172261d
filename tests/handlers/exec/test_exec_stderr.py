"""The stderr log's close: what the program wrote and portd had not read yet (its exit
seen first) is still logged, line by line, and the last partial line too."""

from __future__ import annotations

import os

from portd.handlers.exec.stderr import StderrLog
from portd.testing.kit import RecordingLog


def test_close_logs_what_is_still_in_the_pipe() -> None:
    read_end, write_end = os.pipe()
    log = RecordingLog()
    stderr = StderrLog(read_end, log)
    os.write(write_end, b"first\nsecond\nno newline")
    os.close(write_end)
    stderr.close()  # never readable() before: the exit was seen first
    assert [e["line"] for e in log.named("program_stderr")] == ["first", "second", "no newline"]
    assert stderr.fd == -1


def test_close_with_a_writer_still_open_takes_what_is_there_and_stops() -> None:
    read_end, write_end = os.pipe()
    log = RecordingLog()
    stderr = StderrLog(read_end, log)
    os.write(write_end, b"left\n")
    try:
        stderr.close()  # a leftover holds the pipe open: no wait for its EOF
    finally:
        os.close(write_end)
    assert [e["line"] for e in log.named("program_stderr")] == ["left"]
