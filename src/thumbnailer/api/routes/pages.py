"""The upload page and the dashboard: static HTML, CSS and JavaScript, no build step.

They send a strict CSP (only our own scripts and styles; images from us or the public base URL;
no framing), no referrer (file URLs carry signatures in jwt mode) and no sniffing.
"""

from __future__ import annotations

from importlib.resources import files
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from thumbnailer.api.deps import SettingsDep
from thumbnailer.config import Settings

router = APIRouter(include_in_schema=False)
STATIC = files("thumbnailer") / "static"


def security_headers(settings: Settings) -> dict[str, str]:
    images = "'self' data: blob:"
    public = urlsplit(settings.public_base_url)
    if public.scheme and public.netloc:
        images += f" {public.scheme}://{public.netloc}"
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }


def _page(name: str, settings: Settings) -> HTMLResponse:
    html = (STATIC / name).read_text(encoding="utf-8")
    html = html.replace("{{AUTH_MODE}}", settings.auth_mode)
    return HTMLResponse(html, headers=security_headers(settings))


@router.get("/", response_class=HTMLResponse)
async def upload_page(settings: SettingsDep) -> HTMLResponse:
    return _page("index.html", settings)


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(settings: SettingsDep) -> HTMLResponse:
    return _page("dashboard.html", settings)
