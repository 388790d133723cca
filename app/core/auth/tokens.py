"""Bearer access tokens: JWTs the company's identity provider signed, verified here,
locally, against the keys it publishes (its JWKS). No call to the provider per request.

- Only the asymmetric algorithms in AUTH_ALGORITHMS are accepted (the settings refuse
  `none` and HMAC), so a token cannot choose how it is checked.
- Another kind of JWT from the same issuer (a logout token, a DPoP proof...) is refused
  by its `typ` header (ACCESS_TOKEN_TYPES).
- The key is the one the token's `kid` names. PyJWT checks the signature, `iss`, `aud`,
  `exp`, `nbf` and `iat`, with LEEWAY_SECONDS for clocks that disagree a little.
- Keys are cached per worker. An unknown `kid` refreshes them at once (a rotated key
  works without a restart), but at most once per REFRESH_MIN_INTERVAL_SECONDS, so
  forged `kid`s cannot make the service fetch per request. Requests that arrive while
  a fetch is under way wait for it (make chaos's key-rotated fault). Keys older than
  KEYS_MAX_AGE_SECONDS are refreshed in the background, so a key the provider
  withdrew stops working. A failed refresh keeps the keys it had: tokens keep
  verifying while the provider is down.
- A verified token is remembered per worker until its `exp` or the next change of
  the keys, whichever comes first: a client's next requests cost a lookup, not a
  signature check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import structlog

from app.core.auth.errors import IssuerUnavailable, NotAuthenticated
from app.core.principal import MAX_SUBJECT_LENGTH, RESERVED_SUBJECT_PREFIXES, Principal

LEEWAY_SECONDS = 30
# Real access tokens are a few kB; anything far larger is refused before it is parsed.
MAX_TOKEN_LENGTH = 8 * 1024
REFRESH_MIN_INTERVAL_SECONDS = 10.0
KEYS_MAX_AGE_SECONDS = 300.0
FETCH_TIMEOUT_SECONDS = 2.0
# Discovery and JWKS documents are a few kB: a URL that answers more (misconfigured,
# hostile) is refused as it streams, before it can fill a worker's memory.
MAX_DOCUMENT_BYTES = 512 * 1024
# Verified tokens each worker remembers; past it the memory starts over.
VERIFIED_TOKENS_MAX = 10_000
DISCOVERY_PATH = "/.well-known/openid-configuration"
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
# The `typ` headers an access token may carry (RFC 9068's `at+jwt`; most providers send
# `JWT` or nothing). The issuer's other JWTs name their own (`logout+jwt`, `dpop+jwt`,
# `secevent+jwt`...) and are signed with the same keys: explicit typing (RFC 8725 3.11)
# keeps them from passing as access tokens. Compared without case and without an
# `application/` prefix, which RFC 7515 lets a sender omit.
ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt"})
# The JWK key type (`kty`) each family of accepted algorithms signs with.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}

logger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SigningKey:
    jwk: jwt.PyJWK = field(compare=False)
    algorithm: str | None  # the JWK's own `alg`, when the issuer pins one
    published: str  # the JWK as published (canonical JSON): equal keys, equal sets


async def fetch_json(client: httpx.AsyncClient, url: str) -> object:
    """The JSON document at `url`; ValueError past MAX_DOCUMENT_BYTES or if not JSON."""
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(body)
    except RecursionError:  # nested deeper than the parser goes: not a JWKS either
        raise ValueError(f"{url} answered JSON nested too deep") from None


def signing_keys(document: object) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS document by `kid`. An entry without a `kid`,
    for encryption (`use` other than "sig"), or that PyJWT cannot read is skipped: one
    odd entry must not cost the others. ValueError if none is left."""
    raw_keys = document.get("keys") if isinstance(document, dict) else None
    keys: dict[str, SigningKey] = {}
    for raw in raw_keys if isinstance(raw_keys, list) else []:
        if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str):
            continue
        if raw.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(raw)
        except jwt.PyJWTError:
            continue  # a type or algorithm PyJWT does not use
        # A malformed entry (a member missing, or of another type) raises KeyError,
        # TypeError or ValueError from the key's own parsing.
        except Exception as error:
            logger.warning("jwks key skipped", kid=raw["kid"], error=type(error).__name__)
            continue
        algorithm = raw.get("alg")
        keys[raw["kid"]] = SigningKey(
            jwk,
            algorithm if isinstance(algorithm, str) else None,
            json.dumps(raw, sort_keys=True),
        )
    if not keys:
        raise ValueError("the JWKS has no usable key with a kid")
    return keys


