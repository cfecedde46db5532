"""Reading the enrolled subjects' lines: beyond FileSource.spool_bytes they wait on disk and come back as the
same resources, in the same subject order, as when they are all kept in memory (the spool files are gone
afterwards); the shared resources a line references are read off its bytes as a walk through it finds them."""

from __future__ import annotations

import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.enrollees import build_roster
from fhir_adapter.source.base import shared_references
from fhir_adapter.source.files import SPOOL_SUBJECTS, FileSource, _SubjectLines, line_references, parsed
from fhir_adapter.study.load import Study
from fhir_adapter.synth import write_feed


def _records(n: int) -> list[tuple[str, bytes | dict[str, Any]]]:
    """Lines of ``n`` subjects, interleaved as an export's files interleave them; every third one parsed (a
    Bundle entry)."""
    out: list[tuple[str, bytes | dict[str, Any]]] = []
    for k in range(5):
        for i in range(n):
            res = {"resourceType": "Observation", "id": f"o{i}-{k}", "subject": {"reference": f"Patient/p{i:03d}"}}
            out.append((f"p{i:03d}", res if (i + k) % 3 == 0 else orjson.dumps(res)))
    return out


@pytest.mark.parametrize("limit", [0, 300])
def test_spooled_lines_come_back_per_subject_in_order(limit: int) -> None:
    n = 2 * SPOOL_SUBJECTS + 3  # three spool files, the last one short
    order = sorted({pid for pid, _ in _records(n)} | {"p999"})  # p999: enrolled, no lines
    kept, spooled = _SubjectLines(order, 10**9), _SubjectLines(order, limit)
    for pid, record in _records(n):
        kept.add(pid, record)
        spooled.add(pid, record)
    assert kept.spool is None and spooled.spool is not None
    folder = Path(spooled.spool.name)
    a = [(pid, [parsed(r) for r in records]) for pid, records in kept.subjects()]
    b = [(pid, [parsed(r) for r in records]) for pid, records in spooled.subjects()]
    spooled.close()
    assert a == b and [pid for pid, _ in b] == order and b[-1] == ("p999", [])
    assert [r["id"] for r in b[0][1]] == [f"o0-{k}" for k in range(5)]
    assert not folder.exists()


def test_a_feed_read_through_the_spool_gives_the_same_subjects(tmp_path: Path, study: Study,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # a temporary folder of this test's own: another process (a pytest-xdist worker, another CI job) spools there too
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    write_feed(tmp_path / "feed", subjects=4, seed=7)
    results = []
    for spool_bytes in (FileSource.spool_bytes, 0):
        log = RunLog()
        source = FileSource(tmp_path / "feed", log)
        source.spool_bytes = spool_bytes
        roster = build_roster(source.roster(), study, log)
        before = set(Path(tempfile.gettempdir()).glob("fhir-adapter-subjects-*"))
        results.append(list(source.subject_resources(roster.patient_ids)))
        assert set(Path(tempfile.gettempdir()).glob("fhir-adapter-subjects-*")) == before
    assert len(results[0]) == 4 and sum(len(r) for _, r in results[0]) > 400
    assert results[0] == results[1]


@pytest.mark.parametrize("resource", [
    {"resourceType": "Observation", "specimen": {"reference": "Specimen/s1"},
     "performer": [{"reference": "Organization/o1"}, {"reference": "#x"}]},
    {"resourceType": "Observation", "specimen": {"reference": "https://h/fhir/Specimen/s2/_history/3"}},
    {"resourceType": "MedicationRequest", "medicationReference": {"reference": "Medication/m1"},
     "contained": [{"resourceType": "Medication", "id": "x", "manufacturer": {"reference": "Organization/o9"}}]},
    {"resourceType": "Observation", "note": [{"text": 'see "reference": "Specimen/s3"'}]},
    {"resourceType": "Observation", "specimen": {"reference": "Specimen/s\u00e9"}},
    {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}, "specimen": {"display": "none"}},
])
def test_references_read_off_a_line_are_those_of_the_parsed_resource(resource: dict[str, Any]) -> None:
    for raw in (orjson.dumps(resource), orjson.dumps(resource, option=orjson.OPT_INDENT_2).replace(b"\n", b" ")):
        assert line_references(raw, resource) == shared_references([resource])


def test_references_of_every_line_of_the_synthetic_feed(tmp_path: Path) -> None:
    write_feed(tmp_path / "feed", subjects=2, seed=7)
    lines = [line for f in sorted((tmp_path / "feed").glob("*.ndjson")) for line in f.read_bytes().splitlines()]
    found = 0
    for raw in lines:
        res = orjson.loads(raw)
        assert line_references(raw, res) == shared_references([res])
        found += bool(shared_references([res]))
    assert found > 100


def test_shared_resources_read_as_bytes_are_never_all_held_parsed(tmp_path: Path) -> None:
    """A hospital's Specimens are shared resources read whole: as bytes they take a fraction of their parsed
    size, and finding the latest version of one read twice keeps only its version, not every parsed copy (which
    took a 3,400-subject run to 2 GB)."""
    lines = [orjson.dumps({
        "resourceType": "Specimen", "id": f"s{i}", "meta": {"versionId": "1"},
        "subject": {"reference": f"Patient/p{i % 50}"},
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": "119297000", "display": "Blood specimen"}]},
        "collection": {"collectedDateTime": "2024-01-31T10:32:00+01:00",
                       "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "368208006"}]}},
        "condition": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0493", "code": "CFR"}]}],
    }) for i in range(3000)]
    (tmp_path / "Specimen.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    size = sum(map(len, lines))
    source = FileSource(tmp_path, RunLog())
    tracemalloc.start()
    try:
        got = source.shared_records({("Specimen", f"s{i}") for i in range(3000)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got) == 3000 and orjson.loads(got[("Specimen", "s7")]) == orjson.loads(lines[7])
    assert peak < 4 * size  # parsed, they took 8.8 times their bytes
