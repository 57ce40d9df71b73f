"""GET /: a translation page (service/static/index.html) on the native API: pickers filled from
/v1/languages, /v1/translate with the key typed in, the specialist, route, latency and memory saved shown."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["web"])
PAGE = Path(__file__).resolve().parents[1] / "static" / "index.html"


@cache
def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(_page())