class KeySet:
    """The issuer's signing keys by `kid`, fetched from its JWKS and kept fresh."""

    def __init__(self, issuer: str, jwks_url: str | None) -> None:
        self._issuer = issuer
        self._jwks_url = jwks_url  # None: read from the issuer's discovery document
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at = 0.0  # the last successful fetch
        self._tried_at = float("-inf")  # the last attempt, successful or not
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        # Counts the changes of the key set: what was verified before may not hold.
        self.generation = 0

    def keep_fresh(self) -> None:
        """Refresh in the background once the keys are older than KEYS_MAX_AGE_SECONDS
        (before the first fetch, `key` fetches on demand)."""
        now = time.monotonic()
        stale = self._keys and now - self._fetched_at > KEYS_MAX_AGE_SECONDS
        if stale and self._may_fetch(now):
            self._refresh_in_background()

    @property
    def fetched(self) -> bool:
        """Whether a fetch ever succeeded: a worker whose first fetch failed holds no key."""
        return bool(self._keys)

    async def key(self, kid: str) -> SigningKey | None:
        """The key named `kid`, refreshing the set first if it is unknown (rate-limited)."""
        found = self._keys.get(kid)
        if found is not None:
            self.keep_fresh()
            return found
        now = time.monotonic()
        if self._may_fetch(now):
            await self.refresh()
        elif self._lock.locked():
            # A fetch is under way, most likely for this very kid: a rotated key (or a
            # worker's first token) reaches many requests at once, and each waits for
            # that fetch's keys rather than being refused before they arrive.
            async with self._lock:
                pass
        return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        return now - self._tried_at >= REFRESH_MIN_INTERVAL_SECONDS

    def _refresh_in_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(self.refresh())

    async def refresh(self) -> None:
        """Fetch the keys; on any failure keep the ones already held."""
        async with self._lock:
            if not self._may_fetch(time.monotonic()):
                return  # another request fetched while this one waited for the lock
            self._tried_at = time.monotonic()
            try:
                # httpx's timeout bounds each read, not the whole answer: a provider that
                # trickles its bytes would hold this lock, and every request waiting on
                # it, for as long as it kept sending. asyncio.timeout bounds the fetch.
                async with (
                    asyncio.timeout(FETCH_TIMEOUT_SECONDS),
                    httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as client,
                ):
                    url = self._jwks_url or await self._discover(client)
                    keys = signing_keys(await fetch_json(client, url))
            # Whatever the provider answers is untrusted input, and a refresh that fails
            # keeps the keys held: a bad answer must not become every request's 500.
            except Exception as error:
                reason = str(error) or type(error).__name__
                logger.warning("jwks refresh failed", error=reason, kept_keys=len(self._keys))
                return
            self._fetched_at = time.monotonic()
            if keys == self._keys:
                return  # the same keys: every token verified with them still holds
            self._keys = keys
            self.generation += 1
            logger.info("jwks refreshed", keys=len(self._keys))

    async def _discover(self, client: httpx.AsyncClient) -> str:
        document = await fetch_json(client, self._issuer.rstrip("/") + DISCOVERY_PATH)
        if not isinstance(document, dict):
            raise ValueError("the discovery document is not a JSON object")
        # OpenID Connect Discovery: the document names the very issuer it was asked for.
        if document.get("issuer") != self._issuer:
            raise ValueError(f"the discovery document is for issuer {document.get('issuer')!r}")
        url = document.get("jwks_uri")
        if not isinstance(url, str):
            raise ValueError("the discovery document names no jwks_uri")
        # An https issuer's keys over plain http could be anyone's keys on the path.
        if self._issuer.startswith("https://") and not url.startswith("https://"):
            raise ValueError(f"the discovery document's jwks_uri is not https: {url!r}")
        self._jwks_url = url
        return url

    async def aclose(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background


class TokenVerifier:
    """Turns a bearer token into a Principal, or refuses it with a 401."""

    def __init__(
        self, *, issuer: str, audience: str, algorithms: list[str], jwks_url: str | None
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.keys = KeySet(issuer, jwks_url)
        # token -> (principal, exp, key generation): see verify.
        self._verified: dict[str, tuple[Principal, float, int]] = {}

    def knows(self, token: str) -> bool:
        """Whether this worker verified `token` already: checked from memory."""
        return token in self._verified

    async def verify(self, token: str) -> Principal:
        """A client sends the same token on every request until it expires: its
        signature and claims are checked once per worker, and the result is kept until
        the token's `exp`, or until a refresh finds the keys changed (so a key the issuer
        withdrew stops its tokens within KEYS_MAX_AGE_SECONDS, as without the cache)."""
        self.keys.keep_fresh()
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires, generation = cached
            if time.time() < expires and generation == self.keys.generation:
                return principal
            del self._verified[token]
        principal, expires = await self._verify(token)
        if len(self._verified) >= VERIFIED_TOKENS_MAX:
            self._verified.clear()
        self._verified[token] = (principal, expires, self.keys.generation)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        algorithm, kid = self._header(token)
        key = await self._key(algorithm, kid)
        try:
            claims = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("has expired") from None
        except jwt.ImmatureSignatureError:
            raise _refused("is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise _refused("is for another audience") from None
        except jwt.InvalidIssuerError:
            raise _refused("is from another issuer") from None
        except (jwt.PyJWTError, TypeError, ValueError):
            # PyJWT raises TypeError or ValueError for a key that does not fit the header's
            # algorithm (a curve other than the algorithm's): a forged token, not a bug.
            raise _refused("could not be verified") from None
        subject = str(claims["sub"])
        if not subject.strip() or len(subject) > MAX_SUBJECT_LENGTH:
            raise _refused("names no subject, or one too long to record")
        # " alice" and "alice" would be two owners that read as one in every log line.
        if subject != subject.strip():
            raise _refused("names a subject with spaces around it")
        # Recorded in rows and log lines: no control, invisible or unpaired characters
        # (a NUL or a lone surrogate fails in Postgres and in the JSON log line).
        if not subject.isprintable():
            raise _refused("names a subject that is not printable text")
        if subject.lower().startswith(RESERVED_SUBJECT_PREFIXES):
            raise _refused("names a subject kept for API keys or anonymous callers")
        try:
            expires = float(claims["exp"])
        except (TypeError, ValueError, OverflowError):  # PyJWT checked it as an integer
            raise _refused("has an expiry that is not a time") from None
        principal = Principal(subject=subject, scopes=scopes_of(claims), kind="token")
        return principal, expires

    async def _key(self, algorithm: str, kid: str) -> SigningKey:
        """The issuer's key named `kid`, if it may verify `algorithm`."""
        key = await self.keys.key(kid)
        if key is None and not self.keys.fetched:
            # Not the token's fault: this worker has no keys to check it with yet.
            raise IssuerUnavailable
        if key is None:
            raise _refused("is signed with a key the issuer does not publish")
        # A key that names no `alg` (as many providers publish them) still fits only its
        # own family: an RS256 header with an EC key is refused, not handed to PyJWT.
        if key.algorithm not in (algorithm, None) or key.jwk.key_type != _KEY_TYPES.get(
            algorithm[:2]
        ):
            raise _refused("is signed with an algorithm its key does not allow")
        return key

    def _header(self, token: str) -> tuple[str, str]:
        """The token's algorithm and key id, once the token looks like one we accept."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise _refused("is too large")
        # Three segments: a JWE (five) or anything else is not an access token we accept.
        if token.count(".") != 2:
            raise _refused("is not a signed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("is not a signed JWT") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self.algorithms:
            raise _refused("is signed with an algorithm this service does not accept")
        # A nested token (a JWT as the payload of another) is never an access token.
        if str(header.get("cty", "")).upper() == "JWT":
            raise _refused("is a nested token")
        if "typ" in header and _media_type(header["typ"]) not in ACCESS_TOKEN_TYPES:
            raise _refused("is not an access token (its typ)")
        if not isinstance(kid, str):
            raise _refused("names no signing key (kid)")
        return str(algorithm), kid

    async def aclose(self) -> None:
        await self.keys.aclose()


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """OAuth scopes: `scope`, space-separated (RFC 9068: Keycloak, Auth0, Cognito,
    Okta), or `scp`, a string or a list (Microsoft Entra ID)."""
    found: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    return frozenset(found)


def _media_type(value: object) -> str:
    text = str(value).lower()
    return text.removeprefix("application/")


def _refused(reason: str) -> NotAuthenticated:
    return NotAuthenticated(f"The bearer token {reason}.", invalid_token=True)
