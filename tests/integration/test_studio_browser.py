"""The web studio in headless Chromium (Debian's, driven by Playwright): create, watch, listen, like."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "studio.png"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it as root)")
def test_the_studio_makes_content_and_records_a_like(base_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith((base_url, "blob:", "data:")) else outside.append(r.url))
        page.goto(base_url)
        page.get_by_label("Topic").fill("a short story about lighthouses")
        page.get_by_label("Your user id (optional)").fill("browser-user")
        page.get_by_role("button", name="Create").click()
        expect(page.locator("body")).to_have_attribute("data-status", "complete", timeout=120_000)
        assert page.locator("#title").inner_text().strip()
        assert page.locator("#body").inner_text().strip()
        assert page.locator("#image").evaluate("img => img.complete && img.naturalWidth") == 64
        assert page.locator("#audio").evaluate("a => a.src.startsWith('blob:')")
        for stage in ("article", "image", "audio", "recommendations"):
            expect(page.locator(f'#stages li[data-stage="{stage}"]')).to_have_attribute("data-state", "done")
        like = page.locator("#recs button").first
        like.click()
        expect(like).to_have_text("Liked ♥")
        page.screenshot(path=str(SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "studio.png"))
        browser.close()
    assert outside == []  # nothing fetched from the internet
