"""The driver's stderr, relayed into the launcher's log line by line."""

from __future__ import annotations

import logging
import os
import socket
import subprocess

import pytest

from fusefs.launch import DriverProcess


def relay(text: bytes, caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    read_end, write_end = os.pipe()
    os.write(write_end, text)
    os.close(write_end)
    process = subprocess.Popen(["true"])
    process.wait()
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours, caplog.at_level(logging.DEBUG, logger="pyfsmount"):
        DriverProcess(process, ours).forward_log(read_end)
    return [(r.levelno, r.getMessage()) for r in caplog.records]


def test_log_records_keep_their_level(caplog: pytest.LogCaptureFixture) -> None:
    lines = relay(b"ERROR: read(12): EIO: bad block\nDEBUG: lookup(1, b'a')\n", caplog)
    assert lines == [
        (logging.ERROR, "read(12): EIO: bad block"),
        (logging.DEBUG, "lookup(1, b'a')"),
    ]


def test_anything_else_is_relayed_whole_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    text = b'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad\n'
    assert relay(text, caplog) == [
        (logging.WARNING, "Traceback (most recent call last):"),
        (logging.WARNING, '  File "x.py", line 1'),
        (logging.WARNING, "ValueError: bad"),
    ]
