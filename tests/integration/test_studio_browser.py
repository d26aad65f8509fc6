"""The web studio in headless Chromium (Debian's, driven by Playwright), the whole path a person takes: create
content as a job (resent under its Idempotency-Key after a 503; tokens before the image; the audio playing while
the article is still being written; a reload mid-way follows the job on), find it in the library, open
it, play its audio, like a related item, watch the feed change after a retrain, open the operations view;
axe-core (from the npm registry) on every view, the tabs by keyboard alone. With UPDATE_SCREENSHOTS=1 the views'
screenshots are written to docs/."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import slow_writing
from tests.integration.serve_state import wait_rolled_out

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
AXE = ROOT / ".cache" / "npm" / "node_modules" / "axe-core" / "axe.min.js"


def check_accessibility(page, view: str) -> None:
    if not AXE.exists():
        if shutil.which("npm"):
            pytest.fail(f"axe-core is not installed at {AXE}: run `make setup` (it installs it with npm)")
        pytest.skip("no npm on this machine: axe-core cannot be installed")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [(v["id"], v["impact"], v["help"]) for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert bad == [], (view, bad)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it as root)")
def test_the_studio_from_creating_to_operations(base_url: str, tmp_path: Path, deployed_app: dict, redeploy) -> None:
    from playwright.sync_api import expect, sync_playwright

    # The text services write at a production model's pace (the tiny model writes a whole article faster than
    # the voice says its title), so that the page can be seen playing the audio while the article grows.
    redeploy(slow_writing(deployed_app["config"], 0.05))
    wait_rolled_out()
    shots = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
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
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith((base_url, "blob:", "data:")) else outside.append(r.url))
        page.goto(base_url)
        page.get_by_label("Your user id").fill("browser-user")

        # Create: the article streams in before the image exists; every stage says how it went. The first send is
        # refused for now (503 + Retry-After, as the edge answers a burst): the studio resends it under its key.
        keys: list[str] = []

        def busy_once(route) -> None:
            keys.append(route.request.headers.get("idempotency-key", ""))
            if len(keys) > 1:
                return route.continue_()
            error = {"message": "text is at capacity", "type": "service_unavailable", "param": None, "code": None}
            route.fulfill(status=503, headers={"Retry-After": "1"}, json={"error": error})

        page.route(
            "**/v1/jobs", lambda route: busy_once(route) if route.request.method == "POST" else route.continue_()
        )
        page.get_by_label("Topic").fill("a short story about lighthouses")
        page.get_by_role("button", name="Create").click()
        expect(page.locator("body")).to_have_attribute("data-status", "complete", timeout=120_000)
        assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("studio-")
        page.unroute("**/v1/jobs")
        marks = {m: page.locator("body").get_attribute(f"data-{m}") for m in ("first-token", "image-at", "audio-at")}
        assert int(marks["first-token"]) < int(marks["image-at"])  # tokens appeared before the image
        assert int(marks["audio-at"]) < int(page.locator("body").get_attribute("data-article-at"))
        # Web Audio was playing the first chunks while tokens still came in.
        assert page.locator("body").get_attribute("data-audio-while-writing") == "true"
        title = page.locator("#title").inner_text().strip()
        assert title and "\ufffd" not in title and page.locator("#body").inner_text().strip()
        assert page.locator("#image").evaluate("img => img.complete && img.naturalWidth") == 64
        for stage in ("article", "image", "audio", "recommendations"):
            expect(page.locator(f'#stages li[data-stage="{stage}"]')).to_have_attribute("data-state", "done")
        page.screenshot(path=str(shots / "studio-create.png"), full_page=True)
        check_accessibility(page, "create")

        # The content is a job: a reload while it is being made follows it on to the end.
        page.get_by_label("Topic").fill("a second story, about tides")
        page.get_by_role("button", name="Create").click()
        expect(page.locator("body")).to_have_attribute("data-job", re.compile(r"^j[0-9a-f]{32}$"), timeout=30_000)
        job = page.locator("body").get_attribute("data-job")
        expect(page.locator("#body")).not_to_have_text("", timeout=30_000)  # it is being written
        page.reload()
        page.get_by_label("Your user id").fill("browser-user")
        expect(page.locator("body")).to_have_attribute("data-job", job, timeout=30_000)
        expect(page.locator("body")).to_have_attribute("data-status", "complete", timeout=120_000)
        assert page.locator("#body").inner_text().strip()
        title = page.locator("#title").inner_text().strip()  # the newest content, first in the library

        # Library: the new content is the first card; opening it shows the article, the picture and the audio.
        page.get_by_role("tab", name="Library").click()
        card = page.locator("#library li.card").first
        expect(card.locator("h3")).to_have_text(title)
        card.get_by_role("button", name=f"Open {title}").click()
        expect(page.locator("#detail-title")).to_have_text(title)
        expect(page.locator("#detail-audio")).to_be_visible()
        with page.expect_request(lambda r: r.url.endswith("/v1/interactions") and "listen" in (r.post_data or "")):
            page.locator("#detail-audio").evaluate("audio => audio.play()")  # playing teaches the recommender
        related = page.locator("#detail-related li.card").first
        expect(related.locator("h3")).not_to_have_text("")
        like = related.get_by_role("button", name="Like", exact=False).first
        like.click()
        expect(like).to_have_text("Liked ♥")
        page.screenshot(path=str(shots / "studio-library.png"), full_page=True)
        check_accessibility(page, "library")

        # For you: a feed with titles and reasons in words; after a retrain it comes from the new version.
        page.get_by_role("tab", name="For you").click()
        expect(page.locator("#feed li.card").first).to_be_visible()
        before = page.locator("body").get_attribute("data-feed-version")
        page.screenshot(path=str(shots / "studio-feed.png"), full_page=True)
        check_accessibility(page, "feed")

        # Operations: services with their replicas and devices, the experiment, and a retrain.
        page.get_by_role("tab", name="Operations").click()
        expect(page.locator("body")).to_have_attribute("data-ops-loaded", "true", timeout=30_000)
        assert page.locator("#services tr").count() >= 5
        assert page.locator("#experiments tr").count() >= 2
        expect(page.locator("#jobs-summary")).to_contain_text("dead-lettered")  # content jobs: counts, dead letters
        page.get_by_role("button", name="Retrain now").click()
        expect(page.locator("#notice")).to_contain_text("Retrained", timeout=120_000)
        page.screenshot(path=str(shots / "studio-ops.png"), full_page=True)
        check_accessibility(page, "operations")
        page.get_by_role("tab", name="For you").click()
        expect(page.locator("body")).not_to_have_attribute("data-feed-version", before or "", timeout=30_000)
        expect(page.locator("#feed li.card").first).to_be_visible()

        # The keyboard alone: arrows move between the tabs, and the focused tab's view shows.
        page.get_by_role("tab", name="For you").focus()
        page.keyboard.press("ArrowRight")
        expect(page.get_by_role("tab", name="Operations")).to_be_focused()
        expect(page.locator("#view-ops")).to_be_visible()
        page.keyboard.press("ArrowRight")
        expect(page.locator("#view-create")).to_be_visible()
        browser.close()
    assert outside == []  # nothing fetched from the internet
