"""A real S3 endpoint for the tests: moto's server in its own process, on a free loopback port.

moto answers the S3 HTTP API (multipart uploads, presigned GETs, ETags) but does not check
signatures, so `verify_presigned` recomputes the SigV4 query signature of a URL we handed out:
the tests check what we signed (method, key, expiry), not moto's enforcement of it.
"""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from tests.support import ARTIFACTS, free_port

ACCESS_KEY = "thumbnailer-test"
SECRET_KEY = "thumbnailer-test-secret"
REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_EC2_METADATA_DISABLED": "true",
}
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass
class MotoServer:
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        log = (ARTIFACTS / "moto.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError("moto server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def create_bucket(self, bucket: str) -> None:
        httpx.put(f"{self.endpoint}/{bucket}").raise_for_status()

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every key under `prefix` with its size (ListObjectsV2, following continuation)."""
        found: dict[str, int] = {}
        params = {"list-type": "2", "prefix": prefix}
        while True:
            response = httpx.get(f"{self.endpoint}/{bucket}", params=params)
            response.raise_for_status()
            root = ET.fromstring(response.content)
            for item in root.iter(f"{S3_NS}Contents"):
                found[item.findtext(f"{S3_NS}Key", "")] = int(item.findtext(f"{S3_NS}Size", "0"))
            token = root.findtext(f"{S3_NS}NextContinuationToken")
            if not token:
                return found
            params["continuation-token"] = token


def free_moto() -> MotoServer:
    return MotoServer(free_port()).start()


@dataclass(frozen=True)
class Presigned:
    method_ok: bool  # the signature is the one for a GET of exactly this path
    path: str
    signed_at: datetime
    expires_at: int  # unix seconds
    signed_headers: str


def verify_presigned(url: str, method: str = "GET", secret: str = SECRET_KEY) -> Presigned:
    """Recompute the SigV4 query signature of `url` for `method` (AWS's presigned-URL algorithm)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = query.pop("X-Amz-Signature")
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    canonical = "\n".join(
        [
            method,
            parts.path,
            canonical_query,
            f"host:{parts.netloc}",
            "",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    stamp = query["X-Amz-Date"]
    scope = query["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return Presigned(
        method_ok=hmac.compare_digest(expected, signature),
        path=parts.path,
        signed_at=signed_at,
        expires_at=int(signed_at.timestamp()) + int(query["X-Amz-Expires"]),
        signed_headers=query["X-Amz-SignedHeaders"],
    )
