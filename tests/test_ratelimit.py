"""Rate limits in the real Redis (per-run key prefix), and failing open when it is cut."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.auth_support import JWT_SETTINGS, SECRET, bearer, hs_token, running
from tests.conftest import delete_queues, make_settings
from tests.support import REDIS_KEY_PREFIX, jpeg_bytes, unique_name
from tests.tcp_proxy import TcpProxy
from thumbnailer.api import ratelimit

JPEG = jpeg_bytes(32, 32)


def files() -> dict[str, tuple[str, bytes]]:
    return {"file": ("p.jpg", JPEG)}


def assert_limited(response: httpx.Response, name: str, quota: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "rate_limited"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert response.headers["ratelimit-policy"] == f'"{name}";q={quota};w=60'
    assert response.headers["ratelimit"] == f'"{name}";r=0;t={retry_after}'


def unavailable() -> float:
    return REGISTRY.get_sample_value("thumbnailer_rate_limit_unavailable_total") or 0.0


async def test_uploads_and_requests_are_limited_per_subject(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url, tmp_path / "storage", jwt_secret=SECRET, **JWT_SETTINGS,
        redis_key_prefix=unique_name(REDIS_KEY_PREFIX),
        rate_limit_uploads="2/minute", rate_limit_requests="6/minute",
    )  # fmt: skip
    alice, bob = bearer(hs_token("alice")), bearer(hs_token("bob"))
    async with running(settings) as (_, client):
        for _ in range(2):
            assert (await client.post("/images", files=files(), headers=alice)).status_code == 202
        assert_limited(await client.post("/images", files=files(), headers=alice), "uploads", 2)
        # Bob has his own budget.
        assert (await client.post("/images", files=files(), headers=bob)).status_code == 202
        # Alice's requests so far: 3 uploads; 3 more GETs are allowed, the 7th request is not.
        for _ in range(3):
            assert (await client.get("/images", headers=alice)).status_code == 200
        assert_limited(await client.get("/images", headers=alice), "requests", 6)
        assert (await client.get("/livez")).status_code == 200  # probes are never limited
    await delete_queues(settings)


async def test_none_mode_limits_by_client_address_from_trusted_proxies_only(
    database_url: str, tmp_path: Path
) -> None:
    for trusted, expect in ((["127.0.0.1"], 200), (["10.1.2.3"], 429)):
        settings = make_settings(
            database_url, tmp_path / unique_name("storage"),
            redis_key_prefix=unique_name(REDIS_KEY_PREFIX),
            rate_limit_requests="2/minute", forwarded_allow_ips=",".join(trusted),
        )  # fmt: skip
        async with running(settings) as (_, client):
            for _ in range(2):
                response = await client.get("/images", headers={"X-Forwarded-For": "192.0.2.1"})
                assert response.status_code == 200
            # Another client behind the proxy: its own budget, if the proxy is trusted.
            other = await client.get("/images", headers={"X-Forwarded-For": "192.0.2.2"})
            assert other.status_code == expect, trusted
        await delete_queues(settings)


@pytest.mark.faults
async def test_redis_cut_fails_open_and_is_counted(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with TcpProxy("127.0.0.1", 6379) as proxy:
        settings = make_settings(
            database_url, tmp_path / "storage", jwt_secret=SECRET, **JWT_SETTINGS,
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            redis_key_prefix=unique_name(REDIS_KEY_PREFIX),
            rate_limit_uploads="3/minute",
        )  # fmt: skip
        alice = bearer(hs_token("alice"))
        async with running(settings) as (_, client):
            assert (await client.post("/images", files=files(), headers=alice)).status_code == 202
            assert (await client.get("/health")).json()["services"]["redis"] is True
            proxy.cut()
            before = unavailable()
            for _ in range(5):  # over the upload limit, yet served: the limiter is down
                response = await client.post("/images", files=files(), headers=alice)
                assert response.status_code == 202, response.text
            assert unavailable() - before >= 5
            # create_app routes the logs to stdout: one line when it starts, not one per request
            assert capsys.readouterr().out.count('"event": "rate_limit_unavailable"') == 1
            health = await client.get("/health")
            assert health.status_code == 200
            assert health.json()["status"] == "healthy"
            assert health.json()["services"]["redis"] is False
            proxy.restore()
            await asyncio.sleep(ratelimit.BREAKER_SECONDS + 0.1)
            # Back: the counter remembers the one upload before the cut, so two more pass.
            codes = [
                (await client.post("/images", files=files(), headers=alice)).status_code
                for _ in range(3)
            ]
            assert codes == [202, 202, 429]
            assert (await client.get("/health")).json()["services"]["redis"] is True
            assert '"event": "rate_limit_restored"' in capsys.readouterr().out
        await delete_queues(settings)
