"""Idempotency keys: who claimed a key for which request, and the answer it got.

One INSERT ... ON CONFLICT claims a key: it wins for a new key, for an expired one and for one
whose holder's lease ran out (its process died mid-request), and loses for everything else, so
of two concurrent requests with one key exactly one goes ahead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, and_, bindparam, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from thumbnailer.repo.images import Repo
from thumbnailer.repo.schema import IdempotencyKeyRow

_ROW = IdempotencyKeyRow
_THIS_KEY = and_(
    _ROW.caller == bindparam("p_caller"),
    _ROW.operation == bindparam("p_operation"),
    _ROW.key == bindparam("p_key"),
)


def _seconds_from(name: str) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, bindparam(name, type_=Float))


def _claim_statement() -> Any:
    now = func.now()
    fresh = {
        "fingerprint": bindparam("p_fingerprint"),
        "status_code": None,
        "response": None,
        "created_at": now,
        "locked_until": now + _seconds_from("p_lease"),
        "expires_at": now + _seconds_from("p_ttl"),
    }
    stmt = insert(_ROW).values(
        caller=bindparam("p_caller"),
        operation=bindparam("p_operation"),
        key=bindparam("p_key"),
        **fresh,
    )
    taken_over = or_(
        _ROW.expires_at < now,
        and_(
            _ROW.status_code.is_(None),
            _ROW.locked_until < now,
            _ROW.fingerprint == stmt.excluded.fingerprint,
        ),
    )
    return stmt.on_conflict_do_update(
        index_elements=[_ROW.caller, _ROW.operation, _ROW.key], set_=fresh, where=taken_over
    ).returning(_ROW.key)


_CLAIM = _claim_statement()
_FIND = select(_ROW.fingerprint, _ROW.status_code, _ROW.response).where(
    _THIS_KEY, _ROW.expires_at >= func.now()
)
_COMPLETE = (
    update(_ROW)
    .where(_THIS_KEY, _ROW.status_code.is_(None), _ROW.fingerprint == bindparam("p_fingerprint"))
    .values(status_code=bindparam("p_status_code"), response=bindparam("p_response"))
)
_RELEASE = delete(_ROW).where(
    _THIS_KEY, _ROW.status_code.is_(None), _ROW.fingerprint == bindparam("p_fingerprint")
)


@dataclass(frozen=True)
class KeyHolder:
    """Who holds a key already: the request's fingerprint and, once finished, its answer."""

    fingerprint: str
    status_code: int | None
    response: dict[str, Any] | None

    @property
    def in_progress(self) -> bool:
        return self.status_code is None


@dataclass(frozen=True)
class KeyName:
    caller: str
    operation: str
    key: str

    def params(self) -> dict[str, str]:
        return {"p_caller": self.caller, "p_operation": self.operation, "p_key": self.key}


class IdempotencyKeys:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    async def claim(
        self, name: KeyName, fingerprint: str, ttl: float, lease: float
    ) -> KeyHolder | None:
        """None when this request now holds the key; else whoever holds it (a few tries, for a
        holder that releases it between our claim and our look)."""
        params = {**name.params(), "p_fingerprint": fingerprint, "p_ttl": ttl, "p_lease": lease}
        for _ in range(3):
            async with self.repo.connection() as conn:
                if (await conn.execute(_CLAIM, params)).first() is not None:
                    return None
                found = (await conn.execute(_FIND, name.params())).first()
            if found is not None:
                return KeyHolder(found.fingerprint, found.status_code, found.response)
        raise RuntimeError(f"idempotency key {name.key!r} changed hands three times in a row")

    async def complete(
        self, name: KeyName, fingerprint: str, status_code: int, response: dict[str, Any]
    ) -> None:
        params = {**name.params(), "p_fingerprint": fingerprint}
        async with self.repo.connection() as conn:
            await conn.execute(
                _COMPLETE, {**params, "p_status_code": status_code, "p_response": response}
            )

    async def release(self, name: KeyName, fingerprint: str) -> None:
        """The request failed: the key is free for the client's retry."""
        async with self.repo.connection() as conn:
            await conn.execute(_RELEASE, {**name.params(), "p_fingerprint": fingerprint})

    async def purge_expired(self, limit: int) -> int:
        doomed = (
            select(_ROW.caller, _ROW.operation, _ROW.key)
            .where(_ROW.expires_at < func.now())
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = delete(_ROW).where(tuple_(_ROW.caller, _ROW.operation, _ROW.key).in_(doomed))
        async with self.repo.transaction() as conn:
            return int((await conn.execute(stmt)).rowcount)
