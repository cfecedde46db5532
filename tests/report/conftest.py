from __future__ import annotations

from pathlib import Path

import pytest

from tests.report import report_fixture as fixture


@pytest.fixture
def run_out(tmp_path: Path) -> Path:
    """A complete hand-made run output folder (results/study.json, crf/, run-report.json)."""
    return fixture.write(tmp_path / "out")
