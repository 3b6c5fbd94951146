"""AUTH_MODE=jwt with the real API and worker processes: thumbnails behind signed URLs, owners
kept apart, /metrics only on the internal port."""

from __future__ import annotations

import httpx
import pytest

from tests.auth_support import bearer, hs_token
from tests.conftest import Services
from tests.support import jpeg_bytes
from tests.test_e2e import wait_for_terminal

pytestmark = pytest.mark.e2e


def test_jwt_mode_end_to_end(jwt_services: Services) -> None:
    alice, bob = bearer(hs_token("alice")), bearer(hs_token("bob"))
    with httpx.Client(base_url=jwt_services.base_url, timeout=30) as client:
        assert client.post("/images", files={"file": ("a.jpg", b"x")}).status_code == 401
        response = client.post(
            "/images", files={"file": ("a.jpg", jpeg_bytes(800, 600))}, headers=alice
        )
        assert response.status_code == 202, response.text
        image_id = response.json()["id"]
        client.headers.update(alice)
        body = wait_for_terminal(client, image_id)
        assert body["status"] == "DONE", body
        client.headers.pop("Authorization")
        urls = [str(body["original_url"]), *dict(body["thumbnails"]).values()]  # type: ignore[call-overload]
        for url in urls:
            assert url.startswith("/files/"), url
            assert "sig=" in url, url
            response = client.get(url)  # no token: the signed URL is enough
            assert response.status_code == 200, url
            assert response.headers["content-security-policy"] == "sandbox"
            assert response.headers["cache-control"].startswith("private, max-age=")
            assert client.get(url.split("?")[0]).status_code == 403
        assert client.get(f"/images/{image_id}", headers=bob).status_code == 404
        assert client.get("/metrics").status_code == 404
    port = jwt_services.settings.metrics_port
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert scraped.status_code == 200
    assert "thumbnailer_rate_limit_unavailable_total" in scraped.text
    assert "thumbnailer_upload_bytes_total" in scraped.text
