"""Part of `make lint`: every setting the app reads is documented in .env.example, with
its default, and passed through by docker-compose.yml, so `SETTING=… make up` and .env
always work; and .env.example names no setting the app no longer reads."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from app.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
# Fixed by the compose file for the dev stack's own services, not passed through.
SET_BY_COMPOSE = {"ENVIRONMENT", "DATABASE_URL", "REDIS_URL", "LOG_FORMAT"}
STACK_SECTION = "# --- The development stack"


def main() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    example_text = (ROOT / ".env.example").read_text()
    example = set(re.findall(r"^([A-Z0-9_]+)=", example_text, re.MULTILINE))
    # Above this line, .env.example lists the app's settings; below, the dev stack's own.
    app_part = example_text.split(STACK_SECTION, 1)[0]
    stale = set(re.findall(r"^([A-Z0-9_]+)=", app_part, re.MULTILINE)) - settings
    compose = (ROOT / "docker-compose.yml").read_text()
    passed = set(re.findall(r"^    ([A-Z0-9_]+):", compose, re.MULTILINE))
    problems = [f"{name}: not in .env.example" for name in sorted(settings - example)]
    problems += [f"{name}: in .env.example, but no such setting" for name in sorted(stale)]
    problems += [
        f"{name}: not passed by docker-compose.yml (x-app environment)"
        for name in sorted(settings - passed - SET_BY_COMPOSE)
    ]
    problems += [
        f"{name}: .env.example says {value!r} ({read}), the default is {default!r}"
        for name, value, read, default in example_defaults_differ(app_part, settings)
    ]
    if problems:
        sys.exit("settings out of step:\n  " + "\n  ".join(problems))
    print(f"settings: all {len(settings)} in .env.example, with their defaults, and compose")


class ExampleSettings(Settings):
    """The app's settings read from the values given, nothing else: not the environment,
    .env or the secrets directory (the lint container's own settings would leak in)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def example_defaults_differ(app_part: str, settings: set[str]) -> list[tuple[str, str, Any, Any]]:
    """The settings whose value in .env.example is not their default, each read as the
    app reads it (its own validators: a comma list). An empty value is the default (the
    app ignores an empty variable)."""
    values = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", app_part, re.MULTILINE))
    required = {"database_url": values.get("DATABASE_URL", "")}  # no default to compare
    differ = []
    for name, value in values.items():
        field = name.lower()
        if name not in settings or field in required or not value:
            continue
        default = Settings.model_fields[field].get_default(call_default_factory=True)
        try:
            read = getattr(ExampleSettings(**required, **{field: value}), field)
        except ValidationError as error:
            read = f"refused: {error.errors()[0]['msg']}"
        if read != default:
            differ.append((name, value, read, default))
    return differ


if __name__ == "__main__":
    main()
