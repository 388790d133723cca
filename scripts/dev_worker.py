"""The development job worker (docker-compose.yml's `worker`): watchfiles restarts it
with SIGINT whenever a file under app/ changes.

Once it runs, the worker handles SIGINT itself: it finishes the jobs it holds and stops.
A change that lands while it is still importing (a few seconds) would end it with a
KeyboardInterrupt traceback in `make logs`; until the worker takes SIGINT over, it ends
the process quietly instead.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

INTERRUPTED = 128 + signal.SIGINT  # the exit status a shell gives a process SIGINT ended


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    # os._exit, not sys.exit: the SystemExit would be raised wherever the import is, and
    # code that catches BaseException there loses it; the worker then starts as if no
    # reload had come, and never stops. Nothing is held yet: nothing to clean up.
    os._exit(INTERRUPTED)


def main() -> int:
    signal.signal(signal.SIGINT, _exit_quietly)
    from app.worker import main as run_worker  # noqa: PLC0415  # after the handler: it is the slow part

    return run_worker()


if __name__ == "__main__":
    sys.exit(main())
