"""The worker: the core job runner plus this service's jobs. Wiring only.
Entry point: `python -m app.worker` (the `worker` service)."""

from __future__ import annotations

import sys

from app.core.config import SettingsError, load_settings
from app.core.jobs.cleanup import register_cleanup
from app.core.jobs.worker import Jobs, run
from app.core.logging import configure_logging
from app.orders.jobs import register as register_orders


def create_jobs() -> Jobs:
    jobs = Jobs()
    register_orders(jobs)
    return jobs


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.effective_log_format)
    jobs = create_jobs()
    register_cleanup(jobs, settings)
    run(settings, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
