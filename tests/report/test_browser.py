"""The report in a real headless browser: Debian's chromium driven by Playwright for Python.

Never ``playwright install`` (it downloads a browser): the suite uses the system chromium at
``/usr/bin/chromium``, which ``make test`` installs when it is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Error, sync_playwright

from fhir_adapter.report import build_report

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SECTION_IDS = ["summary", "disease-activity", "lldas", "kinetics", "swimmer", "safety", "labs", "baselines",
               "completeness", "settings"]


@pytest.mark.browser
def test_report_renders_in_chromium(run_out: Path) -> None:
    assert shutil.which(CHROMIUM), "chromium is missing: `make test` installs it (apt-get install chromium)"
    index = build_report(run_out)
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def on_console(msg: ConsoleMessage) -> None:
                if msg.type in ("error", "warning"):
                    problems.append(f"console {msg.type}: {msg.text}")

            def on_page_error(err: Error) -> None:
                problems.append(f"page error: {err}")

            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(index.as_uri(), wait_until="load")

            found = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
            assert found == SECTION_IDS
            for sid in SECTION_IDS:
                section = page.locator(f"section#{sid}")
                figures = section.locator("figure svg")
                rows = section.locator("table tbody tr")
                assert figures.count() + rows.count() > 0, f"section {sid} shows neither figure nor table"
                for i in range(figures.count()):
                    box = figures.nth(i).bounding_box()
                    assert box and box["width"] > 200 and box["height"] > 100, f"{sid}: figure {i} is empty"
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280, "page scrolls sideways"
            shot = index.parent / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert requests == [index.as_uri()], f"the page loaded more than itself: {requests}"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
