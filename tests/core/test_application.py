"""build_app(): what it sets up that no request shows."""

from __future__ import annotations

from app.core.config import Settings
from tests.conftest import with_overrides
from tests.core.conftest import build_core_app


def test_fastapi_opentelemetry_is_off_unless_enabled(settings: Settings) -> None:
    """Off, it costs nothing per request; on, FastAPI traces for the SDK you configure.
    FastAPI keeps its resolved telemetry config privately: its switches are what count."""
    off = build_core_app(settings)
    on = build_core_app(with_overrides(settings, opentelemetry_enabled=True))
    assert not any(off._telemetry[part] for part in ("tracing", "metrics", "logs"))
    assert all(on._telemetry[part] for part in ("tracing", "metrics", "logs"))
