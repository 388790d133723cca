"""Part of `make lint`: every setting the app reads is documented in .env.example and
passed through by docker-compose.yml, so `SETTING=… make up` and .env always work;
and .env.example names no setting the app no longer reads."""

from __future__ import annotations

import re
import sys
from pathlib import Path

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
    if problems:
        sys.exit("settings out of step:\n  " + "\n  ".join(problems))
    print(f"settings: all {len(settings)} in .env.example and docker-compose.yml")


if __name__ == "__main__":
    main()
