"""The upload page and the dashboard: static HTML, CSS and JavaScript, no build step."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)
STATIC = files("thumbnailer") / "static"


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((STATIC / name).read_text(encoding="utf-8"))


@router.get("/", response_class=HTMLResponse)
async def upload_page() -> HTMLResponse:
    return _page("index.html")


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    return _page("dashboard.html")
