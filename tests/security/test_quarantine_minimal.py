"""OUT/quarantine/ keeps what is needed to fix the export, not the patient's chart: type, id, file, line,
reason and the offending element; whole copies only with --quarantine-full-copies. A number sent as a JSON
string is not FHIR R4 and is quarantined."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from tests.feedkit import Feed, at

DAY1 = dt.date(2024, 2, 1)
NAME_AND_MRN = "DOE, Jane Q. (MRN 4711-0815)"


def _feed() -> Feed:
    f = Feed()
    f.subject("p1", "101-001", name="Test Person", mrn="MRN-1", birth="1990-01-01", day1=DAY1)
    f.obs("p1", "777-3", at(DAY1, 29), value=150, unit="10*9/L", id_="plt-ok")
    f.obs("stranger", "777-3", at(DAY1, 29), value=150, unit="10*9/L", id_="plt-stranger",
          subject={"reference": "Patient/stranger", "display": NAME_AND_MRN},
          note=[{"text": f"seen by Dr. House for {NAME_AND_MRN}"}])
    f.obs("p1", "718-7", at(DAY1, 29), id_="hgb-string", valueQuantity={
        "value": "12.5", "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
        note=[{"text": NAME_AND_MRN}])
    return f


def _run(tmp: Path, study: Any, **kw: Any) -> tuple[Path, list[dict[str, Any]]]:
    feed = _feed().write(tmp / "feed")
    log = RunLog()
    run(FileSource(feed, log), study, tmp / "out", runlog=log, **kw)
    lines = [json.loads(line) for p in sorted((tmp / "out" / "quarantine").glob("*.ndjson"))
             for line in p.read_text().splitlines()]
    return tmp / "out", lines


def test_quarantine_keeps_no_chart_by_default(tmp_path: Path, study: Study) -> None:
    out, lines = _run(tmp_path, study)
    text = (out / "quarantine" / "Observation.ndjson").read_text()
    assert "Jane" not in text and "4711" not in text and "House" not in text
    stranger = next(rec for rec in lines if rec["reason"].get("id") == "plt-stranger")
    assert stranger["reason"]["resource_type"] == "Observation" and stranger["reason"]["rule"] == "unknown-patient"
    assert stranger["reason"]["file"] == "Observation.ndjson" and stranger["reason"]["line"] == 2
    assert stranger["element"] == {"path": "subject.reference", "value": "Patient/stranger"}
    assert "resource" not in stranger


def test_full_copies_only_when_asked(tmp_path: Path, study: Study) -> None:
    _, lines = _run(tmp_path, study, quarantine_full_copies=True)
    stranger = next(rec for rec in lines if rec["reason"].get("id") == "plt-stranger")
    assert stranger["resource"]["subject"]["display"] == NAME_AND_MRN


def test_a_quoted_decimal_is_quarantined_not_mapped(tmp_path: Path, study: Study) -> None:
    out, lines = _run(tmp_path, study)
    crf = json.loads((out / "crf" / "101-001.json").read_text())
    ids = {f["source"]["id"] for f in crf["findings"]}
    assert "plt-ok" in ids and "hgb-string" not in ids
    rec = next(rec for rec in lines if rec["reason"].get("id") == "hgb-string")
    assert rec["reason"]["rule"] == "r4-invalid" and "JSON number" in rec["reason"]["reason"]
    assert rec["element"] == {"path": "valueQuantity.value", "value": "12.5"}


def test_quoted_numbers_and_booleans_anywhere() -> None:
    obs: dict[str, Any] = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
                           "valueQuantity": {"value": 12.5}}
    assert r4_problem(obs) is None
    obs["component"] = [{"code": {"text": "c"}, "valueInteger": "3"}]
    assert "component.0.valueInteger" in str(r4_problem(obs))
    obs["component"] = [{"code": {"text": "c"}, "valueBoolean": "true"}]
    assert "JSON boolean" in str(r4_problem(obs))
    obs["component"] = [{"code": {"text": "c"}, "valueString": "3"}]
    assert r4_problem(obs) is None
    patient = {"resourceType": "Patient", "id": "p", "identifier": [{"value": "123"}], "multipleBirthInteger": 2}
    assert r4_problem(patient) is None
