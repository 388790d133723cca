"""The worker: the core job runner plus this service's jobs. Wiring only.
Entry point: `python -m app.worker` (the `worker` service)."""

from __future__ import annotations

import sys

from app.core.config import Settings, SettingsError, load_settings
from app.core.jobs.cleanup import register_cleanup
from app.core.jobs.worker import Jobs, run
from app.core.logging import configure_logging
from app.orders.jobs import register as register_orders


def create_jobs(settings: Settings) -> Jobs:
    """Core's periodic cleanup, then each domain's jobs; `make resource` adds none."""
    jobs = Jobs()
    register_cleanup(jobs, settings)
    register_orders(jobs)
    return jobs


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.effective_log_format)
    run(settings, create_jobs(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
