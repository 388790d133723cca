"""The app's log lines: gathered per event-loop turn, written whole, never held back."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

from app.core.log_output import (
    ATOMIC_WRITE,
    CoalescedHandler,
    CoalescedLoggerFactory,
    CoalescedOutput,
)


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.sizes: list[int] = []

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        self.sizes.append(len(data))
        return super().write(data)


async def test_lines_of_one_loop_turn_go_out_in_one_write_in_order() -> None:
    stream = CountingStream()
    output = CoalescedOutput(stream)
    for n in range(5):
        output.write_line(f"line {n}\n".encode())
    assert stream.writes == 0  # not before the loop's turn ends
    await asyncio.sleep(0)
    assert stream.getvalue() == b"".join(f"line {n}\n".encode() for n in range(5))
    assert stream.writes == 1


async def test_a_large_turn_goes_out_in_atomic_writes_of_whole_lines() -> None:
    """Every worker shares stdout's pipe: a write over PIPE_BUF may be split, and another
    worker's lines land inside one of this one's."""
    stream = CountingStream()
    output = CoalescedOutput(stream)
    lines = [f"{n:04d} {'x' * 195}\n".encode() for n in range(100)]  # 20,000 bytes
    long_line = b"y" * (ATOMIC_WRITE + 10) + b"\n"
    for line in [*lines[:50], long_line, *lines[50:]]:
        output.write_line(line)
    await asyncio.sleep(0)
    assert stream.getvalue() == b"".join([*lines[:50], long_line, *lines[50:]])
    assert len(long_line) in stream.sizes  # alone
    assert all(size <= ATOMIC_WRITE for size in stream.sizes if size != len(long_line))
    assert stream.writes <= 2 + 20_000 // (ATOMIC_WRITE - 200)  # still batched
    written = stream.getvalue()
    ends = [sum(stream.sizes[: n + 1]) for n in range(len(stream.sizes))]
    assert all(written[end - 1 : end] == b"\n" for end in ends)  # each write whole lines


async def test_each_turn_is_written_before_the_next() -> None:
    stream = CountingStream()
    output = CoalescedOutput(stream)
    output.write_line(b"first\n")
    await asyncio.sleep(0)
    output.write_line(b"second\n")
    await asyncio.sleep(0)
    assert (stream.getvalue(), stream.writes) == (b"first\nsecond\n", 2)


def test_outside_a_loop_a_line_is_written_at_once() -> None:
    stream = CountingStream()
    CoalescedOutput(stream).write_line(b"at start-up\n")
    assert stream.getvalue() == b"at start-up\n"


async def test_a_line_from_another_thread_is_written_at_once_with_what_was_pending() -> None:
    stream = CountingStream()
    output = CoalescedOutput(stream)
    output.write_line(b"from the loop\n")
    thread = threading.Thread(target=output.write_line, args=(b"from a thread\n",))
    thread.start()
    thread.join()
    assert stream.getvalue() == b"from the loop\nfrom a thread\n"
    await asyncio.sleep(0)  # the scheduled flush finds nothing left to write
    assert stream.writes == 1


async def test_the_structlog_logger_writes_lines_and_carries_its_name() -> None:
    stream = CountingStream()
    logger = CoalescedLoggerFactory(CoalescedOutput(stream))("app.access")
    assert logger.name == "app.access"
    logger.info(b'{"event":"request"}')
    logger.error(b'{"event":"failed"}')
    await asyncio.sleep(0)
    assert stream.getvalue() == b'{"event":"request"}\n{"event":"failed"}\n'


async def test_library_records_share_the_output_and_keep_the_order_logged() -> None:
    stream = CountingStream()
    output = CoalescedOutput(stream)
    app_logger = CoalescedLoggerFactory(output)("app")
    handler = CoalescedHandler(output)
    library = logging.getLogger("tests.library")
    library.addHandler(handler)
    library.propagate = False
    try:
        app_logger.info(b"app first")
        library.warning("library second")
        app_logger.info(b"app third")
    finally:
        library.removeHandler(handler)
        library.propagate = True
    await asyncio.sleep(0)
    assert stream.getvalue() == b"app first\nlibrary second\napp third\n"
    assert stream.writes == 1
