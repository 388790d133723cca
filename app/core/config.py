"""Application settings: the only place the environment is read.

Values come from environment variables, then an optional `.env` file, then files
in /run/secrets (Docker secrets), in that order of precedence. A missing or
invalid value stops the process before it serves anything; a variable one typo away
from a setting's name is logged at start, with the name it likely means.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    PostgresDsn,
    RedisDsn,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SECRETS_DIR = Path("/run/secrets")

Environment = Literal["development", "test", "production"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "console"]
# JWS algorithms a token may be signed with (RFC 7518): public-key signatures only.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class SettingsError(RuntimeError):
    """The configuration is invalid; the message names each bad setting, never its value."""


class LoggingSettings(BaseSettings):
    """The settings logging needs. Gunicorn's master reads these alone (gunicorn_conf.py),
    so it can log in the app's format without holding the app's secrets."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        # Only read /run/secrets where it exists, so local runs do not warn about it.
        secrets_dir=SECRETS_DIR if SECRETS_DIR.is_dir() else None,
        # `LOG_FORMAT=` (as in .env.example) means "use the default", not "empty string".
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    environment: Environment = "development"
    log_level: LogLevel = "INFO"
    # None means "pick for the environment": json in production, console elsewhere.
    log_format: LogFormat | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.environment == "production" else "console"


