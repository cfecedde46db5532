"""NDJSON lines routed to their enrolled patient by their bytes, without parsing them in the run's process
(source/files.py LineRouter), and checked where they are parsed (checked_records): a line whose bytes leave any
doubt is parsed instead; a routed line that is not the patient's valid resource after all is quarantined or
counted exactly as the subjects pass would have, and never reaches the subject's mapping."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource, LineRouter, checked_records, routed_prefix
from fhir_adapter.source.layout import DataFile
from fhir_adapter.terminology.codes import SID_RESULT

OBS = DataFile(path="Observation.ndjson", name="Observation.ndjson", rtype="Observation", ndjson=True)


def obs(**kw: object) -> dict[str, object]:
    return {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
            **kw}


def test_plain_lines_are_routed_to_their_patient() -> None:
    r = LineRouter("Observation", "https://ehr.example.org/fhir")
    assert r.patient(orjson.dumps(obs())) == "p1"
    assert r.patient(orjson.dumps(obs(subject={"display": "x", "reference": "Patient/p2/_history/3"}))) == "p2"
    assert r.patient(b'{"resourceType": "Observation", "subject" : {"reference": "https://ehr.example.org/fhir/'
                     b'Patient/p3"}, "id": "o"}') == "p3"
    assert r.patient(orjson.dumps(obs(subject={"reference": "https://other.example.org/Patient/p1"}))) is None
    assert LineRouter("Immunization", None).patient(
        orjson.dumps({"resourceType": "Immunization", "id": "i", "patient": {"reference": "Patient/p4"}})) == "p4"


@pytest.mark.parametrize("line", [
    orjson.dumps(obs(note=[{"text": 'said "hi"'}])),                       # an escape: quotes may not delimit
    orjson.dumps(obs(contained=[{"resourceType": "Specimen", "id": "s"}])),  # contained resources
    orjson.dumps(obs(focus=[{"subject": {"reference": "Patient/p9"}}])),    # the patient element twice
    orjson.dumps(obs(subject={"reference": "Patient/p1", "identifier": {"value": "x"}})),  # a nested object
    orjson.dumps({**obs(), "resourceType": "Procedure"}),                    # another type than the file's
    b'{"resourceType":"Observation","id":"o","subject":{"reference":"Patient/p1","reference":"Patient/p2"}}',
])
def test_lines_with_any_doubt_are_parsed(line: bytes) -> None:
    assert LineRouter("Observation", None).patient(line) is None


def routed(line: bytes, n: int = 7) -> bytes:
    return routed_prefix(OBS) + b"%d\x00" % n + line


def test_routed_lines_are_checked_where_they_are_parsed() -> None:
    owned = obs(id="o4", identifier=[{"system": SID_RESULT, "value": "r"}])
    records: list[bytes | dict[str, object]] = [
        routed(orjson.dumps(obs())), routed(b'{"resourceType":"Observation","subject":{"reference":"Patient/p1"'),
        routed(orjson.dumps({k: v for k, v in obs().items() if k != "id"}), 9), routed(orjson.dumps(owned)),
        routed(b'{"x":{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}}', 11),
        orjson.dumps(obs(id="o5")), obs(id="o6")]
    log = RunLog()
    kept = checked_records(records, "p1", None, log)
    assert [r["id"] for r in kept] == ["o1", "o5", "o6"]
    assert [(q.rule, q.line) for q in log.quarantine] == [("malformed-json", 7), ("missing-id", 9),
                                                           ("not-a-resource", 11)]
    assert all(q.file == "Observation.ndjson" for q in log.quarantine)
    # each line was counted read.Observation when it was routed: the check takes back what the parse would
    # not have counted, and counts what it would have (the adapter's own result, skipped)
    assert dict(log.counts) == {"read.Observation": -2, "quarantined": 3, "read.skipped-adapter-results": 1}


def test_routed_and_parsed_lines_reach_their_subjects_in_file_order(tmp_path: Path) -> None:
    folder = tmp_path
    lines = [obs(id=f"o{i}", subject={"reference": f"Patient/p{i % 3}"}) for i in range(9)]
    lines[4]["note"] = [{"text": 'a "quoted" note'}]  # parsed, not routed
    (folder / "Observation.ndjson").write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    (folder / "Patient.ndjson").write_bytes(b"\n".join(orjson.dumps({"resourceType": "Patient", "id": f"p{i}"})
                                                       for i in range(3)) + b"\n")
    log = RunLog()
    got = dict(FileSource(folder, log).subject_resources({"p0", "p1"}))
    assert [r["id"] for r in got["p1"]] == ["o1", "o4", "o7"] and [r["id"] for r in got["p0"]] == ["o0", "o3", "o6"]
    assert got["p1"][1] == lines[4]
    assert log.counts["read.Observation"] == 9 and log.counts["skipped.not-enrolled"] == 3
