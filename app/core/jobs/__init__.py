"""Durable background jobs on Postgres (PgQueuer): enqueued on the request's own
transaction, run by `python -m app.worker` (docs/jobs.md)."""
