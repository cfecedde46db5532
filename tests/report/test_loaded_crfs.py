"""The report keeps only what its sections read of each CRF finding (report/data.py FINDING_FIELDS), so a report
over hundreds of subjects does not hold every finding's ~45 fields: the page is the same as from the whole CRFs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.report import data as report_data
from fhir_adapter.report.assemble import render
from fhir_adapter.report.data import FINDING_FIELDS, load
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from fhir_adapter.synth import write_feed


def test_the_page_from_the_cut_findings_is_the_page_from_the_whole_crfs(
        tmp_path: Path, study: Study, monkeypatch: pytest.MonkeyPatch) -> None:
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=10, seed=7)
    log = RunLog()
    run(FileSource(feed, log), study, out, log, workers=1)
    data = load(out)
    findings = [f for crf in data.crfs.values() for f in crf["findings"]]
    values = [f for crf in data.crfs.values() for v in crf["visits"] for f in v["values"].values()]
    assert findings and values and any(f["domain"] == "PC" for f in findings)
    assert {k for f in findings + values for k in f} <= set(FINDING_FIELDS)
    cut = render(data)
    monkeypatch.setattr(report_data, "_as_read", lambda crf: crf)
    whole = load(out)
    assert len(next(iter(whole.crfs.values()))["findings"][0]) > len(FINDING_FIELDS)
    assert render(whole) == cut


def test_the_crfs_are_kept_as_compact_json_and_the_page_is_the_same(tmp_path: Path, study: Study) -> None:
    """ReportData.crfs parses a CRF on each access (report/data.py CrfStore): no CRF stays in memory as dicts
    between sections, and the page equals the one drawn from the same CRFs held as dicts."""
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=6, seed=7)
    log = RunLog()
    run(FileSource(feed, log), study, out, log, workers=1)
    data = load(out)
    assert isinstance(data.crfs, report_data.CrfStore) and len(data.crfs) == 6
    sid = next(iter(data.crfs))
    first, again = data.crfs[sid], data.crfs[sid]
    assert first == again and first is not again
    first["findings"].clear()   # what a section changes is not kept
    assert data.crfs[sid]["findings"] and sid in data.crfs and "nobody" not in data.crfs
    as_dicts = load(out)
    as_dicts.crfs = dict(as_dicts.crfs.items())
    assert render(as_dicts) == render(data)
