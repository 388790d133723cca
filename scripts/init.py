"""`make init`: write .env, if there is none, from .env.example: a fresh password for
the dev database (Python's `secrets`), this checkout's Compose project name, and host
ports that are free right now (so a second clone on this machine does not clash); the
other settings commented out, at their defaults. On the template's own checkout,
`make init name=acme-orders` first makes the fork (template/make_fork.py); here, a
name other than the service's is refused.

Standard library only, Python 3.11 or newer: it runs on the host, before any image.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Host ports of the dev stack: the default, unless it is taken (or set in the environment).
PORTS = {"API_PORT": 8000, "POSTGRES_PORT": 5432, "REDIS_PORT": 6379, "DEBUGPY_PORT": 5678}
PORT_SEARCH = 200


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command in the checkout; arguments are ours, never user input to a shell."""
    program = shutil.which(args[0]) or args[0]
    return subprocess.run(  # noqa: S603  # a fixed program with arguments built here
        [program, *args[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )


def project_name() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data["project"]["name"])


def compose_project() -> str:
    """The directory's name as Compose would make it (the Makefile's default), with a
    suffix if containers of another checkout already use that name."""
    base = re.sub(r"[^a-z0-9_-]", "", ROOT.name.lower()).lstrip("-_") or "app"
    if shutil.which("docker") is None:
        return base
    for candidate in [base, *(f"{base}-{n}" for n in range(2, 100))]:
        result = run(
            "docker", "ps", "--all",
            "--filter", f"label=com.docker.compose.project={candidate}",
            "--format", '{{json (.Label "com.docker.compose.project.working_dir")}}',
        )  # fmt: skip
        if result.returncode != 0:
            return base  # no engine: nothing to compare against
        owners = {json.loads(line) for line in result.stdout.split()}
        if owners <= {str(ROOT)}:
            return candidate
    sys.exit("init: no free Compose project name; set PROJECT in .env")


def is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(preferred: dict[str, int]) -> dict[str, int]:
    chosen: dict[str, int] = {}
    for key, start in preferred.items():
        port = next(
            (
                p
                for p in range(start, start + PORT_SEARCH)
                if p not in chosen.values() and is_free(p)
            ),
            None,
        )
        if port is None:
            sys.exit(f"init: no free port for {key} in {start}-{start + PORT_SEARCH - 1}")
        chosen[key] = port
    return chosen


def write_env(env_file: Path) -> None:
    ports = free_ports({key: int(os.environ.get(key) or port) for key, port in PORTS.items()})
    password = secrets.token_urlsafe(24)
    values = {
        "PROJECT": compose_project(),
        **{key: str(port) for key, port in ports.items()},
        "POSTGRES_PASSWORD": password,
        # For running the app on the host (`uv run ...`) against the dev stack's servers;
        # in the containers, docker-compose.yml sets these to the services' addresses.
        "DATABASE_URL": f"postgresql://app:{password}@localhost:{ports['POSTGRES_PORT']}/app",
        "REDIS_URL": f"redis://localhost:{ports['REDIS_PORT']}/0",
    }
    # The example's other settings stay commented out: their defaults live in the code,
    # so a later change of a default reaches this checkout too.
    lines = []
    for example in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        key = example.split("=", 1)[0]
        if example.startswith("#") or "=" not in example:
            lines.append(example)
        else:
            lines.append(f"{key}={values.pop(key)}" if key in values else f"# {example}")
    lines += [f"{key}={value}" for key, value in values.items()]
    env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env_file.chmod(0o600)
    written = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    shown = ", ".join(f"{key}={written[key]}" for key in ["PROJECT", *PORTS])
    print(f"init: wrote .env (mode 600) with a fresh database password; {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="this service's name (a check: it is not renamed)")
    args = parser.parse_args()
    if args.name and args.name != project_name():
        sys.exit(f"init: this service is named {project_name()}; refusing to rename it")

    env_file = ROOT / ".env"
    if env_file.exists():
        print("init: .env exists; left as it is (delete it to generate a new one)")
    else:
        write_env(env_file)


if __name__ == "__main__":
    main()
