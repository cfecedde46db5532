"""Bundles and shared resources as real exports write them: an entry's id from a server ``fullUrl``, Bundles
inside NDJSON lines, quarantine naming the entry; standalone Medication resources (``Medication.ndjson``)
resolved across the whole export."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import shared_references
from fhir_adapter.source.files import FileSource
from fhir_adapter.synth import write_feed
from tests.feedkit import recount_manifest

COMPARED = ("crf", "results", "writeback")
BASE = "https://ehr.example.org/fhir"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, study: Any) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    write_feed(root / "feed", subjects=4, seed=7)
    log = RunLog()
    run(FileSource(root / "feed", log), study, root / "out", log)
    return root


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for sub in COMPARED for p in sorted((out / sub).rglob("*")) if p.is_file()}


def _resources(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _report(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((out / "run-report.json").read_bytes())
    return doc


def test_bundles_in_ndjson_lines_with_server_full_urls(plain: Path, tmp_path: Path, study: Any) -> None:
    """Observations as searchset Bundles, one per NDJSON line, entries identified only by their fullUrl."""
    feed = tmp_path / "feed"
    shutil.copytree(plain / "feed", feed)
    (feed / "manifest.json").unlink()
    observations = _resources(feed / "Observation.ndjson")
    (feed / "Observation.ndjson").unlink()
    lines = []
    for i in range(0, len(observations), 500):
        entries: list[dict[str, Any]] = []
        for o in observations[i:i + 500]:
            rid = o.pop("id")
            entries.append({"fullUrl": f"{BASE}/Observation/{rid}", "resource": o, "search": {"mode": "match"}})
        lines.append(orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries}))
    lines.append(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": f"{BASE}/Observation/x1", "resource": {"code": {"text": "no resourceType"}}}]}))
    (feed / "search-results.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", log)
    assert _outputs(tmp_path / "out") == _outputs(plain / "out")
    assert log.counts["read.Observation"] == len(observations) and log.counts["read.Bundle"] == len(lines)
    assert "ignored.Bundle" not in log.counts
    bad = [q.as_report() for q in log.quarantine if q.rule == "not-a-resource"]
    assert bad == [{"resource_type": "unknown", "rule": "not-a-resource", "reason": "JSON object without "
                    "resourceType", "fix": "export FHIR resources only", "file": "search-results.ndjson",
                    "line": len(lines), "entry": 1}]


def test_bundle_file_quarantine_says_entry_not_line(plain: Path, tmp_path: Path, study: Any) -> None:
    feed = tmp_path / "feed"
    shutil.copytree(plain / "feed", feed)
    pid = _resources(feed / "Patient.ndjson")[0]["id"]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": f"{BASE}/Observation/ok-1", "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{pid}"}}},
        {"fullUrl": "urn:uuid:3f1c8a52-0d3e-4a57-9d0b-5b0f0c8e1a11", "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"}}},
    ]}
    (feed / "extra-bundle.json").write_bytes(orjson.dumps(bundle))
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", log)
    orphan = next(q for q in log.quarantine if q.rule == "no-patient")
    assert (orphan.file, orphan.entry, orphan.line, orphan.id) == \
        ("extra-bundle.json", 2, None, "3f1c8a52-0d3e-4a57-9d0b-5b0f0c8e1a11")
    assert "line" not in orphan.as_report()


def test_standalone_medications_are_resolved_across_the_export(plain: Path, tmp_path: Path, study: Any) -> None:
    """Every statement references a Medication in Medication.ndjson (as Bulk exports write them): the results
    are those of the same statements with the medication inline, nothing is quarantined no-medication."""
    feed = tmp_path / "feed"
    shutil.copytree(plain / "feed", feed)
    medications: dict[str, dict[str, Any]] = {}
    for name in ("MedicationStatement", "MedicationAdministration"):
        rows = _resources(feed / f"{name}.ndjson")
        for r in rows:
            cc = r.pop("medicationCodeableConcept", None)
            if cc is not None:
                mid = f"med-{len(medications) + 1}"
                medications[mid] = {"resourceType": "Medication", "id": mid, "code": cc}
                r["medicationReference"] = {"reference": f"{BASE}/Medication/{mid}"}
        (feed / f"{name}.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    assert len(medications) > 10
    unused = {"resourceType": "Medication", "id": "never-referenced", "code": {"text": "aspirin"}}
    formulary = _resources(feed / "Medication.ndjson")  # the feed's own shared Medications stay
    (feed / "Medication.ndjson").write_bytes(
        b"\n".join(orjson.dumps(m) for m in [*formulary, *medications.values(), unused]) + b"\n")
    recount_manifest(feed)
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", log)
    assert not [q for q in log.quarantine if q.rule == "no-medication"]
    assert _outputs(tmp_path / "out") == _outputs(plain / "out")
    # only the Medications the enrolled subjects' resources reference are kept (not other patients', not unused)
    assert 0 < log.counts["read.Medication"] < len(medications)


def test_shared_references() -> None:
    res = {"resourceType": "Observation", "specimen": {"reference": "Specimen/s1"},
           "performer": [{"reference": f"{BASE}/Organization/o1/_history/2"}],
           "contained": [{"resourceType": "Medication", "id": "m"}],
           "extension": [{"valueReference": {"reference": "#m"}}], "subject": {"reference": "Patient/p"}}
    assert shared_references([res]) == {("Specimen", "s1"), ("Organization", "o1")}
