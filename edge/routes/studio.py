"""The web studio: one self-contained page (no assets from the internet) over this API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()
STUDIO_PAGE = Path(__file__).with_name("studio.html").read_text(encoding="utf-8")


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
async def studio() -> HTMLResponse:
    return HTMLResponse(STUDIO_PAGE)
