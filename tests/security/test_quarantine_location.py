"""What the mapping quarantines says where it was read, as what the reader quarantines does: the file and line
(and the Bundle entry) of an r4-invalid or missing-date resource — a line routed unparsed, a line parsed by the
subjects pass, an entry of a Bundle file or of a Bundle on an NDJSON line — in one process and in workers.
A missing element is named as the offending element, with value null."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from tests.feedkit import LOINC, Feed, at

DAY1 = dt.date(2024, 2, 1)
QUOTED = {"value": "12.5", "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}


def _obs(id_: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id_, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "718-7"}]}, "subject": {"reference": "Patient/p1"},
            **extra}


def _feed(folder: Path) -> Path:
    f = Feed()
    f.subject("p1", "101-001", name="Test Person", mrn="MRN-1", birth="1990-01-01", day1=DAY1)
    f.obs("p1", "777-3", at(DAY1, 29), value=150, unit="10*9/L", id_="plt-ok")
    f.add(_obs("hgb-string", effectiveDateTime=at(DAY1, 29), valueQuantity=QUOTED))   # routed unparsed
    f.add(_obs("no-date", valueQuantity={"value": 12.5, "unit": "g/dL"}))
    # a JSON escape: the subjects pass parses the line (it is not routed on its bytes)
    f.add(_obs("no-date-escaped", valueQuantity={"value": 12.5, "unit": "g/dL"}, note=[{"text": 'a "quoted" word'}]))
    f.write(folder)
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Basic", "id": "b-1", "code": {"text": "x"}}},
        {"resource": _obs("bundle-string", effectiveDateTime=at(DAY1, 29), valueQuantity=QUOTED)},
        {"resource": _obs("bundle-no-date", valueQuantity={"value": 12.5, "unit": "g/dL"})},
    ]}
    (folder / "extra.json").write_bytes(orjson.dumps(bundle))
    line_bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": _obs("line-bundle-no-date", valueQuantity={"value": 12.5, "unit": "g/dL"})}]}
    (folder / "bundles.ndjson").write_bytes(b'{"resourceType":"Basic","id":"b-2","code":{"text":"x"}}\n'
                                            + orjson.dumps(line_bundle) + b"\n")
    return folder


def _line_of(folder: Path, name: str, rid: str) -> int:
    lines = (folder / name).read_text().splitlines()
    return next(n for n, line in enumerate(lines, start=1) if f'"id":"{rid}"' in line)


@pytest.mark.parametrize("workers", [1, 2])
def test_mapping_rules_name_file_and_line(tmp_path: Path, study: Study, workers: int) -> None:
    feed = _feed(tmp_path / "feed")
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", runlog=log, workers=workers)
    report = {q["id"]: q for q in json.loads((tmp_path / "out" / "run-report.json").read_text())["quarantine"]}
    lines = {rec["reason"]["id"]: rec for p in (tmp_path / "out" / "quarantine").glob("*.ndjson")
             for rec in map(json.loads, p.read_text().splitlines())}
    obs = "Observation.ndjson"
    expected = {
        "hgb-string": ("r4-invalid", {"file": obs, "line": _line_of(feed, obs, "hgb-string")}),
        "no-date": ("missing-date", {"file": obs, "line": _line_of(feed, obs, "no-date")}),
        "no-date-escaped": ("missing-date", {"file": obs, "line": _line_of(feed, obs, "no-date-escaped")}),
        "bundle-string": ("r4-invalid", {"file": "extra.json", "entry": 2}),
        "bundle-no-date": ("missing-date", {"file": "extra.json", "entry": 3}),
        "line-bundle-no-date": ("missing-date", {"file": "bundles.ndjson", "line": 2, "entry": 1}),
    }
    for rid, (rule, where) in expected.items():
        for rec in (report[rid], lines[rid]["reason"]):
            assert rec["rule"] == rule
            assert {k: rec.get(k) for k in ("file", "line", "entry")} == {"line": None, "entry": None, **where}, rid
    assert lines["hgb-string"]["element"] == {"path": "valueQuantity.value", "value": "12.5"}
    assert lines["no-date"]["element"] == {"path": "effective[x]", "value": None}
    assert "resource" not in lines["no-date"]


def test_fix_texts_do_not_promise_a_copy(tmp_path: Path, study: Study) -> None:
    """Without --quarantine-full-copies nothing but the element is kept: no fix says the resource is."""
    feed = _feed(tmp_path / "feed")
    (feed / "Broken.ndjson").write_bytes(b'{"resourceType": "Observation", \n{"resourceType":"Observaton","id":"t"}\n')
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", runlog=log)
    fixes = {q.rule: q.fix for q in log.quarantine}
    assert {"r4-invalid", "malformed-json", "unknown-resource-type", "missing-date"} <= set(fixes)
    assert not [fix for fix in fixes.values() if "kept in quarantine" in fix]


def test_a_type_that_is_not_r4_in_a_bundle_is_quarantined_as_on_a_line(tmp_path: Path, study: Study) -> None:
    feed = _feed(tmp_path / "feed")
    typo = {"resourceType": "Observaton", "id": "typo", "subject": {"reference": "Patient/p1"}}
    (feed / "typo.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Basic", "id": "b-3", "code": {"text": "x"}}},
        {"resource": {**typo, "id": "typo-in-file"}}]}))
    (feed / "typos.ndjson").write_bytes(orjson.dumps({**typo, "id": "typo-on-line"}) + b"\n" + orjson.dumps(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {**typo, "id": "typo-in-line"}}]})
        + b"\n")
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", runlog=log)
    found = {q.id: (q.rule, q.file, q.line, q.entry) for q in log.quarantine if q.resource_type == "Observaton"}
    assert found == {"typo-in-file": ("unknown-resource-type", "typo.json", None, 2),
                     "typo-on-line": ("unknown-resource-type", "typos.ndjson", 1, None),
                     "typo-in-line": ("unknown-resource-type", "typos.ndjson", 2, 1)}
    assert not [k for k in log.counts if k.startswith("ignored.Observaton")]
    lines = (tmp_path / "out" / "quarantine" / "unknown.ndjson").read_text().splitlines()
    assert {json.loads(line)["reason"]["id"] for line in lines} >= set(found)
