"""Settings: good values are read and normalised; each bad one is refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.core.config import Settings, SettingsError, load_settings, misspelled_settings

SECRET = "a-perfectly-fine-database-password"
REDIS_SECRET = "a-perfectly-fine-redis-password"
VALID = {
    "DATABASE_URL": f"postgresql://app:{SECRET}@db:5432/app",
    "REDIS_URL": f"redis://:{REDIS_SECRET}@redis:6379/0",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean environment holding only VALID, run from a folder without a .env file."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in VALID.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults(env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.environment == "development"
    assert settings.log_level == "INFO"
    assert settings.effective_log_format == "console"
    assert settings.cors_origins == []
    assert settings.db_pool_pre_ping is False
    # A fixed-size pool: overflow connections would be opened and closed under bursts.
    assert (settings.db_pool_size, settings.db_max_overflow) == (10, 0)


@pytest.mark.parametrize(
    "given",
    [
        "postgres://app:pw@db:5432/app",
        "postgresql://app:pw@db:5432/app",
        "postgresql+asyncpg://app:pw@db:5432/app",
        "postgresql+psycopg://app:pw@db:5432/app",
        "postgresql+psycopg2://app:pw@db:5432/app",
        "POSTGRESQL://app:pw@db:5432/app",
    ],
)
def test_database_url_always_uses_asyncpg(env: pytest.MonkeyPatch, given: str) -> None:
    env.setenv("DATABASE_URL", given)
    assert load_settings().sqlalchemy_url == "postgresql+asyncpg://app:pw@db:5432/app"


def test_production_logs_json_by_default(env: pytest.MonkeyPatch) -> None:
    env.setenv("ENVIRONMENT", "production")
    assert load_settings().effective_log_format == "json"
    env.setenv("LOG_FORMAT", "console")
    assert load_settings().effective_log_format == "console"


def test_empty_values_mean_unset(env: pytest.MonkeyPatch) -> None:
    env.setenv("LOG_FORMAT", "")
    env.setenv("CORS_ORIGINS", "")
    settings = load_settings()
    assert settings.log_format is None
    assert settings.cors_origins == []


def test_log_level_is_case_insensitive(env: pytest.MonkeyPatch) -> None:
    env.setenv("LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


def test_cors_origins_are_comma_separated(env: pytest.MonkeyPatch) -> None:
    env.setenv("CORS_ORIGINS", "https://a.example, https://b.example,")
    assert load_settings().cors_origins == ["https://a.example", "https://b.example"]


def test_values_are_read_from_dotenv(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("DATABASE_URL")
    (tmp_path / ".env").write_text(f"DATABASE_URL={VALID['DATABASE_URL']}\nLOG_LEVEL=WARNING\n")
    settings = load_settings()
    assert SECRET in settings.sqlalchemy_url
    assert settings.log_level == "WARNING"


def test_secrets_are_read_from_files(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Docker secrets: one file per setting, named after it, as in /run/secrets."""
    env.delenv("DATABASE_URL")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "database_url").write_text(VALID["DATABASE_URL"])
    settings = Settings(_secrets_dir=secrets)
    assert SECRET in settings.sqlalchemy_url


def test_secret_never_appears_in_repr(env: pytest.MonkeyPatch) -> None:
    shown = repr(load_settings())
    assert SECRET not in shown
    assert REDIS_SECRET not in shown


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("ENVIRONMENT", "staging", "'development', 'test' or 'production'"),
        ("DATABASE_URL", "mysql://app:pw@db/app", "URL scheme should be"),
        ("DATABASE_URL", "not a url", "DATABASE_URL"),
        ("REDIS_URL", "http://redis:6379", "URL scheme should be"),
        ("MAX_BODY_SIZE", "0", "greater than or equal to 1"),
        ("LOG_LEVEL", "LOUD", "'DEBUG'"),
        ("LOG_FORMAT", "xml", "'json' or 'console'"),
        ("DB_POOL_SIZE", "0", "greater than or equal to 1"),
        ("DB_POOL_TIMEOUT", "soon", "valid number"),
        ("DB_POOL_PRE_PING", "maybe", "valid boolean"),
        ("REDIS_SOCKET_TIMEOUT", "-1", "greater than 0"),
        ("RATE_LIMIT_WRITES", "-5", "greater than or equal to 0"),
    ],
)
def test_bad_value_is_refused_by_name(
    env: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    env.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert f"  {name}: " in message
    assert reason in message
    assert value not in message.replace(f"{name}:", "")  # the value is never echoed


def test_missing_required_setting_is_named(env: pytest.MonkeyPatch) -> None:
    env.delenv("DATABASE_URL")
    with pytest.raises(SettingsError, match="DATABASE_URL: Field required"):
        load_settings()


ROOT = Path(__file__).resolve().parents[2]


def test_a_misspelled_setting_is_named_with_the_one_it_means() -> None:
    typos = {"RATE_LIMT_WRITES", "db_pool_sise", "REDIS_URI", "LOG_LEVLE", "LOGLEVEL", "PATH"}
    assert misspelled_settings(dict.fromkeys(typos, "")) == {
        "RATE_LIMT_WRITES": "RATE_LIMIT_WRITES",
        "db_pool_sise": "DB_POOL_SIZE",
        "REDIS_URI": "REDIS_URL",
        "LOG_LEVLE": "LOG_LEVEL",
        "LOGLEVEL": "LOG_LEVEL",
    }


def test_no_variable_the_stack_itself_sets_is_taken_for_a_misspelling() -> None:
    """Every variable the env examples and compose files name, settings or not, and
    the images' own: none is reported (a warning at every start would be ignored)."""
    names = {"PATH", "HOME", "HOSTNAME", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    # Kubernetes' service links, for services a fork is likely to run beside this one.
    for service in ("DB", "POSTGRES", "REDIS", "API", "WORKER", "PGBOUNCER", "KUBERNETES"):
        names |= {f"{service}_PORT", f"{service}_SERVICE_HOST", f"{service}_SERVICE_PORT"}
    for path in [
        *ROOT.glob(".env*.example"),
        *ROOT.glob("docker-compose*.yml"),
        *ROOT.glob("deploy/**/*.yml"),
    ]:
        text = path.read_text()
        names |= set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", text))
    assert len(names) > 40
    assert misspelled_settings(dict.fromkeys(names, "")) == {}
