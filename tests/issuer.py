"""A real identity provider for the tests: scripts/dev_issuer.py as a process of its
own, serving its JWKS over HTTP on a free port, with real RSA keys. Tests sign
tokens with its keys (or forge them), rotate its keys, and stop it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parent.parent
AUDIENCE = "tests"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Issuer:
    def __init__(self, keys: Path) -> None:
        self.keys = keys
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self, *args: str) -> list[str]:
        script = str(ROOT / "scripts" / "dev_issuer.py")
        return [sys.executable, script, "--keys", str(self.keys), "--issuer", self.url, *args]

    def _cli(self, *args: str) -> str:
        done = subprocess.run(  # noqa: S603  # our own interpreter and arguments
            self._command(*args), check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    def start(self, attempts: int = 3) -> None:
        """Serve, on a new free port if another process took this one first: between
        free_port() and the server's bind, any socket of the machine may be given it."""
        for _ in range(attempts):
            self._process = subprocess.Popen(  # noqa: S603  # our own interpreter and arguments
                self._command("serve", "--port", str(self.port)), stdout=subprocess.DEVNULL
            )
            if self._serving(self._process):
                return
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError(f"the test issuer could not start in {attempts} attempts")

    def _serving(self, process: subprocess.Popen[bytes]) -> bool:
        """Whether the server answers within 15 s; False at once if it exited."""
        deadline = time.monotonic() + 15
        while process.poll() is None:
            try:
                urllib.request.urlopen(f"{self.url}/jwks.json", timeout=1).close()  # noqa: S310
                return True
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def cli_token(self, *args: str) -> str:
        """A token from the issuer's own `token` command (`make token`), with `args`."""
        return self._cli("token", "--audience", AUDIENCE, *args)

    def rotate(self, *, only: bool = False) -> str:
        """A new signing key, published at once; returns its kid."""
        return self._cli("rotate", *(["--only"] if only else []))

    def signing_key(self) -> tuple[str, Any]:
        newest = sorted(self.keys.glob("*.pem"))[-1]
        return newest.stem, serialization.load_pem_private_key(newest.read_bytes(), None)

    def token(
        self,
        scopes: str,
        *,
        sub: str = "alice",
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token as the issuer would sign it; `claims` replace or add claims (None
        removes one), `headers` add header fields (a forged `kid`, say)."""
        kid, private = self.signing_key()
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": sub,
            "scope": scopes,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(
            payload, private, algorithm="RS256", headers={"kid": kid, **(headers or {})}
        )

    def public_pem(self) -> bytes:
        _, private = self.signing_key()
        return bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
