"""Where the app's log lines go: stdout, one write per event-loop turn.

Under load, an access line per request written on its own is a large share of the
request: each write is a system call, and on a container host each one wakes the
runtime's log pipeline (containerd's shim, then dockerd's log driver), which takes
CPU from the same cores (docs/benchmarks.md has the figures). So lines logged while
the event loop runs are gathered and written together at the end of the loop's
current turn (`call_soon`): a busy worker writes dozens of lines at once, an idle one
writes each line a few microseconds later. Public APIs only: structlog's logger
factory protocol and a `logging.Handler` (tests/core/test_log_output.py).

A batch goes out in writes of at most PIPE_BUF bytes, each of whole lines: every
Gunicorn worker writes to the same stdout pipe, and only a write that size is atomic,
so a larger one, split when the pipe is full, would let another worker's lines land
inside one of ours.

Nothing waits on a timer, so nothing is held back: a line is out before the loop
sleeps again. A worker killed with SIGKILL loses only the lines of the turn it was
in. Outside the loop (start-up, scripts, other threads) a line is written at once.
The app's lines (structlog) and the libraries' records (logging) share one output,
so they stay in the order they were logged.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import select
import sys
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

# The most a write to a pipe may carry and stay whole beside other processes' writes.
ATOMIC_WRITE = getattr(select, "PIPE_BUF", 512)


class CoalescedOutput:
    """Complete lines, written in batches; each batch is one write() of whole lines."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream  # None: whatever sys.stdout is when a batch is written
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._lock = threading.Lock()

    def write_line(self, line: bytes) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending.append(line)
            if loop is not None and self._flush_scheduled:
                return
            self._flush_scheduled = loop is not None
        if loop is None:
            self.flush()
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
            self._flush_scheduled = False
        if lines:
            stream = self._stream or sys.stdout.buffer
            for chunk in _atomic_chunks(lines):
                stream.write(chunk)
                stream.flush()  # one write() each: the buffer would join them again


def _atomic_chunks(lines: list[bytes]) -> Iterator[bytes]:
    """The lines, joined into chunks of at most ATOMIC_WRITE bytes (a longer line alone)."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > ATOMIC_WRITE:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield b"".join(chunk)


STDOUT = CoalescedOutput()
atexit.register(STDOUT.flush)  # what the last turn of the loop had not written yet


class CoalescedLogger:
    """A structlog logger (what `BytesLogger` is) that hands its lines to a CoalescedOutput."""

    def __init__(self, output: CoalescedOutput, name: str | None = None) -> None:
        self._output = output
        self.name = name  # what get_logger(name) was given: add_logger_name reads it

    def msg(self, message: bytes) -> None:
        self._output.write_line(message + b"\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class CoalescedLoggerFactory:
    """structlog's `logger_factory`: every logger shares one output, stdout by default."""

    def __init__(self, output: CoalescedOutput = STDOUT) -> None:
        self.output = output

    def __call__(self, *args: Any) -> CoalescedLogger:
        return CoalescedLogger(self.output, name=args[0] if args else None)


class CoalescedHandler(logging.Handler):
    """The standard library's handler for library records (uvicorn, gunicorn, SQLAlchemy):
    the same output as the app's own lines, so both kinds stay in the order logged."""

    def __init__(self, output: CoalescedOutput = STDOUT) -> None:
        super().__init__()
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.output.write_line(self.format(record).encode() + b"\n")
        except Exception:  # logging's contract: report, never raise
            self.handleError(record)
