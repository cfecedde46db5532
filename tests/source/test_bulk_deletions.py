"""The resources a Bulk export since the last run lists as deleted (the manifest's ``deleted[]``): read from the
transaction Bundles, attributed to the subjects whose last CRF names them, every subject read again when one
cannot be attributed; ``deleted[]`` files are never read as data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from fhir_adapter.fhir import FhirClient
from fhir_adapter.fhir.settings import BulkSettings
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.bulk import BulkSource
from fhir_adapter.source.bulk_deletions import attribute, crfs_naming, deleted_ref, former_owners, read_deleted
from fhir_adapter.source.layout import discover
from fhir_adapter.source.server import ServerSource
from fhir_adapter.study.load import Study


def bundle(*urls: str, method: str = "DELETE") -> str:
    return json.dumps({"resourceType": "Bundle", "type": "transaction",
                       "entry": [{"request": {"method": method, "url": u}} for u in urls]})


def crf(path: Path, *sources: tuple[str, str]) -> Path:
    path.write_text(json.dumps({"subject_id": path.stem, "findings": [
        {"item": "HGB", "source": {"resource_type": t, "id": i, "version": "1"}} for t, i in sources]}))
    return path


def test_deleted_ref_reads_relative_absolute_and_versioned_urls() -> None:
    assert deleted_ref("Observation/o-1") == ("Observation", "o-1")
    assert deleted_ref("https://ehr.example.org/fhir/Observation/o-1") == ("Observation", "o-1")
    assert deleted_ref("Observation/o-1/_history/3") == ("Observation", "o-1")
    for bad in ("Observatoin/o-1", "Observation", "Observation/" + "x" * 65, "Observation/a b", None, 3):
        assert deleted_ref(bad) is None


def test_read_deleted_takes_every_delete_entry_and_reports_the_rest(tmp_path: Path) -> None:
    (tmp_path / "deleted.001.Bundle.ndjson").write_text(
        bundle("Observation/o1", "Procedure/p1") + "\n\n" + bundle("Observation/o2", method="PUT") + "\nnot json\n")
    (tmp_path / "deleted.002.Bundle.ndjson.gz").write_bytes(gzip.compress(bundle("Patient/pt1").encode() + b"\n"))
    found = read_deleted(tmp_path, ["deleted.001.Bundle.ndjson", "deleted.002.Bundle.ndjson.gz"])
    assert found.refs == {("Observation", "o1"), ("Procedure", "p1"), ("Patient", "pt1")}
    assert found.unreadable == ["deleted.001.Bundle.ndjson line 3, entry 1: not a DELETE of Type/id",
                                "deleted.001.Bundle.ndjson line 4: not JSON"]


def test_attribute_names_the_subject_whose_crf_holds_the_resource(tmp_path: Path) -> None:
    crfs = {"pa": crf(tmp_path / "S1.json", ("Observation", "o1")), "pb": crf(tmp_path / "S2.json",
                                                                              ("Observation", "o2"))}
    got = attribute({("Observation", "o1"), ("Patient", "pc"), ("Specimen", "sp1"), ("Observation", "o9")}, crfs,
                    ["pa", "pb", "pc"])
    assert got.subjects == {"pa": [("Observation", "o1")], "pc": [("Patient", "pc")]}
    # a shared resource (any subject's records may reference it) and one no CRF names: not attributable
    assert got.unattributed == [("Observation", "o9"), ("Specimen", "sp1")]


def test_only_the_crfs_whose_text_names_an_id_are_parsed_and_the_answer_is_the_same(tmp_path: Path) -> None:
    """crfs_naming() keeps the CRFs whose text has one of the ids as an "id" — written as a run writes them
    (indented, keys sorted: engine/subject.py json_file) or compact — and those it cannot read; attribute() gives
    the same answer on them as on every CRF."""
    from fhir_adapter.engine.subject import json_file

    def written(path: Path, *sources: tuple[str, str]) -> Path:  # as a run writes it (indented, keys sorted)
        path.write_bytes(json_file(json.loads(crf(path, *sources).read_text())))
        return path

    sa = written(tmp_path / "S1.json", ("Observation", "o1"))
    cut = written(tmp_path / "S4.json", ("Observation", "o4"))
    cut.write_bytes(cut.read_bytes()[:-6])  # cut short (a disk full, a copy interrupted)
    crfs = {"pa": sa, "pb": written(tmp_path / "S2.json", ("Observation", "o2"), ("Observation", "o1x")),
            "pc": tmp_path / "missing.json", "pd": cut}
    refs = {("Observation", "o1"), ("Observation", "o3")}
    kept = crfs_naming(refs, crfs)
    assert set(kept) == {"pa", "pc", "pd"}  # pb has o2 and o1x, neither an id of refs; pc, pd cannot be read
    assert attribute(refs, kept, crfs) == attribute(refs, crfs, crfs)
    assert set(attribute(refs, kept, crfs).unreadable_crfs) == {"pc", "pd"}  # read again in full
    again, named = former_owners(refs, {"pa", "pb"}, {"pa": "S1", "pb": "S2"}, lambda sid: tmp_path / f"{sid}.json")
    assert again == {"pa"} and named == {"pa": [("Observation", "o1")]}


def test_deleted_files_in_a_manifest_are_not_data(tmp_path: Path) -> None:
    (tmp_path / "001.Observation.ndjson").write_text('{"resourceType":"Observation","id":"o1"}\n')
    (tmp_path / "deleted.001.Bundle.ndjson").write_text(bundle("Observation/o2") + "\n")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "output": [{"type": "Observation", "url": "001.Observation.ndjson"}], "error": [],
        "deleted": [{"type": "Bundle", "url": "deleted.001.Bundle.ndjson"}]}))
    layout = discover(tmp_path)
    assert [f.name for f in layout.data] == ["001.Observation.ndjson"]
    assert [f.name for f in layout.deleted] == ["deleted.001.Bundle.ndjson"]


def since_source(study: Study, tmp_path: Path, log: RunLog, *urls: str) -> BulkSource:
    import datetime as dt

    server = ServerSource(FhirClient("https://ehr.example.org/fhir"), study, log)
    crfs = tmp_path / "crf"
    crfs.mkdir()
    crf(crfs / "S1.json", ("Observation", "o1"))
    crf(crfs / "S2.json", ("Observation", "o2"))
    source = BulkSource(server, BulkSettings(), tmp_path / "bulk", log,
                        since=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), last_crf=lambda sid: crfs / f"{sid}.json")
    source.label_subjects({"pa": "S1", "pb": "S2", "pc": "S3"})
    (tmp_path / "bulk").mkdir()
    (tmp_path / "bulk" / "deleted.001.Bundle.ndjson").write_text(bundle(*urls) + "\n")
    source._local = {"output": [], "deleted": [{"type": "Bundle", "url": "deleted.001.Bundle.ndjson"}]}
    return source


def test_a_subject_whose_crf_holds_a_deleted_resource_is_read_again(study: Study, tmp_path: Path) -> None:
    log = RunLog()
    source = since_source(study, tmp_path, log, "Observation/o2")
    assert source._deletions({"pa", "pb", "pc"}, {"pa", "pb"}) == {"pb"}
    assert log.counts["bulk.deleted"] == 1 and log.counts["incremental.deletion_subjects"] == 1
    stats = source.request_stats()
    assert stats is not None and stats["bulk"]["deleted"] == 1
    assert not log.warnings


def test_a_deletion_no_crf_names_reads_every_subject_again(study: Study, tmp_path: Path) -> None:
    log = RunLog()
    source = since_source(study, tmp_path, log, "Observation/o2", "Observation/o-unknown")
    assert source._deletions({"pa", "pb", "pc"}, {"pa", "pb"}) == {"pa", "pb"}
    [warning] = [w for w in log.warnings if w["rule"] == "incremental"]
    assert "Observation/o-unknown" in warning["message"] and "every enrolled subject is read again in full" \
        in warning["message"] and "named by no subject's CRF" in warning["message"]


def test_a_deletion_without_the_last_crfs_reads_every_subject_again(study: Study, tmp_path: Path) -> None:
    log = RunLog()
    source = since_source(study, tmp_path, log, "Observation/o1")
    source.last_crf = None
    assert source._deletions({"pa", "pb"}, {"pa", "pb"}) == {"pa", "pb"}


def test_the_changed_patients_of_an_export_since_the_last_run(study: Study, tmp_path: Path) -> None:
    """An export _since names the changed patients: also inside a Bundle on a line, and through a Specimen's
    subject. A line that is not JSON, or a changed Medication (any subject's records may name it), cannot be
    given a patient: quarantined / warned, and every subject is read again (no stale CRF reused)."""
    log = RunLog()
    source = since_source(study, tmp_path, log)
    data = tmp_path / "bulk" / "001.Observation.ndjson"
    lines = [{"resourceType": "Observation", "id": "o9", "subject": {"reference": "Patient/pa"}},
             {"resourceType": "Bundle", "type": "collection", "entry": [
                 {"resource": {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/pb"}}}]},
             {"resourceType": "Specimen", "id": "sp1", "subject": {"reference": "Patient/pc"}}]
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert source._patients_in_export() == ({"pa", "pb", "pc"}, False)
    assert not log.warnings and not log.quarantine
    with data.open("a") as fh:
        fh.write('{"resourceType": "Observation", "id": "trunc\n')
        fh.write(json.dumps({"resourceType": "Medication", "id": "m1"}) + "\n")
    assert source._patients_in_export() == ({"pa", "pb", "pc"}, True)
    (q,) = log.quarantine
    assert (q.rule, q.file, q.line) == ("malformed-json", "001.Observation.ndjson", 4)
    (w,) = log.warnings
    assert "1 line(s) of the export are not JSON" in w["message"] and "Medication/m1" in w["message"] \
        and "every enrolled subject is read again in full" in w["message"]
