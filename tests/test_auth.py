"""AUTH_MODE=jwt in-process against the real PostgreSQL, RabbitMQ and Redis: tokens, ownership,
signed file URLs. Keys are generated here; the JWKS is served by a local HTTP server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from pydantic import ValidationError

from tests.auth_support import (
    AUDIENCE,
    ISSUER,
    JWT_SETTINGS,
    SECRET,
    SIGNING_KEY,
    JwksServer,
    Signer,
    bearer,
    claims,
    hs_token,
    running,
    unsigned_token,
)
from tests.conftest import delete_queues, make_settings
from tests.support import ROOT, jpeg_bytes
from thumbnailer.auth import JwksCache
from thumbnailer.config import Settings
from thumbnailer.records import NewImage
from thumbnailer.store.signing import UrlSigner, expiry

JPEG = jpeg_bytes(64, 48)
ALICE, BOB = bearer(hs_token("alice")), bearer(hs_token("bob"))
ADMIN = bearer(hs_token("root", scope="openid images:admin"))


@pytest.fixture(scope="module")
def hs_settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = make_settings(
        database_url, tmp_path_factory.mktemp("auth") / "storage", jwt_secret=SECRET,
        **JWT_SETTINGS,
    )  # fmt: skip
    yield settings
    asyncio.run(delete_queues(settings))


@pytest.fixture(scope="module")
async def hs(hs_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(hs_settings) as (_, client):
        yield client


async def upload(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post("/images", files={"file": ("p.jpg", JPEG)}, headers=headers)
    assert response.status_code == 202, response.text
    image_id: str = response.json()["id"]
    return image_id


def assert_invalid(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_token"
    assert reason in response.json()["detail"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge


# --- tokens -----------------------------------------------------------------------------------


async def test_valid_hs256_token_is_accepted(hs: httpx.AsyncClient) -> None:
    response = await hs.get("/images", headers=ALICE)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (hs_token(exp=1_000_000), "expired"),
        (hs_token(nbf=4_000_000_000), "not yet valid"),
        (hs_token(aud="someone-else"), "audience"),
        (hs_token(aud=None), "aud"),
        (hs_token(iss="https://evil.test/"), "issuer"),
        (hs_token(sub=None), "'sub'"),
        (hs_token(exp=None), "'exp'"),
        (hs_token(key="another-secret-that-is-32-bytes-long"), "signature"),
        (unsigned_token(), "'none' is not accepted"),
        (jwt.encode(claims(), SECRET * 2, "HS512"), "'HS512' is not accepted"),
        ("not.a.token", "malformed"),
    ],
    ids=[
        "expired", "not-yet-valid", "wrong-audience", "no-audience", "wrong-issuer",
        "missing-sub", "missing-exp", "wrong-key", "alg-none", "alg-not-allowed", "garbage",
    ],
)  # fmt: skip
async def test_bad_tokens_are_401(hs: httpx.AsyncClient, token: str, reason: str) -> None:
    assert_invalid(await hs.get("/images", headers=bearer(token)), reason)


async def test_tampered_token_is_401(hs: httpx.AsyncClient) -> None:
    header, payload, signature = hs_token("alice").split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"alice"', b'"admin"')
    ).decode()
    assert_invalid(
        await hs.get("/images", headers=bearer(f"{header}.{forged_payload}.{signature}")),
        "signature",
    )
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    assert_invalid(await hs.get("/images", headers=bearer(f"{header}.{payload}.{flipped}")), "")


async def test_no_token_is_401_without_an_error_code(hs: httpx.AsyncClient) -> None:
    for method, path in [("GET", "/images"), ("GET", f"/images/{uuid.uuid4()}"),
                         ("POST", "/images")]:  # fmt: skip
        response = await hs.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.json()["code"] == "missing_token"
        assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    basic = await hs.get("/images", headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert_invalid(basic, "Bearer")


async def test_json_is_private_to_the_token_and_openapi_says_bearer(hs: httpx.AsyncClient) -> None:
    mine = await upload(hs, ALICE)
    for path in ("/images", f"/images/{mine}"):
        response = await hs.get(path, headers=ALICE)
        assert response.headers["cache-control"] == "private, no-cache", path
        assert "Authorization" in response.headers["vary"], path
    schema = (await hs.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/images"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/health"]["get"]


async def test_probes_and_pages_need_no_token(hs: httpx.AsyncClient) -> None:
    for path in ("/livez", "/readyz", "/health", "/", "/dashboard"):
        assert (await hs.get(path)).status_code == 200, path


# --- JWKS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_signer() -> Signer:
    return Signer("rsa-1")


@pytest.fixture(scope="module")
def jwks_server(rsa_signer: Signer) -> Iterator[JwksServer]:
    with JwksServer(rsa_signer, Signer("ec-1", "EC")) as server:
        yield server


@pytest.fixture(scope="module")
async def jwks_client(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url, tmp_path_factory.mktemp("jwks") / "storage",
        jwt_jwks_url=jwks_server.url, **JWT_SETTINGS,
    )  # fmt: skip
    async with running(settings) as (_, client):
        yield client
    await delete_queues(settings)


async def test_valid_rs256_and_es256_tokens_from_the_jwks(
    jwks_client: httpx.AsyncClient, rsa_signer: Signer
) -> None:
    assert (await jwks_client.get("/images", headers=bearer(rsa_signer.token()))).status_code == 200
    ec_signer = Signer("ec-unpublished", "EC")
    response = await jwks_client.get("/images", headers=bearer(ec_signer.token()))
    assert_invalid(response, "unknown key")


async def test_algorithm_confusion_hs256_with_the_rsa_public_key(
    jwks_client: httpx.AsyncClient, rsa_signer: Signer
) -> None:
    # PyJWT refuses to HMAC with a PEM key; forge the token by hand, as an attacker would.
    import hashlib
    import hmac

    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT","kid":"rsa-1"}')
    payload = jwt.utils.base64url_encode(json.dumps(claims("admin")).encode())
    signing_input = header + b"." + payload
    digest = hmac.new(rsa_signer.public_pem(), signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + jwt.utils.base64url_encode(digest)).decode()
    assert_invalid(await jwks_client.get("/images", headers=bearer(token)), "'HS256'")


async def test_key_rotation_and_unknown_kids_refetch_at_most_once_a_minute(
    jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    now = [1000.0]
    cache = JwksCache(jwks_server.url, clock=lambda: now[0])
    try:
        before = jwks_server.fetches
        assert (await cache.key("rsa-1")).key_id == "rsa-1"
        assert jwks_server.fetches == before + 1
        rotated = Signer("rsa-2")
        jwks_server.publish(rsa_signer, rotated)
        now[0] += 5
        assert (await cache.key("rsa-2")).key_id == "rsa-2"  # unknown kid: one refetch
        assert jwks_server.fetches == before + 2
        for _ in range(20):  # made-up kids within the minute: refused without a fetch
            with pytest.raises(Exception, match="unknown key"):
                await cache.key(f"made-up-{uuid.uuid4()}")
        assert jwks_server.fetches == before + 2
        now[0] += 61
        with pytest.raises(Exception, match="unknown key"):
            await cache.key("still-unknown")
        assert jwks_server.fetches == before + 3
    finally:
        await cache.close()
        jwks_server.publish(rsa_signer, Signer("ec-1", "EC"))


async def test_a_down_issuer_keeps_the_cached_keys_and_is_not_hammered(
    jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    now = [5000.0]
    cache = JwksCache(jwks_server.url, clock=lambda: now[0])
    try:
        await cache.key("rsa-1")
        fetches = jwks_server.fetches
        jwks_server.status = 500
        now[0] += cache.max_age + 1  # stale: refetched in passing, and that fails
        assert (await cache.key("rsa-1")).key_id == "rsa-1"
        assert jwks_server.fetches == fetches + 1
        for _ in range(10):  # within the retry pause: no more fetches
            assert (await cache.key("rsa-1")).key_id == "rsa-1"
        assert jwks_server.fetches == fetches + 1
        jwks_server.status = 200
        now[0] += 6
        await cache.key("rsa-1")
        assert jwks_server.fetches == fetches + 2
        await cache.key("rsa-1")  # fresh again
        assert jwks_server.fetches == fetches + 2
    finally:
        jwks_server.status = 200
        await cache.close()


async def test_rotation_end_to_end(
    database_url: str, tmp_path: Path, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "storage", jwt_jwks_url=jwks_server.url, **JWT_SETTINGS
    )
    async with running(settings) as (_, client):
        assert (await client.get("/images", headers=bearer(rsa_signer.token()))).status_code == 200
        fresh = Signer(f"rsa-{uuid.uuid4().hex[:6]}")
        jwks_server.publish(rsa_signer, fresh)
        fetches = jwks_server.fetches
        response = await client.get("/images", headers=bearer(fresh.token("carol")))
        assert response.status_code == 200, response.text
        assert jwks_server.fetches == fetches + 1
        stranger = Signer("rsa-stranger")
        for _ in range(5):
            assert_invalid(await client.get("/images", headers=bearer(stranger.token())), "key")
        assert jwks_server.fetches == fetches + 1  # within the minute: no more fetches
    await delete_queues(settings)


async def test_unreachable_jwks_is_503_not_401(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        database_url, tmp_path / "storage", jwt_jwks_url="http://127.0.0.1:9/jwks.json",
        **JWT_SETTINGS,
    )  # fmt: skip
    async with running(settings) as (_, client):
        response = await client.get("/images", headers=bearer(Signer("x").token()))
    await delete_queues(settings)
    assert response.status_code == 503
    assert response.json()["code"] == "auth_unavailable"


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({}, "exactly one of JWT_SECRET and JWT_JWKS_URL"),
        ({"jwt_secret": SECRET, "jwt_jwks_url": "http://x"}, "exactly one"),
        ({"jwt_secret": SECRET, "jwt_algorithms": "HS256,RS256"}, "do not fit JWT_SECRET"),
        ({"jwt_jwks_url": "http://x", "jwt_algorithms": "RS256,HS256"}, "do not fit"),
        ({"jwt_jwks_url": "http://x", "jwt_algorithms": "none"}, "do not fit"),
        ({"jwt_secret": "short"}, "at least 32 bytes"),
        ({"jwt_secret": SECRET, "url_signing_key": ""}, "URL_SIGNING_KEY"),
    ],
)
def test_jwt_settings_are_refused_when_unsafe(values: dict[str, object], problem: str) -> None:
    base = {"auth_mode": "jwt", "url_signing_key": SIGNING_KEY}
    with pytest.raises(ValidationError, match=problem):
        Settings(_env_file=None, **{**base, **values})  # type: ignore[arg-type]


def test_cli_token_prints_a_token_the_api_accepts() -> None:
    env = {"JWT_SECRET": SECRET, "JWT_AUDIENCE": AUDIENCE, "JWT_ISSUER": ISSUER, "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-m", "thumbnailer", "token", "--sub", "alice", "--scope",
         "images:admin", "--ttl", "120"],
        env=env, capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.strip()  # fmt: skip
    decoded = jwt.decode(out, SECRET, ["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert decoded["sub"] == "alice"
    assert decoded["scope"] == "images:admin"
    assert decoded["exp"] - decoded["iat"] == 120


# --- ownership --------------------------------------------------------------------------------


async def test_isolation_between_alice_bob_and_admin(hs: httpx.AsyncClient) -> None:
    mine, theirs = await upload(hs, ALICE), await upload(hs, BOB)
    alice_ids = {
        i["id"] for i in (await hs.get("/images?limit=100", headers=ALICE)).json()["items"]
    }
    bob_ids = {i["id"] for i in (await hs.get("/images?limit=100", headers=BOB)).json()["items"]}
    admin_ids = {
        i["id"] for i in (await hs.get("/images?limit=100", headers=ADMIN)).json()["items"]
    }
    assert mine in alice_ids
    assert theirs not in alice_ids
    assert theirs in bob_ids
    assert mine not in bob_ids
    assert {mine, theirs} <= admin_ids
    unknown = uuid.uuid4()
    missing = await hs.get(f"/images/{unknown}", headers=BOB)
    for path in (f"/images/{mine}", f"/images/{mine}?wait=5"):
        response = await hs.get(path, headers=BOB)
        assert response.status_code == 404, path
        assert response.json()["code"] == missing.json()["code"] == "image_not_found"
        assert response.json()["detail"].replace(mine, "") == missing.json()["detail"].replace(
            str(unknown), ""
        )
        assert response.elapsed.total_seconds() < 2  # the long-poll does not wait on it
    for headers in (ALICE, ADMIN):
        assert (await hs.get(f"/images/{mine}", headers=headers)).status_code == 200


async def test_files_need_the_signed_url_only_the_owner_gets(hs: httpx.AsyncClient) -> None:
    mine = await upload(hs, ALICE)
    url = (await hs.get(f"/images/{mine}", headers=ALICE)).json()["original_url"]
    assert (await hs.get(url)).content == JPEG  # no token needed: the URL is the capability
    path = urlsplit(url).path
    for headers in ({}, BOB, ALICE, ADMIN):  # a bare path is refused, whoever asks
        response = await hs.get(path, headers=headers)
        assert response.status_code == 403
        assert response.json()["code"] == "invalid_signature"


async def test_rows_from_before_owners_are_admin_only(
    hs: httpx.AsyncClient, hs_settings: Settings
) -> None:
    from thumbnailer.repo import Repo

    old = uuid.uuid4()
    repo = Repo.connect(hs_settings.database_url, 1)
    try:
        await repo.add(NewImage(old, f"originals/{str(old)[:2]}/{old}.jpg", "old.jpg",
                                "image/jpeg", 1, 1, 1, None))  # fmt: skip
    finally:
        await repo.close()
    assert (await hs.get(f"/images/{old}", headers=ALICE)).status_code == 404
    assert (await hs.get(f"/images/{old}", headers=ADMIN)).status_code == 200
    listed = (await hs.get("/images?limit=100", headers=ADMIN)).json()["items"]
    assert str(old) in {item["id"] for item in listed}


async def test_scp_claim_as_a_list_grants_admin(hs: httpx.AsyncClient) -> None:
    mine = await upload(hs, ALICE)
    scp = bearer(hs_token("svc", scp=["images:read", "images:admin"]))
    assert (await hs.get(f"/images/{mine}", headers=scp)).status_code == 200
    plain = bearer(hs_token("svc", scope="images:read images:admin-not"))
    assert (await hs.get(f"/images/{mine}", headers=plain)).status_code == 404


# --- signed URLs ------------------------------------------------------------------------------


async def test_signed_urls_valid_tampered_expired_replayed(hs: httpx.AsyncClient) -> None:
    mine, theirs = await upload(hs, ALICE), await upload(hs, BOB)
    body = (await hs.get(f"/images/{mine}", headers=ALICE)).json()
    url = body["original_url"]
    again = (await hs.get(f"/images/{mine}", headers=ALICE)).json()["original_url"]
    assert url == again  # expiry rounded to a window: the same URL, so caches hit
    assert url.startswith("http://testserver/files/originals/")
    valid = await hs.get(url)
    assert valid.status_code == 200
    assert valid.headers["content-security-policy"] == "sandbox"
    assert valid.headers["x-content-type-options"] == "nosniff"
    expires = int(parse_qs(urlsplit(url).query)["exp"][0])
    cache = valid.headers["cache-control"]
    assert cache.startswith("private, max-age=")
    assert int(cache.split("=")[1]) <= expires - time.time() + 1  # never outlives the signature
    assert "immutable" not in cache
    assert "public" not in cache

    sig = parse_qs(urlsplit(url).query)["sig"][0]
    tampered = url.replace(sig, sig[:-2] + ("AA" if not sig.endswith("AA") else "BB"))
    later = url.replace(f"exp={expires}", f"exp={expires + 3600}")
    bob_url = (await hs.get(f"/images/{theirs}", headers=BOB)).json()["original_url"]
    replayed = urlsplit(bob_url).path + "?" + urlsplit(url).query  # alice's signature
    past = UrlSigner(SIGNING_KEY, 60, clock=lambda: 1_000_000.0)
    expired = f"{urlsplit(url).path}?{past.query(urlsplit(url).path.removeprefix('/files/'))}"
    for name, candidate in [("tampered", tampered), ("later", later),
                            ("replayed", replayed), ("expired", expired)]:  # fmt: skip
        response = await hs.get(candidate)
        assert response.status_code == 403, name
        assert response.json()["code"] == "invalid_signature", name
    assert "expired" in (await hs.get(expired)).json()["detail"]


def test_expiry_is_rounded_up_to_a_quarter_of_the_ttl() -> None:
    assert expiry(0, 3600) == 3600
    assert expiry(1, 3600) == 3600 + 900
    assert expiry(900, 3600) == 3600 + 900
    for now in range(0, 5000, 37):
        assert now + 3600 <= expiry(now, 3600) < now + 3600 + 900


async def test_none_mode_keeps_public_urls(client: httpx.AsyncClient) -> None:
    created = (await client.post("/images", files={"file": ("p.jpg", JPEG)})).json()
    url = (await client.get(f"/images/{created['id']}")).json()["original_url"]
    assert "?" not in url
    response = await client.get(url)
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-security-policy"] == "sandbox"


# --- ops surfaces -----------------------------------------------------------------------------


async def test_metrics_leave_the_public_port_in_jwt_mode(
    hs: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    assert (await hs.get("/metrics")).status_code == 404
    assert (await client.get("/metrics")).status_code == 200


async def test_pages_send_csp_and_referrer_policy(hs: httpx.AsyncClient) -> None:
    for path in ("/", "/dashboard"):
        response = await hs.get(path)
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy
        assert "script-src 'self'" in policy
        assert response.headers["referrer-policy"] == "no-referrer"


async def test_urls_never_follow_an_arbitrary_host(database_url: str, tmp_path: Path) -> None:
    values = {**JWT_SETTINGS, "public_base_url": "", "forwarded_allow_ips": "10.9.9.9"}
    settings = make_settings(database_url, tmp_path / "storage", jwt_secret=SECRET, **values)
    async with running(settings) as (_, client):
        mine = await upload(client, ALICE)
        spoofed = {**ALICE, "Host": "evil.test", "X-Forwarded-Host": "evil.test"}
        url = (await client.get(f"/images/{mine}", headers=spoofed)).json()["original_url"]
    assert url.startswith("/files/originals/"), url  # root-relative, not evil.test
    trusted = {**values, "forwarded_allow_ips": "127.0.0.1"}
    settings = make_settings(database_url, tmp_path / "storage2", jwt_secret=SECRET, **trusted)
    async with running(settings) as (_, client):
        mine = await upload(client, ALICE)
        proxied = {**ALICE, "X-Forwarded-Host": "img.example.com", "X-Forwarded-Proto": "https"}
        url = (await client.get(f"/images/{mine}", headers=proxied)).json()["original_url"]
    assert url.startswith("https://img.example.com/files/originals/"), url
    await delete_queues(settings)
