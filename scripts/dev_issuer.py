"""A development identity provider: signs access tokens with a key made on this machine
and publishes its public keys as an OpenID issuer does, so `make up` needs no real
provider. Never for production: the settings refuse an http:// issuer there.

    serve   the discovery document and the JWKS (docker-compose.yml's `issuer` service);
            --tls-dir serves https with a self-signed certificate, for checks that run
            the production settings (which take an https:// issuer only)
    token   print a signed access token (`make token scopes="items:read" sub=alice`);
            without --scopes, every scope the API's routes declare (its OpenAPI document)
    rotate  add a new signing key (the newest signs); --only drops the older ones

Keys are PEM files in --keys (a volume in the dev stack), made on first use and
never committed. The JWKS is read from that directory on every request, so a rotation
is live at once. The tests run it as a real process (tests/issuer.py).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import ssl
import sys
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlsplit
from urllib.request import urlopen

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

ALGORITHM = "RS256"
DEFAULT_ISSUER = os.environ.get("DEV_ISSUER_URL", "http://issuer:8080")
DEFAULT_KEYS = Path(os.environ.get("DEV_ISSUER_KEYS", "/keys"))
# The dev stack's api, seen from the issuer's container: where a token's default scopes
# come from.
DEFAULT_OPENAPI = "http://api:8000/openapi.json"
DEFAULT_AUDIENCE = os.environ.get("AUTH_AUDIENCE", "api")


def private_pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_key(keys: Path) -> str:
    """Write a new RSA key as <kid>.pem and return its kid."""
    keys.mkdir(parents=True, exist_ok=True)
    # Named by creation time (nanoseconds, fixed width), so names sort oldest first.
    kid = f"dev-{time.time_ns()}-{secrets.token_hex(2)}"
    path = keys / f"{kid}.pem"
    path.write_bytes(private_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    path.chmod(0o600)
    return kid


def key_files(keys: Path) -> list[Path]:
    """The signing keys, oldest first (the last one signs)."""
    return sorted(keys.glob("*.pem"))


def signing_key(keys: Path) -> tuple[str, Any]:
    files = key_files(keys)
    if not files:
        new_key(keys)
        files = key_files(keys)
    newest = files[-1]
    return newest.stem, serialization.load_pem_private_key(newest.read_bytes(), password=None)


def jwks(keys: Path) -> dict[str, Any]:
    published = []
    for path in key_files(keys):
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))  # type: ignore[arg-type]
        published.append({**jwk, "kid": path.stem, "use": "sig", "alg": ALGORITHM})
    return {"keys": published}


def token(keys: Path, *, issuer: str, audience: str, subject: str, scopes: str, ttl: int) -> str:
    kid, private = signing_key(keys)
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "scope": scopes,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    }
    # RFC 9068's type for an access token, as a provider that follows it signs them.
    return jwt.encode(claims, private, algorithm=ALGORITHM, headers={"kid": kid, "typ": "at+jwt"})


def self_signed_certificate(tls_dir: Path, hostname: str) -> tuple[Path, Path]:
    """A certificate for `hostname`, made once in `tls_dir`: for checks that run the
    stack as in production, where the app takes an https:// issuer only. The app
    trusts it through SSL_CERT_FILE=<tls_dir>/tls.crt."""
    certificate, key = tls_dir / "tls.crt", tls_dir / "tls.key"
    if certificate.exists() and key.exists():
        return certificate, key
    tls_dir.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(private_pem(private))
    certificate.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    return certificate, key


def serve(keys: Path, issuer: str, port: int, tls_dir: Path | None = None) -> None:
    signing_key(keys)  # make the first key now, not on the first request

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/.well-known/openid-configuration":
                body: dict[str, Any] = {
                    "issuer": issuer,
                    "jwks_uri": f"{issuer}/jwks.json",
                    "id_token_signing_alg_values_supported": [ALGORITHM],
                }
            elif self.path == "/jwks.json":
                body = jwks(keys)
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per key fetch would be noise

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104  # in a container
    if tls_dir is not None:
        certificate, key = self_signed_certificate(
            tls_dir, urlsplit(issuer).hostname or "localhost"
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"dev issuer {issuer}: serving its keys on :{port}", flush=True)
    server.serve_forever()


def scopes_in(document: dict[str, Any]) -> str:
    """Every scope an OpenAPI document's operations require, space-separated."""
    found = {
        scope
        for operations in document.get("paths", {}).values()
        for operation in operations.values()
        for requirement in operation.get("security", [])
        for scopes in requirement.values()
        for scope in scopes
    }
    return " ".join(sorted(found))


def declared_scopes(openapi_url: str) -> str:
    """Every scope the API's routes declare, from its OpenAPI document at `openapi_url`."""
    try:
        with urlopen(openapi_url, timeout=5) as response:  # noqa: S310  # http(s) or file, ours
            return scopes_in(json.load(response))
    except (URLError, OSError, ValueError) as exc:
        sys.exit(
            f"token: could not read the API's scopes from {openapi_url} ({exc}). "
            "Is the api running and healthy (`make up`, `make logs`)? Or name the "
            'scopes yourself: make token scopes="items:read"'
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=Path, default=DEFAULT_KEYS)
    parser.add_argument("--issuer", default=DEFAULT_ISSUER)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve")
    serve_cmd.add_argument("--port", type=int, default=8080)
    serve_cmd.add_argument("--tls-dir", type=Path, help="serve https, with a certificate made here")
    token_cmd = commands.add_parser("token")
    token_cmd.add_argument("--audience", default=DEFAULT_AUDIENCE)
    token_cmd.add_argument("--sub", default="dev-user")
    token_cmd.add_argument(
        "--scopes", help="space-separated (default: every scope the API declares)"
    )
    token_cmd.add_argument("--openapi", default=DEFAULT_OPENAPI, help="where to read those")
    token_cmd.add_argument("--ttl", type=int, default=3600, help="seconds")
    rotate_cmd = commands.add_parser("rotate")
    rotate_cmd.add_argument("--only", action="store_true", help="drop the older keys")
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve(args.keys, args.issuer, args.port, args.tls_dir)
    elif args.command == "token":
        scopes = declared_scopes(args.openapi) if args.scopes is None else args.scopes
        claims = {"audience": args.audience, "subject": args.sub, "scopes": scopes}
        print(token(args.keys, issuer=args.issuer, ttl=args.ttl, **claims))
    else:
        older = key_files(args.keys)
        print(new_key(args.keys))
        if args.only:
            for path in older:
                path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
