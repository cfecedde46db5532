"""A review in a real browser: Debian's headless chromium (Playwright for Python, never a downloaded
browser) drives the review app — open a subject, choose another candidate, rerun, see the endpoint change
and the audit entry. Screenshots are kept in the test's tmp folder (``review-*.png``)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, sync_playwright

from fhir_adapter.review.app import ReviewConfig, create_app
from fhir_adapter.study.load import Study
from tests.review.review_feed import SUBJECT, run_feed

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def app_url(tmp_path: Path, study: Study) -> Iterator[tuple[str, Path]]:
    import uvicorn

    out, _ = run_feed(tmp_path, study)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # the browser's first request waits in the backlog if uvicorn is still starting
    server = uvicorn.Server(uvicorn.Config(create_app(ReviewConfig(results=out, reviewer="D. Manager")),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", out
    server.should_exit = True
    thread.join(timeout=10)


def _endpoint(page: Page, visit: str, col: str) -> str:
    return page.locator(f'#endpoint-table tr[data-visit="{visit}"] td[data-col="{col}"]').inner_text().strip()


@pytest.mark.browser
def test_a_review_in_chromium_changes_the_endpoint_and_leaves_an_audit_entry(
        app_url: tuple[str, Path], tmp_path: Path, study: Study) -> None:
    assert shutil.which(CHROMIUM), "chromium is missing: `make test` installs it (apt-get install chromium)"
    base, _ = app_url
    problems: list[str] = []
    requests: list[str] = []
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})  # a laptop screen

            def on_console(msg: ConsoleMessage) -> None:
                if msg.type in ("error", "warning"):
                    problems.append(f"console {msg.type}: {msg.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on("request", lambda r: requests.append(r.url))

            page.goto(base + "/")
            page.click(f'tr[data-subject="{SUBJECT}"] a')
            page.wait_for_url(f"**/s/{SUBJECT}")
            assert _endpoint(page, "W24", "c3") == "0.9" and _endpoint(page, "W24", "c3_change") == "0.4"
            assert "0 of 5 items reviewed" in page.locator("#progress").inner_text()
            assert page.evaluate("document.documentElement.scrollWidth") <= 1366, "page scrolls sideways"
            page.screenshot(path=str(shots / "review-subject.png"), full_page=True)

            # keyboard: j moves through the items (BL c3, BL rash, W2 CAR transgene, W12 c3, W24 c3), Enter opens
            for _ in range(4):
                page.keyboard.press("j")
            assert page.locator("tr.current").get_attribute("data-item") == "W24/c3"
            page.keyboard.press("Enter")
            page.wait_for_url(f"**/s/{SUBJECT}/W24/c3")
            assert page.locator("#rule").inner_text() == "closest"
            assert page.locator("#window").inner_text() == "155..183"
            assert page.locator("#candidates tbody tr").count() == 3
            page.keyboard.press("2")  # select the second candidate: 120 mg/dL on day 176
            assert page.locator("#cand-2").is_checked()
            page.fill('#choose-form input[name="reason"]', "day-169 sample haemolysed")
            page.screenshot(path=str(shots / "review-item.png"), full_page=True)
            page.click("#choose")
            page.wait_for_url(f"**/s/{SUBJECT}")
            assert "1 of 5 items reviewed" in page.locator("#progress").inner_text()

            # the filter leaves only what still needs review
            page.keyboard.press("f")
            page.wait_for_url("**?filter=needs-review")
            assert page.locator('tr[data-item="W24/c3"]').count() == 0
            assert page.locator("tr[data-href]").count() == 4

            run_feed(tmp_path, study)  # the next run applies the decision
            page.goto(f"{base}/s/{SUBJECT}")
            assert _endpoint(page, "W24", "c3") == "1.2" and _endpoint(page, "W24", "c3_change") == "0.7"
            page.screenshot(path=str(shots / "review-after-rerun.png"), full_page=True)

            page.click("nav >> text=Audit trail")
            row = page.locator('#audit tr[data-seq="1"]')
            text = row.inner_text()
            for expected in ("D. Manager", SUBJECT, "W24", "c3", "chose another candidate", "1.2 g/L",
                             "Observation/c3-w24b", "0.9 (Observation/c3-w24a)", "day-169 sample haemolysed"):
                assert expected in text, expected
            page.screenshot(path=str(shots / "review-audit.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert all(u.startswith(base) for u in requests), f"the app loaded something from elsewhere: {requests}"
    for name in ("review-subject", "review-item", "review-after-rerun", "review-audit"):
        assert (shots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
