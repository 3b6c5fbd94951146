"""Bearer tokens (JWT) as a resource server sees them: verified, never issued (but by the CLI).

One key source per deployment: an HMAC secret (HS*) or the issuer's JWKS (RS*/PS*/ES*/EdDSA),
and an allow-list of algorithms from that one family (config.py refuses a mix), so a token can
never choose how it is checked: `alg: none` is not in any list, and an HS256 token "signed" with
the RSA public key is refused because no HMAC algorithm is accepted next to a JWKS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import jwt

from thumbnailer.auth.principal import ADMIN_SCOPE, Principal
from thumbnailer.config import Settings
from thumbnailer.logging import get_logger

log = get_logger(__name__)

JWKS_TIMEOUT = 5.0
JWKS_MAX_AGE = 300.0  # a JWKS is refetched at most this long after the last fetch, in passing
JWKS_MIN_REFRESH = 60.0  # an unknown kid triggers a refetch at most this often
JWKS_RETRY = 5.0  # after a failed fetch, the next one waits this long


class InvalidToken(Exception):
    """The bearer token is missing, malformed, expired, or not signed by a key we trust."""

    def __init__(self, reason: str, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.missing = reason, missing


class AuthUnavailable(Exception):
    """The keys to check a token with cannot be had right now (JWKS unreachable, none cached)."""


class JwksCache:
    """The issuer's signing keys by `kid`, fetched asynchronously and cached.

    A token with an unknown `kid` refetches the set (key rotation), but at most once per
    `min_refresh` seconds, so made-up kids cannot turn every request into a fetch. Fetches are
    single-flight; a failed refetch keeps the keys already known.
    """

    def __init__(
        self,
        url: str,
        min_refresh: float = JWKS_MIN_REFRESH,
        max_age: float = JWKS_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self.min_refresh, self.max_age, self.clock = url, min_refresh, max_age, clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._kid_refresh_at: float | None = None
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self._next_attempt = float("-inf")
        self._last_error = ""
        self.fetches = 0

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def key(self, kid: str | None) -> jwt.PyJWK:
        if self._fetched_at is None or self.clock() - self._fetched_at >= self.max_age:
            await self._refresh(self._fetched_at)
        found = self._find(kid)
        if found is None and self._may_refresh_for_kid():
            self._kid_refresh_at = self.clock()
            await self._refresh(self._fetched_at)
            found = self._find(kid)
        if found is None:
            raise InvalidToken("token signed by an unknown key")
        return found

    def _may_refresh_for_kid(self) -> bool:
        last = self._kid_refresh_at
        return last is None or self.clock() - last >= self.min_refresh

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        # No kid: acceptable only when the set leaves no choice.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh(self, seen: float | None) -> None:
        async with self._lock:
            if self._fetched_at != seen:
                return  # another request refreshed while this one waited
            now = self.clock()
            if now >= self._next_attempt:
                try:
                    self._keys = await self._fetch()
                    self._fetched_at = self.clock()
                    return
                except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                    # Keep serving the keys we have; a down issuer is not asked on every request.
                    self._next_attempt = now + JWKS_RETRY
                    self._last_error = str(exc) or type(exc).__name__
                    log.warning("jwks_fetch_failed", url=self.url, error=self._last_error)
            if not self._keys:
                raise AuthUnavailable(f"cannot fetch the JWKS: {self._last_error}")

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=JWKS_TIMEOUT, follow_redirects=False)
        self.fetches += 1
        response = await self._client.get(self.url, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError("the JWKS is not a JSON object")
        keys: dict[str, jwt.PyJWK] = {}
        for key in jwt.PyJWKSet.from_dict(document).keys:
            if key.public_key_use in (None, "sig") and key.key_id is not None:
                keys[key.key_id] = key
            elif key.key_id is None and len(document.get("keys", [])) == 1:
                keys[""] = key
        log.info("jwks_fetched", url=self.url, kids=sorted(keys))
        return keys


class TokenVerifier:
    """Bearer token -> Principal, or InvalidToken with a reason fit for the client."""

    def __init__(self, settings: Settings, jwks: JwksCache | None = None) -> None:
        self.algorithms: Sequence[str] = settings.accepted_algorithms
        self.audience = settings.jwt_audience or None
        self.issuer = settings.jwt_issuer or None
        self.leeway = settings.jwt_leeway
        self.secret = settings.jwt_secret
        self.jwks = jwks or (JwksCache(settings.jwt_jwks_url) if settings.jwt_jwks_url else None)
        self._options: Any = {
            "require": ["exp", "sub"],
            "verify_signature": True,
            "enforce_minimum_key_length": True,
        }

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def principal(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise InvalidToken(f"token algorithm {algorithm!r} is not accepted")
        key: jwt.PyJWK | str
        if self.jwks is not None:
            kid = header.get("kid")
            key = await self.jwks.key(kid if isinstance(kid, str) else None)
        else:
            key = self.secret
        claims = self._decode(token, key)
        return principal_from(claims)

    def _decode(self, token: str, key: jwt.PyJWK | str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("token not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("token audience not accepted") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("token issuer not accepted") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token has no {exc.claim!r} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("token signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from exc
        return claims


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise InvalidToken("a bearer token is required", missing=True)
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("the Authorization header must be `Bearer <token>`")
    return token


def principal_from(claims: Mapping[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise InvalidToken("token subject must be a non-empty string of at most 255 characters")
    return Principal(subject=subject, admin=ADMIN_SCOPE in scopes(claims))


def scopes(claims: Mapping[str, Any]) -> set[str]:
    """OAuth `scope` (space-separated string) or `scp` (string or list, as Azure/Okta send it)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found |= set(value.split())
        elif isinstance(value, list):
            found |= {item for item in value if isinstance(item, str)}
    return found


def issue_token(settings: Settings, subject: str, scope: str | None = None, ttl: int = 3600) -> str:
    """An HS256 token for local use (the `thumbnailer token` command and README examples)."""
    if not settings.jwt_secret:
        raise ValueError("JWT_SECRET is not set: only HS256 tokens can be issued locally")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "nbf": now, "exp": now + ttl}
    if scope:
        claims["scope"] = scope
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
