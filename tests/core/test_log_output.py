"""The app's log lines: gathered per event-loop turn, written whole, never held back."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

from app.core.log_output import CoalescedHandler, CoalescedLoggerFactory, CoalescedOutput


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
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
