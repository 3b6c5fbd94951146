"""Idempotency-Key (IETF httpapi draft): a request retried with the same key gets the first
answer again instead of doing the work twice.

A route that honours it takes `IdempotencyDep` and, once it knows the request's fingerprint
(for an upload: the hash of its parts, computed while spooling), runs its work inside `claim`:

    async with idempotency.claim(spooled.fingerprint) as claim:
        if claim.replay is not None:
            return claim.replayed()
        ...do the work...
        claim.remember(202, body, {"Location": ...})

Same key, same caller, same operation within IDEMPOTENCY_TTL: the first answer (status, body,
Location) replays. Another fingerprint: 422 `idempotency_key_reused`. The first request still
running: 409 `idempotency_key_in_progress`. A request that fails gives its key back, so the
client's retry runs for real.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from thumbnailer.api import errors
from thumbnailer.logging import get_logger
from thumbnailer.repo import IdempotencyKeys, KeyHolder, KeyName, RepoUnavailable

log = get_logger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# How long a request in progress holds its key: past it, its process is presumed dead (killed
# mid-request) and a retry may go ahead. Work after the body is spooled takes well under a second.
LEASE_SECONDS = 60.0
# Visible ASCII, as a Structured Field String may carry (the draft's `"..."` form or bare).
_KEY_SHAPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,255}$")
# What a replay repeats besides the status and the body.
_REPLAYED_HEADERS = ("Location",)


def parse_key(raw: str) -> str:
    """The key of an `Idempotency-Key` header: a (quoted) string of 1-255 visible characters."""
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not _KEY_SHAPE.match(value):
        raise errors.INVALID_IDEMPOTENCY_KEY
    return value


def fingerprint_json(payload: Any) -> str:
    """The fingerprint of a JSON request body (variant creation and the like)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Claim:
    """What `claim` found: a first answer to replay, or the go-ahead (then `remember` it)."""

    replay: KeyHolder | None = None
    answer: tuple[int, dict[str, Any]] | None = None

    def remember(self, status_code: int, body: Any, headers: dict[str, str]) -> None:
        given = {name.lower(): value for name, value in headers.items()}
        kept = {name: given[name.lower()] for name in _REPLAYED_HEADERS if name.lower() in given}
        self.answer = (status_code, {"body": body, "headers": kept})

    def replayed(self) -> JSONResponse:
        assert self.replay is not None
        assert self.replay.response is not None
        stored = self.replay.response
        headers = {**stored.get("headers", {}), REPLAYED_HEADER: "true"}
        return JSONResponse(stored["body"], self.replay.status_code or 200, headers=headers)


class Idempotency:
    """The request's key bound to its caller and operation; `name` None: no key was sent."""

    def __init__(self, keys: IdempotencyKeys, name: KeyName | None, ttl: float) -> None:
        self.keys, self.name, self.ttl = keys, name, ttl

    @asynccontextmanager
    async def claim(self, fingerprint: str | None) -> AsyncIterator[Claim]:
        if self.name is None:
            yield Claim()
            return
        assert fingerprint is not None, "a keyed request must be fingerprinted"
        holder = await self.keys.claim(self.name, fingerprint, self.ttl, LEASE_SECONDS)
        if holder is not None:
            if holder.fingerprint != fingerprint:
                raise errors.IDEMPOTENCY_KEY_REUSED
            if holder.in_progress:
                raise errors.IDEMPOTENCY_KEY_IN_PROGRESS
            yield Claim(replay=holder)
            return
        claim = Claim()
        try:
            yield claim
        except BaseException:
            with suppress(RepoUnavailable):
                await self.keys.release(self.name, fingerprint)
            raise
        await self._settle(claim, fingerprint)

    async def _settle(self, claim: Claim, fingerprint: str) -> None:
        assert self.name is not None
        try:
            if claim.answer is None:
                await self.keys.release(self.name, fingerprint)
            else:
                await self.keys.complete(self.name, fingerprint, *claim.answer)
        except RepoUnavailable as exc:
            # The work is done and answered; only a retry within the lease sees 409 meanwhile.
            log.warning("idempotency_key_not_saved", key=self.name.key, error=str(exc))