class Settings(LoggingSettings):
    """Everything the app reads from its environment. The README's configuration
    table lists every field: name, default, meaning."""

    # repr=False: URLs carry passwords, and a settings object must be safe to print.
    database_url: PostgresDsn = Field(repr=False)
    redis_url: RedisDsn = Field(default=RedisDsn("redis://localhost:6379/0"), repr=False)
    cors_origins: Annotated[list[str], NoDecode] = []

    # A fixed-size pool: an overflow connection is closed on its return whenever the pool
    # is full, so bursty load would open and close connections all the time (a backend
    # fork, SCRAM auth, asyncpg setup each).
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    # Waiting for a pooled connection, connecting, and each statement are all bounded:
    # a slow or silent database costs a request a 503 after these, never a hang.
    db_pool_timeout: float = Field(default=1.0, gt=0)
    db_pool_recycle: int = Field(default=1800, ge=-1)
    # Off: a ping is a round trip on every checkout. A connection that died (Postgres
    # restarted) fails its request with a 503 instead, and SQLAlchemy then drops every
    # pooled connection older than that failure, so the next requests reconnect.
    db_pool_pre_ping: bool = False
    db_connect_timeout: float = Field(default=1.0, gt=0)
    db_statement_timeout: float = Field(default=2.0, gt=0)
    # Under the statement timeout, so that a wait for a lock ends as a lock timeout (its
    # own error: 409 for an Idempotency-Key still in use, app/core/idempotency.py).
    db_lock_timeout: float = Field(default=1.0, gt=0)
    db_idle_in_transaction_timeout: float = Field(default=10.0, gt=0)

    # Redis is a cache and a limiter: a few milliseconds on a LAN, then it is skipped. A
    # silent Redis (paused or hung: no reset) costs every request in flight this timeout
    # before the breaker opens (docs/chaos.md, the redis-pause fault). It also bounds the
    # wait for a pooled connection: a stall that long counts as a failure of Redis.
    redis_socket_timeout: float = Field(default=0.05, gt=0)
    redis_connect_timeout: float = Field(default=0.1, gt=0)
    redis_max_connections: int = Field(default=64, ge=1)
    redis_breaker_failures: int = Field(default=3, ge=1)
    redis_breaker_cooldown: float = Field(default=2.0, gt=0)

    health_check_timeout: float = Field(default=1.0, gt=0)
    cache_ttl_seconds: int = Field(default=300, ge=1)
    # The near cache, opt-in: > 0 keeps each worker's own copy of the entries it read
    # last for this long, dropped at once by any worker's invalidation (Postgres NOTIFY;
    # one more connection per worker). 0, the default: every cached read asks Redis.
    # app/core/near_cache.py says when it pays; docs/benchmarks.md, by how much.
    cache_local_ttl_seconds: float = Field(default=0, ge=0)
    cache_local_max_entries: int = Field(default=10_000, ge=0)
    # Requests per minute per client on routes limited with rate_limit("writes"); 0 disables.
    rate_limit_writes: int = Field(default=60, ge=0)
    # How long an Idempotency-Key's stored response is replayed (app/core/idempotency.py).
    idempotency_key_ttl_seconds: int = Field(default=24 * 60 * 60, ge=1)
    max_body_size: int = Field(default=1024 * 1024, ge=1)

    # Bearer tokens from the company's identity provider (docs/auth.md). Unset: tokens are
    # off and API keys alone authenticate.
    auth_issuer: str | None = None
    # The `aud` every token must carry: this API's identifier at the provider.
    auth_audience: str | None = None
    # Unset: the `jwks_uri` of the issuer's /.well-known/openid-configuration.
    auth_jwks_url: str | None = None
    auth_algorithms: Annotated[list[str], NoDecode] = ["RS256", "ES256"]
    # Failed authentications per minute per client address before 429; 0 disables.
    rate_limit_auth_failures: int = Field(default=20, ge=0)

    # Background jobs (app/core/jobs/, docs/jobs.md): jobs each worker runs at once.
    jobs_concurrency: int = Field(default=10, ge=2)
    # Retries before a job is kept as failed (it runs once more than this); each waits
    # twice the last, from 1 s, at most 5 min: 5 retries span about 30 s, 10 about 13.5 min.
    jobs_max_attempts: int = Field(default=5, ge=1)
    # Seconds without a heartbeat before a running job counts as abandoned and runs again.
    jobs_heartbeat_timeout: float = Field(default=30, ge=2)
    # Seconds a job may run, its statements and transaction included (not the api's
    # request-sized DB_STATEMENT_TIMEOUT and idle timeout); past it, the run fails and is
    # retried. Keep it a few seconds under the worker's stop grace period (60 s in the
    # stacks; a cut run takes up to 2 s more to roll back): a deploy then cuts no job.
    jobs_timeout: float = Field(default=50, gt=0)
    # Days the finished jobs' log is kept; the nightly cleanup drops older rows.
    jobs_retention_days: int = Field(default=7, ge=1)
    # Where each worker serves its metrics (docs/metrics.md), with METRICS_ENABLED.
    jobs_metrics_port: int = Field(default=9000, ge=1, le=65535)

    # Prometheus metrics (docs/metrics.md): the Gunicorn master serves them on METRICS_PORT.
    metrics_enabled: bool = True
    # FastAPI's native OpenTelemetry (traces, metrics and logs, sent to an OpenTelemetry SDK
    # you configure). Off by default: even with no SDK configured, finding that out costs
    # every request a measurable share of GET /health.
    opentelemetry_enabled: bool = False
    # Connections this instance may open to Postgres (its share of max_connections): Gunicorn
    # warns at start when workers x (DB_POOL_SIZE + DB_MAX_OVERFLOW + 1 cache listener)
    # exceeds it; 0 disables.
    db_connection_budget: int = Field(default=90, ge=0)

    @field_validator("database_url", mode="before")
    @classmethod
    def _use_asyncpg(cls, value: object) -> object:
        """Any Postgres URL (postgres://, postgresql://, with a driver such as +psycopg2
        or not, any case) is used with asyncpg: the only driver the image has. Without
        this, a URL naming another driver would pass validation, then fail in every
        worker when the engine is made."""
        if isinstance(value, str):
            scheme, separator, rest = value.partition("://")
            if separator and scheme.lower().partition("+")[0] in {"postgres", "postgresql"}:
                return "postgresql+asyncpg://" + rest
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("auth_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("auth_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        # Never `none`, never HMAC: with HS256 the issuer's public key would be the
        # secret, and anyone holding it could sign tokens.
        refused = [name for name in value if name not in ASYMMETRIC_ALGORITHMS]
        if refused or not value:
            raise ValueError(
                f"only asymmetric algorithms are accepted ({', '.join(ASYMMETRIC_ALGORITHMS)});"
                f" refused: {', '.join(refused) or 'an empty list'}"
            )
        return value

    @field_validator("auth_issuer", "auth_jwks_url")
    @classmethod
    def _a_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _auth_is_complete(self) -> Settings:
        if self.auth_issuer and not self.auth_audience:
            raise ValueError("AUTH_AUDIENCE is required when AUTH_ISSUER is set")
        if self.environment == "production":
            # The development issuer (and any key fetched in the clear) could be
            # impersonated by anyone on the path: production takes https only.
            for name, url in (
                ("AUTH_ISSUER", self.auth_issuer),
                ("AUTH_JWKS_URL", self.auth_jwks_url),
            ):
                if url and not url.startswith("https://"):
                    raise ValueError(f"{name} must be an https:// URL in production")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        # SQLAlchemy hands the URL's query to asyncpg.connect() as arguments: TLS is its
        # `ssl`, where a provider's libpq-style URL says `sslmode` (same values).
        return _rename_query_parameter(str(self.database_url), "sslmode", "ssl")

    @property
    def postgres_dsn(self) -> str:
        """The same database as a plain postgresql:// URL, for asyncpg used directly."""
        # asyncpg reads a DSN as libpq does: `sslmode`; an `ssl` there would be sent to
        # the server as a setting, and refused.
        dsn = str(self.database_url).replace("postgresql+asyncpg://", "postgresql://", 1)
        return _rename_query_parameter(dsn, "ssl", "sslmode")


def _rename_query_parameter(url: str, old: str, new: str) -> str:
    base, separator, query = url.partition("?")
    return base + separator + re.sub(rf"(^|&){old}=", rf"\g<1>{new}=", query)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting, named as its environment variable, without its value."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {name}: {message}" if name else f"  {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings() -> Settings:
    """Read and validate the settings, raising SettingsError with a readable message."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def misspelled_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """Variables that are not settings but nearly one (RATE_LIMT_WRITES), each with the
    setting it likely means. Other variables are ignored, as the environment holds many
    (PATH, Compose's own), so a misspelled name would otherwise be ignored in silence."""
    names = [name.upper() for name in Settings.model_fields]
    return {
        variable: close[0]
        for variable in environ
        if variable.upper() not in names
        and (close := [name for name in names if _one_edit_apart(variable.upper(), name)])
    }


def _one_edit_apart(a: str, b: str) -> bool:
    """One letter changed, added, dropped, or two neighbours swapped (REDIS_URI, LOG_LEVLE)."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        swapped = len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
        return len(diff) == 1 or (swapped and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
