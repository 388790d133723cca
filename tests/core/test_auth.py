"""Authentication and authorization, against a real issuer process serving real keys
(tests/issuer.py) and API keys in the real database. Every attack gets a 401, never
a 500, and no response echoes the credential it refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, FastAPI
from httpx import AsyncClient, Response
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.core.application import build_app
from app.core.auth import api_keys, tokens
from app.core.auth.api_keys import generate_key
from app.core.auth.dependencies import requires
from app.core.auth.errors import NotAuthenticated
from app.core.auth.keys import create_api_key, revoke_api_key
from app.core.config import Settings
from app.core.db import create_engine
from app.core.principal import Principal
from tests.conftest import UNREACHABLE_POSTGRES, AppClientMaker, with_overrides
from tests.issuer import Issuer

router = APIRouter(prefix="/probe-auth")


@router.get("/read", dependencies=[requires("probes:read")])
async def read_probe() -> dict[str, str]:
    return {"status": "read"}


@router.get("/whoami")
async def whoami(principal: Annotated[Principal, requires("probes:read")]) -> dict[str, object]:
    return {"subject": principal.subject, "kind": principal.kind}


@router.get("/open")
async def no_scope_declared() -> dict[str, str]:
    """Declares nothing: the router-level requirement still asks for an identity."""
    return {"status": "open"}


def auth_app(settings: Settings) -> FastAPI:
    return build_app(settings, routers=[], api_routers=[router], title="auth", version="0")


READ = "/api/v1/probe-auth/read"
Maker = Callable[..., Awaitable[AsyncClient]]


@pytest.fixture
def make_auth_client(make_client: AppClientMaker, settings: Settings) -> Maker:
    async def make(
        scopes: str | None = "probes:read", sub: str = "alice", **options: object
    ) -> AsyncClient:
        app_settings = with_overrides(settings, **options) if options else settings
        return await make_client(app_settings, auth_app(app_settings), scopes=scopes, sub=sub)

    return make


@pytest.fixture
async def anonymous(make_auth_client: Maker) -> AsyncClient:
    return await make_auth_client(None)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refused(response: Response, *, secret: str = "", status: int = 401) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if secret:
        assert secret not in response.text
        assert secret not in str(response.headers)


async def test_a_valid_token_gets_in(make_auth_client: Maker) -> None:
    client = await make_auth_client()
    assert (await client.get(READ)).json() == {"status": "read"}
    me = await client.get("/api/v1/probe-auth/whoami")
    assert me.json() == {"subject": "alice", "kind": "token"}


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "JWT", None])
async def test_an_access_token_gets_in_whichever_typ_its_provider_gives(
    anonymous: AsyncClient, issuer: Issuer, typ: str | None
) -> None:
    token = issuer.token("probes:read", headers={"typ": typ})
    response = await anonymous.get(READ, headers=bearer(token))
    assert response.status_code == 200, response.text


async def test_no_credentials_is_401_with_the_bare_challenge(anonymous: AsyncClient) -> None:
    response = await anonymous.get(READ)
    assert_refused(response)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_route_without_scopes_still_needs_an_identity(anonymous: AsyncClient) -> None:
    assert_refused(await anonymous.get("/api/v1/probe-auth/open"))


async def test_a_missing_scope_is_403_naming_it(make_auth_client: Maker) -> None:
    client = await make_auth_client("other:read")
    response = await client.get(READ)
    assert_refused(response, status=403)
    assert "probes:read" in response.json()["detail"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: Mapping[str, object], header: Mapping[str, object]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


def hmac_with_public_key(issuer: Issuer) -> str:
    """The classic confusion: HS256, with the issuer's public key as the HMAC secret.
    Signed by hand: PyJWT itself refuses to use a PEM key as an HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.signing_key()[0]}
    signing_input = unsigned(claims_for(issuer), header).rstrip(".")
    signature = hmac.new(issuer.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def claims_for(issuer: Issuer, **changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": issuer.url, "aud": "tests", "sub": "mallory", "scope": "probes:read",
        "iat": now, "exp": now + 300,
    }  # fmt: skip
    return claims | changes


ATTACKS: dict[str, Callable[[Issuer], str]] = {
    "alg none": lambda issuer: unsigned(
        claims_for(issuer), {"alg": "none", "typ": "JWT", "kid": issuer.signing_key()[0]}
    ),
    "HS256 keyed with the public key": hmac_with_public_key,
    "expired": lambda issuer: issuer.token(
        "probes:read", iat=int(time.time()) - 7200, exp=int(time.time()) - 3600
    ),
    "not yet valid": lambda issuer: issuer.token("probes:read", nbf=int(time.time()) + 3600),
    "issued in the future": lambda issuer: issuer.token("probes:read", iat=int(time.time()) + 3600),
    "wrong issuer": lambda issuer: issuer.token("probes:read", iss="https://evil.example"),
    "wrong audience": lambda issuer: issuer.token("probes:read", aud="another-api"),
    "no expiry": lambda issuer: issuer.token("probes:read", exp=None),
    "tampered payload": lambda issuer: tamper(issuer.token("probes:read")),
    "a JWE (five segments)": lambda issuer: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d",
    "a nested token": lambda issuer: issuer.token("probes:read", headers={"cty": "JWT"}),
    # The issuer's other JWTs, signed with the same keys, for the same audience.
    "a logout token": lambda issuer: issuer.token("probes:read", headers={"typ": "logout+jwt"}),
    "a DPoP proof": lambda issuer: issuer.token("probes:read", headers={"typ": "dpop+jwt"}),
    "a 100 kB token": lambda issuer: issuer.token("probes:read", padding="x" * 100_000),
    "garbage": lambda issuer: "not-a-jwt",
    "a subject too long to record": lambda issuer: issuer.token("probes:read", sub="x" * 201),
    # Signed by the issuer, but not a time, or not text a log line or Postgres can hold.
    "an expiry past any clock": lambda issuer: issuer.token("probes:read", exp=10**400),
    "a subject with a NUL": lambda issuer: issuer.token("probes:read", sub="a\x00b"),
    "a subject with a lone surrogate": lambda issuer: issuer.token("probes:read", sub="a\ud800b"),
    "a subject that reads backwards": lambda issuer: issuer.token("probes:read", sub="a\u202eb"),
    # It would own what API key "probe-bot" owns, idempotency keys included.
    "an API key's subject": lambda issuer: issuer.token("probes:read", sub="apikey:probe-bot"),
    "an API key's subject, in capitals": lambda issuer: issuer.token("probes:read", sub="APIKEY:x"),
    "a blank subject": lambda issuer: issuer.token("probes:read", sub="  "),
    "a subject with spaces around it": lambda issuer: issuer.token("probes:read", sub="alice "),
}


def tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "probes:read probes:admin"
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_each_attack_is_refused_with_401(
    attack: str, anonymous: AsyncClient, issuer: Issuer
) -> None:
    token = ATTACKS[attack](issuer)
    response = await anonymous.get(READ, headers=bearer(token))
    assert_refused(response, secret=token[-20:])
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_token_in_the_query_string_is_not_read(
    anonymous: AsyncClient, issuer: Issuer
) -> None:
    token = issuer.token("probes:read")
    response = await anonymous.get(READ, params={"access_token": token})
    assert_refused(response, secret=token[-20:])


async def test_an_unknown_kid_fetches_once_then_is_refused_from_the_cache(
    anonymous: AsyncClient, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetches = 0
    real_refresh = tokens.KeySet.refresh

    async def counting(self: tokens.KeySet) -> None:
        nonlocal fetches
        fetches += 1
        await real_refresh(self)

    monkeypatch.setattr(tokens.KeySet, "refresh", counting)
    for n in range(20):
        forged = issuer.token("probes:read", headers={"kid": f"forged-{n}"})
        assert_refused(await anonymous.get(READ, headers=bearer(forged)))
    assert fetches == 1  # the first forged kid found no keys yet; the others, the cache
    assert (await anonymous.get(READ, headers=bearer(issuer.token("probes:read")))).is_success


async def test_a_rotated_key_works_without_a_restart(
    make_auth_client: Maker, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "REFRESH_MIN_INTERVAL_SECONDS", 0.0)
    client = await make_auth_client()
    assert (await client.get(READ)).status_code == 200  # keys cached
    issuer.rotate()
    response = await client.get(READ, headers=bearer(issuer.token("probes:read")))
    assert response.status_code == 200, response.text


async def test_requests_during_a_key_fetch_wait_for_it(make_auth_client: Maker) -> None:
    """A worker's first tokens (or the first ones a rotated key signed) arrive together:
    one fetches the keys, and the others wait for them instead of being refused."""
    client = await make_auth_client()
    responses = await asyncio.gather(*(client.get(READ) for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10


async def test_cached_keys_keep_serving_while_the_issuer_is_down(
    make_auth_client: Maker, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_auth_client()
    assert (await client.get(READ)).status_code == 200  # keys cached
    monkeypatch.setattr(tokens, "KEYS_MAX_AGE_SECONDS", 0.0)  # every request wants a refresh
    monkeypatch.setattr(tokens, "REFRESH_MIN_INTERVAL_SECONDS", 0.0)
    issuer.stop()
    try:
        for _ in range(5):
            assert (await client.get(READ)).status_code == 200
    finally:
        issuer.start()


async def test_a_worker_that_never_got_the_issuer_s_keys_answers_503_not_401(
    make_auth_client: Maker, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token may be good: a 401 would tell its client to get another, and would count
    against the client's address as a guess."""
    monkeypatch.setattr(tokens, "REFRESH_MIN_INTERVAL_SECONDS", 0.0)
    issuer.stop()
    try:
        client = await make_auth_client(rate_limit_auth_failures=2)
        for _ in range(4):  # past the limit on failures: none of these is one
            response = await client.get(READ)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            assert "identity provider" in response.json()["detail"]
    finally:
        issuer.start()
    assert (await client.get(READ)).status_code == 200


async def test_bearer_tokens_are_off_without_an_issuer(
    make_auth_client: Maker, issuer: Issuer
) -> None:
    client = await make_auth_client(None, auth_issuer=None)
    response = await client.get(READ, headers=bearer(issuer.token("probes:read")))
    assert_refused(response)
    assert "AUTH_ISSUER" in response.json()["detail"]


# --- API keys


@pytest.fixture
async def api_key(session_factory: async_sessionmaker[AsyncSession]) -> str:
    async with session_factory() as session, session.begin():
        return await create_api_key(session, "probe-bot", ["probes:read"])


async def test_an_api_key_gets_in_as_its_holder(anonymous: AsyncClient, api_key: str) -> None:
    me = await anonymous.get("/api/v1/probe-auth/whoami", headers={"X-API-Key": api_key})
    assert me.json() == {"subject": "apikey:probe-bot", "kind": "api_key"}


async def test_a_revoked_key_is_refused_within_the_revalidation_time(
    anonymous: AsyncClient,
    api_key: str,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = {"X-API-Key": api_key}
    assert (await anonymous.get(READ, headers=headers)).status_code == 200
    async with session_factory() as session, session.begin():
        await revoke_api_key(session, "probe-bot")
    # Within REVALIDATE_SECONDS the worker may still let it in; past it, never.
    monkeypatch.setattr(api_keys, "REVALIDATE_SECONDS", 0.0)
    secret = api_key[21:]  # sak_<16 hex>_<secret>: the secret may hold "_" itself
    assert_refused(await anonymous.get(READ, headers=headers), secret=secret)


async def test_two_credentials_are_refused_whatever_their_kind(
    anonymous: AsyncClient, api_key: str, issuer: Issuer
) -> None:
    """Which of two values a proxy or a framework reads first is nothing to authenticate
    on: a valid credential next to another gets in with neither."""
    token = f"Bearer {issuer.token('probes:read')}"
    for headers in (
        [("Authorization", token), ("Authorization", "Bearer garbage")],
        [("X-API-Key", api_key), ("X-API-Key", "sak_garbage")],
        [("Authorization", token), ("X-API-Key", api_key)],
    ):
        response = await anonymous.get(READ, headers=headers)
        assert_refused(response)
        assert "Send one credential" in response.json()["detail"]


async def test_a_use_is_recorded_only_once_the_secret_matched(
    anonymous: AsyncClient,
    api_key: str,
    connection: AsyncConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong secret on a real key's id is no use of the key: `make api-keys` must not
    show an idle key as in use."""
    monkeypatch.setattr(api_keys, "REVALIDATE_SECONDS", 0.0)  # each request reads the row
    last_used = text("SELECT last_used_at FROM api_keys WHERE name = 'probe-bot'")
    assert_refused(await anonymous.get(READ, headers={"X-API-Key": with_wrong_secret(api_key)}))
    assert await connection.scalar(last_used) is None
    assert (await anonymous.get(READ, headers={"X-API-Key": api_key})).status_code == 200
    assert await connection.scalar(last_used) is not None


@pytest.mark.parametrize(
    "presented",
    ["sak_short", "Bearer sak_x", generate_key().plaintext, "sak_" + "0" * 16 + "_" + "A" * 43],
    ids=["wrong format", "not a key", "unknown", "unknown, well formed"],
)
async def test_a_bad_api_key_is_refused(anonymous: AsyncClient, presented: str) -> None:
    assert_refused(await anonymous.get(READ, headers={"X-API-Key": presented}), secret=presented)


async def test_an_expired_api_key_is_refused(
    anonymous: AsyncClient, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    async with session_factory() as session, session.begin():
        key = await create_api_key(
            session, "old-bot", ["probes:read"], datetime.now(UTC) - timedelta(seconds=1)
        )
    response = await anonymous.get(READ, headers={"X-API-Key": key})
    assert_refused(response)
    assert "expired" in response.json()["detail"]


async def test_guessing_is_slowed_per_address_and_a_key_seen_before_from_it_still_gets_in(
    make_auth_client: Maker, session_factory: async_sessionmaker[AsyncSession], api_key: str
) -> None:
    """The guesser and the key's holder share the address (a NAT, a load balancer): once
    it is blocked, a credential the worker verified before gets in; a new one, right or
    wrong, gets 429 without a lookup, so guesses are slow and cost nothing."""
    client = await make_auth_client(None, rate_limit_auth_failures=3)
    assert (await client.get(READ, headers={"X-API-Key": api_key})).status_code == 200
    statuses = [
        (await client.get(READ, headers={"X-API-Key": generate_key().plaintext})).status_code
        for _ in range(5)
    ]
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3:] == [429, 429]
    assert (await client.get(READ, headers={"X-API-Key": api_key})).status_code == 200
    async with session_factory() as session, session.begin():
        unseen = await create_api_key(session, "probe-bot-2", ["probes:read"])
    assert (await client.get(READ, headers={"X-API-Key": unseen})).status_code == 429
    # The id of a key seen before, with a guessed secret: not known, so no check either.
    guessed = api_key[:-1] + ("A" if api_key[-1] != "A" else "B")
    assert (await client.get(READ, headers={"X-API-Key": guessed})).status_code == 429


async def test_a_withdrawn_key_stops_its_tokens_even_once_verified(
    make_auth_client: Maker, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verified tokens are remembered, but not past a refresh of the keys."""
    client = await make_auth_client()
    assert (await client.get(READ)).status_code == 200  # verified, and remembered
    monkeypatch.setattr(tokens, "KEYS_MAX_AGE_SECONDS", 0.0)
    monkeypatch.setattr(tokens, "REFRESH_MIN_INTERVAL_SECONDS", 0.0)
    issuer.rotate(only=True)  # the client's key is gone from the JWKS
    statuses = []
    for _ in range(20):
        statuses.append((await client.get(READ)).status_code)
        if statuses[-1] == 401:
            break
        await asyncio.sleep(0.05)  # the refresh runs in the background
    assert statuses[-1] == 401, statuses
    fresh = issuer.token("probes:read")
    assert (await client.get(READ, headers=bearer(fresh))).status_code == 200


async def test_an_api_key_gets_in_while_the_database_refuses_writes(
    anonymous: AsyncClient, api_key: str, connection: AsyncConnection
) -> None:
    # As on a replica after a failover: the key's row reads, recording its use is refused
    # (SQLSTATE 25006). Bookkeeping must not refuse the key, nor reads with it.
    await connection.execute(
        text(
            "CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'read-only' USING ERRCODE = 'read_only_sql_transaction'; END $$"
        )
    )
    await connection.execute(
        text(
            "CREATE TRIGGER refuse_writes BEFORE UPDATE ON api_keys "
            "FOR EACH ROW EXECUTE FUNCTION refuse_writes()"
        )
    )
    response = await anonymous.get(READ, headers={"X-API-Key": api_key})
    assert response.status_code == 200, response.text


def with_wrong_secret(key: str) -> str:
    """The key's id with another secret: sak_<16 hex>_<secret>, the secret may hold "_"."""
    secret = key[21:]
    return key[:21] + ("B" if secret[0] == "A" else "A") + secret[1:]


async def test_a_key_s_last_use_is_written_at_most_once_per_interval(
    anonymous: AsyncClient,
    api_key: str,
    connection: AsyncConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bookkeeping, not a write per request: a use within LAST_USED_PRECISION of the
    recorded one writes nothing; once the recorded one is older, the next use writes."""
    monkeypatch.setattr(api_keys, "REVALIDATE_SECONDS", 0.0)  # each use reads the row
    # Counts every write of a use, of the same value too (now() is the test
    # transaction's); a backdate, below, moves the time back and is not one.
    for statement in (
        "CREATE TABLE last_use_writes (at timestamptz)",
        "CREATE FUNCTION note_last_use() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO last_use_writes VALUES (NEW.last_used_at); RETURN NEW; END $$",
        "CREATE TRIGGER note_last_use AFTER UPDATE OF last_used_at ON api_keys FOR EACH ROW "
        "WHEN (OLD.last_used_at IS NULL OR NEW.last_used_at >= OLD.last_used_at) "
        "EXECUTE FUNCTION note_last_use()",
    ):
        await connection.execute(text(statement))

    async def writes_after_a_use() -> int:
        assert (await anonymous.get(READ, headers={"X-API-Key": api_key})).status_code == 200
        return int(await connection.scalar(text("SELECT count(*) FROM last_use_writes")) or 0)

    async def recorded_ago(age: timedelta) -> None:
        await connection.execute(
            text(
                "UPDATE api_keys SET last_used_at = now() - CAST(:age AS interval)"
                " WHERE name = 'probe-bot'"
            ),
            {"age": age},
        )

    assert [await writes_after_a_use() for _ in range(3)] == [1, 1, 1]
    await recorded_ago(api_keys.LAST_USED_PRECISION / 2)
    assert await writes_after_a_use() == 1  # still within the interval
    await recorded_ago(api_keys.LAST_USED_PRECISION + timedelta(seconds=1))
    assert [await writes_after_a_use() for _ in range(2)] == [2, 2]


@pytest.fixture
async def committed_key(engine: AsyncEngine) -> AsyncIterator[str]:
    """A key committed on the run's database, so that another connection can lock its
    table (the test's own transaction would hold that lock up); deleted afterwards."""
    name = f"stale-bot-{uuid.uuid4().hex[:8]}"
    async with async_sessionmaker(engine)() as session, session.begin():
        key = await create_api_key(session, name, ["probes:read"])
    yield key
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM api_keys WHERE name = :n"), {"n": name})


@asynccontextmanager
async def database_unreachable(
    settings: Settings, _: AsyncEngine
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a server that refuses connections (Postgres down, restarting)."""
    failing = create_engine(with_overrides(settings, database_url=UNREACHABLE_POSTGRES))
    try:
        yield async_sessionmaker(failing)
    finally:
        await failing.dispose()


@asynccontextmanager
async def table_locked(
    settings: Settings, engine: AsyncEngine
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions whose read of the key waits for a lock another transaction holds, and
    ends as a lock timeout (SQLSTATE 55P03: a migration holding the table, say)."""
    failing = create_engine(with_overrides(settings, db_lock_timeout=0.2))
    try:
        async with engine.connect() as holder, holder.begin():
            await holder.execute(text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
            yield async_sessionmaker(failing)
    finally:
        await failing.dispose()


@pytest.mark.parametrize("fault", [database_unreachable, table_locked])
async def test_a_verified_key_keeps_working_while_the_database_fails(
    fault: Callable[
        [Settings, AsyncEngine], AbstractAsyncContextManager[async_sessionmaker[AsyncSession]]
    ],
    committed_key: str,
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stale-if-error: a key this worker verified in the last STALE_IF_ERROR_SECONDS is
    let in from its cache when the row cannot be read; any other key gets the error
    (a 503: the key may be good)."""
    verifier = api_keys.ApiKeyVerifier()
    principal = await verifier.verify(committed_key, async_sessionmaker(engine))
    monkeypatch.setattr(api_keys, "REVALIDATE_SECONDS", 0.0)  # each use reads the row
    async with fault(settings, engine) as failing:
        assert await verifier.verify(committed_key, failing) == principal
        with pytest.raises(NotAuthenticated):  # the cached secret still decides
            await verifier.verify(with_wrong_secret(committed_key), failing)
        with pytest.raises((DBAPIError, OSError)):  # a worker that never read the row
            await api_keys.ApiKeyVerifier().verify(committed_key, failing)
        monkeypatch.setattr(api_keys, "STALE_IF_ERROR_SECONDS", 0.0)  # its entry too old
        with pytest.raises((DBAPIError, OSError)):
            await verifier.verify(committed_key, failing)


# --- A misbehaving provider


class _Provider(BaseHTTPRequestHandler):
    """Serves `body` at every path, `chunk` bytes every `pause` seconds."""

    url = ""
    body = b"{}"
    chunk = 0  # 0: all at once
    pause = 0.0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        step = self.chunk or len(self.body)
        for start in range(0, len(self.body), step):
            time.sleep(self.pause)
            self.wfile.write(self.body[start : start + step])
            self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up mid-answer: expected here


@pytest.fixture
def provider() -> Iterator[type[_Provider]]:
    """A provider at `provider.url`; set its class attributes to make it misbehave."""

    class Provider(_Provider):
        pass

    server = _Server(("127.0.0.1", 0), Provider)
    Provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Provider
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("body", [b"[]", b"null", b'"jwks"'])
async def test_a_discovery_document_that_is_not_an_object_keeps_the_keys_held(
    provider: type[_Provider], body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "REFRESH_MIN_INTERVAL_SECONDS", 0.0)
    provider.body = body
    keys = tokens.KeySet(issuer=provider.url, jwks_url=None)
    async with httpx.AsyncClient() as client:
        with pytest.raises(ValueError, match="the discovery document is not a JSON object"):
            await keys._discover(client)
    await keys.refresh()  # logged, not raised into the request that asked
    assert not keys.fetched
    # Once found, the keys outlive a provider that answers the same at its keys' address.
    public_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = {**RSAAlgorithm.to_jwk(public_key, as_dict=True), "kid": "k1"}
    # Served at every path: the discovery document and the JWKS in one.
    document = {"issuer": provider.url, "jwks_uri": f"{provider.url}/jwks", "keys": [jwk]}
    provider.body = json.dumps(document).encode()
    assert await keys.key("k1") is not None
    provider.body = body
    await keys.refresh()
    assert await keys.key("k1") is not None


async def test_a_provider_that_trickles_its_keys_holds_no_request_past_the_fetch_timeout(
    provider: type[_Provider], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each read comes within httpx's timeout; the whole answer would take 20 s.
    monkeypatch.setattr(tokens, "FETCH_TIMEOUT_SECONDS", 0.5)
    provider.body, provider.chunk, provider.pause = b'{"keys": []}' + b" " * 80, 4, 0.2
    keys = tokens.KeySet(issuer="unused", jwks_url=provider.url)
    started = time.monotonic()
    assert await keys.key("any") is None
    assert time.monotonic() - started < 2.0


async def test_a_keys_document_past_its_size_bound_is_refused_keeping_the_keys_held(
    provider: type[_Provider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "MAX_DOCUMENT_BYTES", 4096)
    public_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = {**RSAAlgorithm.to_jwk(public_key, as_dict=True), "kid": "k1"}
    document = json.dumps({"keys": [jwk]}).encode()
    provider.body = document
    assert await tokens.KeySet(issuer="unused", jwks_url=provider.url).key("k1") is not None
    # The same keys, padded past the bound (valid JSON still): refused as it streams.
    provider.body = document + b" " * 4096
    assert await tokens.KeySet(issuer="unused", jwks_url=provider.url).key("k1") is None


async def test_a_key_that_names_no_algorithm_verifies_only_its_own_family(
    provider: type[_Provider],
) -> None:
    """Keys published without `alg` (as many providers do): a header that pairs one with
    another family's algorithm is refused (401), never handed to PyJWT (a 500)."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = [
        {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r1"},
        {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "e1"},
    ]
    provider.body = json.dumps({"keys": keys}).encode()
    verifier = tokens.TokenVerifier(
        issuer="https://issuer.example",
        audience="api",
        algorithms=["RS256", "ES256"],
        jwks_url=provider.url,
    )
    now = int(time.time())
    claims = {"iss": "https://issuer.example", "aud": "api", "sub": "svc", "iat": now}
    signed = jwt.encode({**claims, "exp": now + 60}, ec_key, "ES256", headers={"kid": "e1"})
    assert (await verifier.verify(signed)).subject == "svc"
    for alg, kid in (("ES256", "r1"), ("RS256", "e1")):
        header = b64(json.dumps({"alg": alg, "kid": kid}).encode())
        forged = f"{header}.{b64(b'{}')}.{b64(b'x')}"
        with pytest.raises(NotAuthenticated):
            await verifier.verify(forged)
    await verifier.aclose()


@pytest.mark.parametrize(
    "odd",
    [
        {"kty": "oct", "kid": "odd"},  # no `k`: PyJWK raises KeyError
        {"kty": "RSA", "kid": "odd", "alg": ["RS256"]},  # `alg` not a string
        {"kty": "RSA", "kid": "odd", "n": 7, "e": "AQAB"},  # a member of the wrong type
    ],
)
async def test_an_odd_entry_in_the_keys_costs_only_itself(
    provider: type[_Provider], odd: dict[str, object]
) -> None:
    """One entry PyJWT cannot read (a provider's mistake) is skipped: the other keys
    still verify, and no request gets a 500 from it."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = {**RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": "k1"}
    provider.body = json.dumps({"keys": [odd, good]}).encode()
    verifier = tokens.TokenVerifier(
        issuer="https://issuer.example", audience="api", algorithms=["RS256"], jwks_url=provider.url
    )
    now = int(time.time())
    claims = {
        "iss": "https://issuer.example",
        "aud": "api",
        "sub": "svc",
        "iat": now,
        "exp": now + 60,
    }
    signed = jwt.encode(claims, private_key, "RS256", headers={"kid": "k1"})
    assert (await verifier.verify(signed)).subject == "svc"
    assert await verifier.keys.key("odd") is None
    await verifier.aclose()


async def test_keys_for_encryption_and_json_nested_too_deep_are_not_signing_keys(
    provider: type[_Provider],
) -> None:
    public_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = {**RSAAlgorithm.to_jwk(public_key, as_dict=True), "kid": "k1", "use": "enc"}
    provider.body = json.dumps({"keys": [jwk]}).encode()
    assert await tokens.KeySet(issuer="unused", jwks_url=provider.url).key("k1") is None
    provider.body = b"[" * 100_000 + b"]" * 100_000  # under the size bound
    keys = tokens.KeySet(issuer="unused", jwks_url=provider.url)
    await keys.refresh()  # logged and kept, not raised into the request that asked
    assert await keys.key("k1") is None


async def test_a_refresh_that_finds_the_same_keys_keeps_verified_tokens(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forged kids can force a fetch now and then; when it brings the same keys, the
    tokens already verified stay verified (no new signature checks for everyone)."""
    monkeypatch.setattr(tokens, "REFRESH_MIN_INTERVAL_SECONDS", 0.0)
    keys = tokens.KeySet(issuer=issuer.url, jwks_url=None)
    assert await keys.key(issuer.signing_key()[0]) is not None
    for n in range(3):
        assert await keys.key(f"forged-{n}") is None
    assert keys.generation == 1
    issuer.rotate()
    assert await keys.key(issuer.signing_key()[0]) is not None
    assert keys.generation == 2


async def test_a_discovery_document_for_another_issuer_is_refused(issuer: Issuer) -> None:
    # The provider at this address speaks for issuer.url, not for this name of it.
    keys = tokens.KeySet(issuer=issuer.url + "/", jwks_url=None)
    assert await keys.key(issuer.signing_key()[0]) is None
    assert await tokens.KeySet(issuer=issuer.url, jwks_url=None).key(issuer.signing_key()[0])


async def test_an_https_issuer_s_keys_are_never_fetched_over_plain_http() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        document = {"issuer": "https://issuer.example", "jwks_uri": "http://issuer.example/k"}
        return httpx.Response(200, json=document)

    keys = tokens.KeySet(issuer="https://issuer.example", jwks_url=None)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(ValueError, match="jwks_uri is not https"):
            await keys._discover(client)
