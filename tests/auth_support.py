"""What the auth tests share: keys they generate, a JWKS server they start, token makers."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI

from thumbnailer.api.app import create_app
from thumbnailer.config import Settings

SECRET = "test-hs256-secret-of-at-least-32-bytes!"
SIGNING_KEY = "test-url-signing-key-of-32-bytes-or-more"
AUDIENCE = "thumbnailer-test"
ISSUER = "https://issuer.test/"
JWT_SETTINGS: dict[str, object] = {
    "auth_mode": "jwt",
    "jwt_audience": AUDIENCE,
    "jwt_issuer": ISSUER,
    "jwt_leeway": 0,
    "url_signing_key": SIGNING_KEY,
    "public_base_url": "http://testserver",
}


def claims(sub: str | None = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    if sub is not None:
        values["sub"] = sub
    values.update(extra)
    return {k: v for k, v in values.items() if v is not None}


def hs_token(sub: str | None = "alice", key: str | bytes = SECRET, **extra: Any) -> str:
    return jwt.encode(claims(sub, **extra), key, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unsigned_token(sub: str = "alice") -> str:
    """`alg: none`, written by hand: PyJWT refuses to make one."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims(sub))}."


class Signer:
    """A private key of the test's own, published in the JWKS under `kid`."""

    def __init__(self, kid: str, kind: str = "RSA") -> None:
        self.kid = kid
        self.private_key: Any
        if kind == "RSA":
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.algorithm = "RS256"
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        else:
            self.private_key = ec.generate_private_key(ec.SECP256R1())
            self.algorithm = "ES256"
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        self.jwk: dict[str, Any] = {**jwk, "kid": kid, "use": "sig", "alg": self.algorithm}

    def token(self, sub: str | None = "alice", kid: str | None = None, **extra: Any) -> str:
        headers = {"kid": kid or self.kid}
        return jwt.encode(claims(sub, **extra), self.private_key, self.algorithm, headers)

    def public_pem(self) -> bytes:
        return bytes(
            self.private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


class JwksServer:
    """An HTTP server on a free port serving a JWKS the test can change; counts its fetches."""

    def __init__(self, *signers: Signer) -> None:
        self.document: dict[str, Any] = {"keys": [s.jwk for s in signers]}
        self.fetches = 0
        self.status = 200  # set to 500 to play an issuer that is down
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.document).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def publish(self, *signers: Signer) -> None:
        self.document = {"keys": [s.jwk for s in signers]}

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.services.broker.wait_connected(), 10)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client
