"""What AUTH_MODE=jwt and rate limiting cost per upload, in API CPU milliseconds.

Measured in one process (time.process_time, so the PostgreSQL, RabbitMQ and Redis servers' own
CPU is not counted; the client side of httpx's ASGI transport is, equally in every mode):
- end to end: POST /images + one GET /images/{id} per upload, none mode vs jwt mode (HS256),
  interleaved rounds, median of the per-round means;
- the parts: one token verification (HS256; RS256 from a cached JWKS), one rate-limit hit in
  the real Redis (an upload spends two: requests + uploads, a GET one), one signed URL.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.common import table
from tests.auth_support import JWT_SETTINGS, SECRET, JwksServer, Signer, bearer, hs_token
from tests.support import ADMIN_DATABASE_URL, RABBITMQ_URL, jpeg_bytes
from thumbnailer.api.app import create_app
from thumbnailer.api.ratelimit import RateLimiter
from thumbnailer.auth import TokenVerifier
from thumbnailer.cli import migrate
from thumbnailer.config import Settings
from thumbnailer.store.signing import UrlSigner

JPEG = jpeg_bytes(640, 480)


def _settings(database_url: str, root: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "rabbitmq_url": RABBITMQ_URL,
        "queue_name": f"bench_auth_{uuid.uuid4().hex[:8]}.jobs",
        "storage_path": root / "storage",
        "spool_path": root / "spool",
        "log_level": "WARNING",
        "redis_key_prefix": f"bench_auth_{uuid.uuid4().hex[:8]}",
        "rate_limit_uploads": "1000000/minute",
        "rate_limit_requests": "1000000/minute",
        **extra,
    }
    return Settings(_env_file=None, **values)


async def _uploads_cpu_ms(settings: Settings, headers: dict[str, str], count: int) -> float:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.services.broker.wait_connected(), 10)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _ in range(10):  # warm-up: connections, compiled statements
                await client.post("/images", files={"file": ("w.jpg", JPEG)}, headers=headers)
            started = time.process_time()
            for _ in range(count):
                response = await client.post(
                    "/images", files={"file": ("b.jpg", JPEG)}, headers=headers
                )
                assert response.status_code == 202, response.text
                got = await client.get(f"/images/{response.json()['id']}", headers=headers)
                assert got.status_code == 200
            return (time.process_time() - started) * 1000 / count


def _cpu_us(run: Any, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        run()
    return (time.process_time() - started) * 1e6 / count


async def _async_cpu_us(run: Any, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        await run()
    return (time.process_time() - started) * 1e6 / count


async def _parts(root: Path, count: int) -> dict[str, float]:
    hs = Settings(_env_file=None, jwt_secret=SECRET, **JWT_SETTINGS)  # type: ignore[arg-type]
    verifier = TokenVerifier(hs)
    token = f"Bearer {hs_token('alice')}"
    signer = Signer("bench-rsa")
    with JwksServer(signer) as server:
        rs = Settings(_env_file=None, jwt_jwks_url=server.url, **JWT_SETTINGS)  # type: ignore[arg-type]
        rs_verifier = TokenVerifier(rs)
        rs_token = f"Bearer {signer.token('alice')}"
        await rs_verifier.principal(rs_token)
        parts = {
            "verify HS256 token": await _async_cpu_us(lambda: verifier.principal(token), count),
            "verify RS256 token (JWKS cached)": await _async_cpu_us(
                lambda: rs_verifier.principal(rs_token), count
            ),
        }
        await rs_verifier.close()
    limiter = RateLimiter(_settings("", root))
    await limiter.hit(limiter.requests, "warm")
    parts["rate-limit hit (Redis round trip)"] = await _async_cpu_us(
        lambda: limiter.hit(limiter.requests, "bench"), count
    )
    await limiter.close()
    url_signer = UrlSigner(SECRET, 3600)
    parts["sign one file URL"] = _cpu_us(lambda: url_signer.query("originals/ab/x.jpg"), count)
    return parts


async def _database(name: str, create: bool) -> None:
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        if create:
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run(quick: bool, earlier: dict[str, Any]) -> dict[str, Any]:
    count, rounds = (50, 2) if quick else (200, 3)
    name = f"bench_auth_{uuid.uuid4().hex[:8]}"
    database_url = f"{ADMIN_DATABASE_URL.rsplit('/', 1)[0]}/{name}"
    asyncio.run(_database(name, create=True))
    try:
        migrate(Settings(_env_file=None, database_url=database_url))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            none = _settings(database_url, root / "none")
            jwt_mode = _settings(database_url, root / "jwt", jwt_secret=SECRET, **JWT_SETTINGS)
            per_round: dict[str, list[float]] = {"none": [], "jwt": []}
            for _ in range(rounds):
                per_round["none"].append(asyncio.run(_uploads_cpu_ms(none, {}, count)))
                per_round["jwt"].append(
                    asyncio.run(_uploads_cpu_ms(jwt_mode, bearer(hs_token("alice")), count))
                )
            parts = asyncio.run(_parts(root, 2000 if not quick else 500))
    finally:
        asyncio.run(_database(name, create=False))
    none_ms = statistics.median(per_round["none"])
    jwt_ms = statistics.median(per_round["jwt"])
    rows = [
        {"measure": "upload + one GET, AUTH_MODE=none (ms CPU)", "value": round(none_ms, 3)},
        {"measure": "upload + one GET, AUTH_MODE=jwt (ms CPU)", "value": round(jwt_ms, 3)},
        {"measure": "jwt mode extra per upload (ms CPU)", "value": round(jwt_ms - none_ms, 3)},
        *({"measure": f"{k} (us CPU)", "value": round(v, 1)} for k, v in parts.items()),
    ]
    limits_ms = 3 * parts["rate-limit hit (Redis round trip)"] / 1000
    jwt_parts_ms = (2 * parts["verify HS256 token"] + 4 * parts["sign one file URL"]) / 1000
    rows.append({"measure": "rate limiting per upload + GET, 3 hits (ms CPU)",
                 "value": round(limits_ms, 3)})  # fmt: skip
    rows.append({"measure": "jwt parts per upload + GET: 2 HS256 checks + 4 URLs (ms CPU)",
                 "value": round(jwt_parts_ms, 3)})  # fmt: skip
    markdown = table(["measure", "value"], [[r["measure"], r["value"]] for r in rows])
    return {"rows": rows, "markdown": markdown, "rounds": per_round, "parts_us": parts}


if __name__ == "__main__":
    print(run(quick=False, earlier={})["markdown"])
