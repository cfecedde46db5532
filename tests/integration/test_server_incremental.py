"""``--dry-run`` and ``--since last`` against the real local FHIR server (10 synthetic subjects); a deletion found
through the server's type-level history (DELETE entries without the resource)."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.source.bulk_deletions import crf_sources
from fhir_adapter.synth import plan_trial, write_feed
from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.testing.feed_loader import load_feed, put_resources, search_all
from fhir_adapter.testing.fhir_server import ServerHandle
from fhir_adapter.testing.outtree import server_read_crfs
from fhir_adapter.writeback.state import result_value
from tests.serverkit import (
    adapter_observations,
    cli_run,
    identifier_counts,
    offline_results,
    report,
    study_results,
    write_config,
    writes,
)

pytestmark = pytest.mark.server

SUBJECTS = 10


@pytest.fixture
def loaded(clean_fhir_server: ServerHandle, tmp_path: Path) -> ServerHandle:
    write_feed(tmp_path / "feed", subjects=SUBJECTS, seed=7)
    load_feed(clean_fhir_server.base_url, tmp_path / "feed")
    clean_fhir_server.reset("stats")
    return clean_fhir_server


@pytest.fixture
def with_history(loaded: ServerHandle) -> Iterator[ServerHandle]:
    """The loaded server offering type-level history (deletions as DELETE entries without the resource)."""
    loaded.set_history(True)
    yield loaded
    loaded.set_history(False)


def test_dry_run_writes_nothing_and_shows_the_diff(loaded: ServerHandle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cli_run(loaded.base_url, out, "--dry-run", "--config", str(write_config(tmp_path / "a.yaml")))
    assert writes(loaded.stats()) == 0
    # no transaction or batch: the only POSTs are Observation/_search (code lists too long for a GET URL)
    assert set(loaded.stats()["requests"]["by_interaction"]) <= {"search-type", "read", "capabilities"}
    assert adapter_observations(loaded.base_url) == []
    expected = offline_results(out)
    diffs = {p.stem: p.read_text() for p in (out / "writeback-diff").glob("*.diff")}
    assert set(diffs) == {s for s, ids in expected.items() if ids}
    for subject, ids in expected.items():
        for ident in ids:
            assert f"+++ adapter:{ident}" in diffs[subject]
    rep = report(out)
    # nothing written, nothing recorded; what would be written under its own key
    assert rep["summary"]["server_writes"] == rep["summary"]["results_written"] == 0
    assert rep["summary"]["would_write"] == {"server_writes": sum(len(v) for v in expected.values()),
                                             "results": sum(len(v) for v in expected.values())}
    assert (rep["writeback_state"]["new"], rep["writeback_state"]["updated"]) == (0, 0)
    assert rep["writeback_state"]["would_write"]["new"] == sum(len(v) for v in expected.values())
    assert all(w["written"] == 0 and w["would_write"] > 0 for w in rep["writes"])
    assert not (out / "state" / "last-run.json").exists() and not (out / "state" / "written.json").exists()


def test_since_last_rereads_and_rewrites_only_the_changed_subject(loaded: ServerHandle, tmp_path: Path) -> None:
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    before = study_results(out)
    bundles = {p.stem: json.loads(p.read_text()) for p in (out / "writeback").glob("*.json")}
    # a source Observation of one subject's SLEDAI-2K total is corrected on the server (entered in error)
    subject = sorted(bundles)[0]
    sledai = next(e["resource"] for e in bundles[subject]["entry"] if e["resource"]["resourceType"] == "Observation"
                  and e["resource"]["code"]["coding"][0]["code"] == "sledai-2k" and e["resource"]["valueInteger"] > 0)
    source_id = sledai["derivedFrom"][0]["reference"].split("/")[1]
    [source] = search_all(loaded.base_url, "Observation", {"_id": source_id})
    put_resources(loaded.base_url, [{k: v for k, v in {**source, "status": "entered-in-error"}.items()
                                     if k != "meta"}])
    on_server_before = {o["id"]: o["meta"]["versionId"] for o in adapter_observations(loaded.base_url)}
    loaded.reset("stats")

    cli_run(loaded.base_url, out, "--post", "--since", "last", "--config", str(config))
    rep = report(out)
    assert rep["counts"]["incremental.changed_subjects"] == 1
    assert rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS - 1
    assert list(rep["server_requests"]["per_subject"]) == [subject]  # only that subject was read (and written)
    written = {w["subject_id"]: w for w in rep["writes"]}
    assert list(written) == [subject] and written[subject]["written"] + written[subject]["retracted"] > 0
    stats = loaded.stats()
    by_type = stats["writes"]["by_resource_type"]
    assert by_type["Observation"]["created"] + by_type["Observation"]["updated"] == rep["summary"]["server_writes"]
    assert rep["summary"]["server_writes"] > 0 and by_type["Provenance"]["created"] == 1
    assert writes(stats) == rep["summary"]["server_writes"] + 1
    changed = {o["id"] for o in adapter_observations(loaded.base_url)
               if on_server_before.get(o["id"]) != o["meta"]["versionId"]}
    assert changed and all(o["subject"]["reference"] == sledai["subject"]["reference"]
                           for o in adapter_observations(loaded.base_url) if o["id"] in changed)
    after = study_results(out)
    assert [s for s in after["subjects"] if s["subject_id"] != subject] == \
        [s for s in before["subjects"] if s["subject_id"] != subject]
    assert next(s for s in after["subjects"] if s["subject_id"] == subject) != \
        next(s for s in before["subjects"] if s["subject_id"] == subject)

    # and once more: nothing changed since, no subject is read, nothing is written
    loaded.reset("stats")
    cli_run(loaded.base_url, out, "--post", "--since", "last", "--config", str(config))
    assert report(out)["server_requests"]["per_subject"] == {}
    assert writes(loaded.stats()) == 0
    assert study_results(out) == after


def test_a_subject_the_server_refused_is_compared_with_the_server_again_by_the_next_since_last(
        loaded: ServerHandle, tmp_path: Path) -> None:
    """A write refused for the server's state (a second resource with one of the adapter's identifiers) is not a
    change of the subject's data: the state file still matches the subject's results. The next --since last reads
    it in full and compares it with the server again (exit 2 again while the duplicate stays), and writes it once
    the duplicate is gone, instead of calling it unchanged (exit 0) while the chart shows two values."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    ours = adapter_observations(loaded.base_url)
    sledai = next(o for o in ours if o["code"]["coding"][0]["code"] == "sledai-2k")
    duplicate = {k: v for k, v in sledai.items() if k not in ("id", "meta")}
    duplicate.update(id="not-the-adapters-copy", valueInteger=sledai["valueInteger"] + 8)
    put_resources(loaded.base_url, [duplicate])

    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    rep = report(out)
    assert rep["exit_code"] == 2 and len(rep["summary"]["subjects_not_written"]) == 1
    [subject] = rep["summary"]["subjects_not_written"]
    assert json.loads((out / "state" / "last-run.json").read_text())["subjects_to_recheck"] == [subject]

    cli_run(loaded.base_url, out, "--post", "--since", "last", "--config", str(config))
    rep = report(out)
    assert rep["exit_code"] == 2 and rep["summary"]["subjects_not_written"] == [subject]
    assert rep["counts"]["incremental.rechecked_subjects"] == 1
    assert list(rep["server_requests"]["per_subject"]) == [subject]  # read in full, the others not at all

    httpx.delete(f"{loaded.base_url}/Observation/not-the-adapters-copy").raise_for_status()
    cli_run(loaded.base_url, out, "--post", "--since", "last", "--config", str(config))
    rep = report(out)
    assert rep["summary"]["subjects_not_written"] == [] and rep["subject_failures"] == []
    assert [w["subject_id"] for w in rep["writes"]] == [subject]  # compared with the server again
    assert identifier_counts(adapter_observations(loaded.base_url)).most_common(1)[0][1] == 1
    assert json.loads((out / "state" / "last-run.json").read_text())["subjects_to_recheck"] == []


def test_since_last_with_one_subject_failing_fails_that_subject_alone(loaded: ServerHandle, tmp_path: Path) -> None:
    """Every request naming one patient answers 503 for good: the change probe's searches for many patients
    fail, are asked again per patient, and only that subject fails (exit 2); a change of another subject in the
    same probe is still found; the next run picks the failed subject up."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml", "  max_attempts: 3\n")
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    bundles = {p.stem: json.loads(p.read_text()) for p in (out / "writeback").glob("*.json")}
    victim = plan_trial(SUBJECTS, 7).subjects[3]
    changed = next(s for s in sorted(bundles) if s != victim.subject_id)
    sledai = next(e["resource"] for e in bundles[changed]["entry"] if e["resource"]["resourceType"] == "Observation"
                  and e["resource"]["code"]["coding"][0]["code"] == "sledai-2k" and e["resource"]["valueInteger"] > 0)
    [source] = search_all(loaded.base_url, "Observation", {"_id": sledai["derivedFrom"][0]["reference"].split("/")[1]})
    put_resources(loaded.base_url, [{k: v for k, v in {**source, "status": "entered-in-error"}.items()
                                     if k != "meta"}])

    loaded.set_faults(fault_match=victim.patient_id)
    faulted = cli_run(loaded.base_url, out, "--post", "--since", "last", "--config", str(config))
    loaded.clear_faults()
    assert faulted.exit_code == 2
    rep = report(out)
    assert "stopped" not in rep and rep["exit_code"] == 2
    assert rep["summary"]["subjects_failed"] == [victim.subject_id]
    [failure] = rep["subject_failures"]
    assert failure["subject_id"] == victim.subject_id and failure["stage"] == "read"
    assert failure["request"].startswith("GET ") and victim.patient_id in failure["request"]
    assert failure["last_status"] == 503 and failure["attempts"] == 3
    assert "picks this subject up again" in failure["what_to_do"]
    assert rep["counts"]["incremental.changed_subjects"] == 1  # the other subject's change was found
    assert rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS - 2
    assert [w["subject_id"] for w in rep["writes"]] == [changed]
    assert rep["summary"]["subjects"] == SUBJECTS - 1

    again = cli_run(loaded.base_url, out, "--post", "--since", "last", "--config", str(config))
    assert again.exit_code in (0, 2)
    rep = report(out)
    assert rep["subject_failures"] == [] and rep["summary"]["subjects"] == SUBJECTS
    # a run with a failed subject is a base for --since last all the same (issue 12 item 1): the subject changed
    # before it is not read again, the failed one (its CRF is gone) is, in full
    assert rep["counts"]["incremental.changed_subjects"] == 1
    assert [w["subject_id"] for w in rep["writes"]] == [victim.subject_id]
    assert (out / "crf" / f"{victim.subject_id}.json").is_file()


def test_since_last_reads_again_a_subject_whose_only_change_is_a_deleted_record(with_history: ServerHandle,
                                                                                 tmp_path: Path) -> None:
    """An Observation deleted on the server is in no ``_lastUpdated`` search; the type-level history lists it as a
    DELETE entry without the resource, whose Type/id the subject's last CRF names: that subject alone is read
    again, its CRF no longer holds the deleted record, and the outputs equal a fresh full run's (before: the
    deletion was dropped, the subject counted as unchanged and its stale CRF was reused)."""
    server = with_history
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(server.base_url, out, "--config", str(config))
    crf_path = sorted((out / "crf").glob("*.json"))[0]
    subject = json.loads(crf_path.read_text())["subject_id"]
    finding = next(f for f in json.loads(crf_path.read_text())["findings"]
                   if f["source"]["resource_type"] == "Observation")
    gone, before = finding["source"]["id"], crf_sources(crf_path)
    httpx.delete(f"{server.base_url}/Observation/{gone}", timeout=30).raise_for_status()
    server.reset("stats")

    cli_run(server.base_url, out, "--since", "last", "--config", str(config))
    rep = report(out)
    assert ("Observation", gone) in before and ("Observation", gone) not in crf_sources(crf_path)
    assert list(rep["server_requests"]["per_subject"]) == [subject]
    assert rep["counts"]["incremental.changed_subjects"] == 1
    assert rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS - 1
    assert rep["counts"]["incremental.deleted"] == 1 and rep["counts"]["incremental.deletion_subjects"] == 1
    assert rep["server_requests"]["shared"]["history"] > 0
    assert [w for w in rep["warnings"] if w["rule"] == "incremental"] == []
    fresh = tmp_path / "fresh"
    cli_run(server.base_url, fresh, "--config", str(config))
    assert server_read_crfs(out) == server_read_crfs(fresh)
    assert study_results(out) == study_results(fresh)


def test_since_last_finds_whose_a_deletion_no_crf_names_was_from_its_instance_history(with_history: ServerHandle,
                                                                                      tmp_path: Path) -> None:
    """Type-level history lists the whole server's deletions. One no CRF of the last run names is looked up in its
    instance history (``Observation/<id>/_history``: the version before the DELETE names its patient): (b) a
    patient not enrolled → nobody is read again, no warning, the deletion counted as ignored; (a) an enrolled
    subject's Observation its CRF does not name → that subject alone is read again (before: either made every
    enrolled subject read again in full, warning ``incremental``)."""
    server = with_history
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    with httpx.Client(base_url=server.base_url, timeout=30) as fhir:
        stranger = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "female"}).json()["id"]
        theirs = fhir.post("/Observation", json={
            "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{stranger}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "valueQuantity": {"value": 12.5, "unit": "g/dL"}}).json()["id"]
    cli_run(server.base_url, out, "--config", str(config))

    # (b) another patient's Observation, deleted: not the trial's
    httpx.delete(f"{server.base_url}/Observation/{theirs}", timeout=30).raise_for_status()
    time.sleep(1.1)  # _since is sent to the second: a deletion in the second a run starts is listed by the next too
    cli_run(server.base_url, out, "--since", "last", "--config", str(config))
    rep = report(out)
    assert [w for w in rep["warnings"] if w["rule"] == "incremental"] == []
    assert rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS  # nobody read again
    assert rep["counts"]["incremental.changed_subjects"] == rep["counts"]["incremental.deletion_subjects"] == 0
    assert rep["counts"]["incremental.deleted"] == 1 and rep["counts"]["incremental.deletions_ignored"] == 1
    assert rep["counts"]["incremental.deletion_lookups"] == 1

    # (a) an enrolled subject's Observation its CRF does not name (the mapping did not use it), deleted
    subject = plan_trial(SUBJECTS, 7).subjects[2]
    named = crf_sources(out / "crf" / f"{subject.subject_id}.json")
    unused = next(o["id"] for o in search_all(server.base_url, "Observation", {"patient": subject.patient_id})
                  if ("Observation", o["id"]) not in named)
    httpx.delete(f"{server.base_url}/Observation/{unused}", timeout=30).raise_for_status()
    server.reset("stats")
    cli_run(server.base_url, out, "--since", "last", "--config", str(config))
    rep = report(out)
    assert [w for w in rep["warnings"] if w["rule"] == "incremental"] == []
    assert list(rep["server_requests"]["per_subject"]) == [subject.subject_id]
    assert rep["counts"]["incremental.changed_subjects"] == 1
    assert rep["counts"]["incremental.deleted"] == 1 and rep["counts"]["incremental.deletion_subjects"] == 1
    assert rep["counts"]["incremental.deletion_lookups"] == 1 and rep["counts"]["incremental.deletions_ignored"] == 0
    assert server.stats()["requests"]["by_interaction"]["history-instance"] == 1


def test_a_live_retraction_is_the_one_the_writeback_file_shows(loaded: ServerHandle, tmp_path: Path) -> None:
    """OUT/writeback is the transaction --post sends: a result retracted on the server (its PGA source entered in
    error, so the visit's LLDAS is no longer derived) is the writeback file's retraction — its reason naming
    the source, its profile, no stale value — not a copy of the old result with a generic note."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    bundles = {p.stem: json.loads(p.read_text()) for p in (out / "writeback").glob("*.json")}
    subject, lldas = next((s, e["resource"]) for s in sorted(bundles) for e in bundles[s]["entry"]
                          if e["resource"]["resourceType"] == "Observation"
                          and e["resource"]["code"]["coding"][0]["code"] == "lldas")
    sources = [search_all(loaded.base_url, "Observation", {"_id": x["reference"].split("/")[1]})[0]
               for x in lldas["derivedFrom"]]
    pga = next(o for o in sources if o["code"]["coding"][0]["code"] == "sle-pga")
    put_resources(loaded.base_url, [{k: v for k, v in {**pga, "status": "entered-in-error"}.items() if k != "meta"}])
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    [held] = [o for o in adapter_observations(loaded.base_url) if o["identifier"] == lldas["identifier"]]
    [shown] = [e["resource"] for e in json.loads((out / "writeback" / f"{subject}.json").read_text())["entry"]
               if e["resource"].get("identifier") == lldas["identifier"]]

    def content(r: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in r.items() if k not in ("id", "meta")}, "profile": r["meta"].get("profile")}

    assert held["status"] == shown["status"] == "entered-in-error"
    assert content(held) == content(shown) and "valueBoolean" not in held
    assert f"Observation/{pga['id']}" in held["note"][0]["text"]
    # the Provenance of that write names the retraction's evidence too, as the file's does
    recorded = [p for p in search_all(loaded.base_url, "Provenance", {})
                if any(t["reference"].endswith(f"Observation/{held['id']}") or t["reference"] == f"Observation/"
                       f"{held['id']}" for t in p["target"])]
    latest = max(recorded, key=lambda p: p["recorded"])  # the retraction's write, not the first run's
    assert f"Observation/{pga['id']}" in {e["what"]["reference"] for e in latest["entity"]}


def _rash_corrected_to_absent(base: str, out: Path) -> tuple[str, dict[str, Any]]:
    """The EHR corrects a clinician's "rash present" behind a SLEDAI-2K total of OUT/writeback to absent (rash has no
    lab rule: the total drops by its weight). The subject and that total as the bundle held it."""
    for path in sorted((out / "writeback").glob("*.json")):
        for e in json.loads(path.read_text())["entry"]:
            r = e["resource"]
            if r["resourceType"] != "Observation" or r["code"]["coding"][0]["code"] != "sledai-2k":
                continue
            for ref in r.get("derivedFrom", []):
                [held] = search_all(base, "Observation", {"_id": ref["reference"].split("/")[1]})
                if held.get("valueBoolean") is True and held["code"]["coding"][0]["code"] == "rash":
                    put_resources(base, [{k: v for k, v in {**held, "valueBoolean": False}.items() if k != "meta"}])
                    return path.stem, r
    raise AssertionError("no SLEDAI-2K total rests on a clinician's rash")


def test_a_changed_result_is_amended_on_the_server_as_the_writeback_file_shows(loaded: ServerHandle,
                                                                               tmp_path: Path) -> None:
    """A result whose value changes is updated `amended` (R4 Observation.status: modified after being final), so a
    clinician sees the score changed; one whose sources alone changed stays final; OUT/writeback shows them so;
    the next run over the same data writes nothing."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    first = {o["id"]: o for o in adapter_observations(loaded.base_url)}
    assert {o["status"] for o in first.values()} == {"final"}
    created = search_all(loaded.base_url, "Provenance", {})
    assert {p["activity"]["coding"][0]["code"] for p in created} == {"CREATE"}  # new results only
    subject, sledai = _rash_corrected_to_absent(loaded.base_url, out)
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    now = {o["id"]: o for o in adapter_observations(loaded.base_url)}
    updated = [o for i, o in now.items() if o["meta"]["versionId"] != first[i]["meta"]["versionId"]
               and o["status"] != "entered-in-error"]
    [total] = [o for o in updated if o["identifier"] == sledai["identifier"]]
    assert total["status"] == "amended" and total["valueInteger"] < sledai["valueInteger"]
    # amended where the value changed; an update of its sources alone leaves it final (no amendment for the chart)
    assert all(o["status"] == ("amended" if result_value(o) != result_value(first[o["id"]]) else "final")
               for o in updated)
    assert all(o["status"] == "final" for i, o in now.items()
               if o["meta"]["versionId"] == first[i]["meta"]["versionId"])
    shown = {e["resource"]["identifier"][0]["value"]: e["resource"]["status"]
             for e in json.loads((out / "writeback" / f"{subject}.json").read_text())["entry"]
             if e["resource"]["resourceType"] == "Observation"}
    held = {o["identifier"][0]["value"]: o["status"] for o in now.values()
            if o["subject"] == sledai["subject"]}
    assert shown == held
    assert '+  "status": "amended"' in (out / "writeback-diff" / f"{subject}.diff").read_text()
    revised = [p for p in search_all(loaded.base_url, "Provenance", {}) if p["id"] not in {c["id"] for c in created}]
    assert revised and {p["activity"]["coding"][0]["code"] for p in revised} == {"UPDATE"}  # it revises
    loaded.reset("stats")
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    assert writes(loaded.stats()) == 0
    assert {o["id"]: o["status"] for o in adapter_observations(loaded.base_url)} == \
        {i: o["status"] for i, o in now.items()}


def test_the_first_post_after_runs_that_did_not_post_shows_what_the_server_holds(loaded: ServerHandle,
                                                                                 tmp_path: Path) -> None:
    """Runs without --post amend a changed result in OUT/writeback (the state's history); the first --post creates
    it on a server that never held it, so final: OUT/writeback and the state follow what the server holds."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(loaded.base_url, out, "--config", str(config))
    subject, _ = _rash_corrected_to_absent(loaded.base_url, out)
    cli_run(loaded.base_url, out, "--config", str(config))

    def statuses() -> set[str]:
        return {e["resource"]["status"] for e in json.loads((out / "writeback" / f"{subject}.json").read_text())
                ["entry"] if e["resource"]["resourceType"] == "Observation"}

    assert "amended" in statuses()  # offline: the value replaced the one the last bundle held
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    assert {o["status"] for o in adapter_observations(loaded.base_url)} == {"final"}  # created: never shown before
    assert statuses() == {"final"}
    state = json.loads((out / "state" / "written.json").read_text())
    assert not [i for i, entry in state["results"].items() if entry.get("amended")]
    loaded.reset("stats")
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    assert writes(loaded.stats()) == 0 and statuses() == {"final"}


def test_a_python_api_run_is_the_base_of_the_next_since_last(loaded: ServerHandle, tmp_path: Path) -> None:
    """`fhir_adapter.run` records the run as the command does (state/last-run.json): a notebook's run is the
    base of the next `since="last"` — of the API or of `run --since last` — which then reads no unchanged
    subject; a dry run records nothing."""
    import fhir_adapter

    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    fhir_adapter.run(loaded.base_url, tmp_path / "dry", config=config, dry_run=True)
    assert not (tmp_path / "dry" / "state" / "last-run.json").exists()
    first = fhir_adapter.run(loaded.base_url, out, config=config)
    assert first.exit_code in (0, 2) and (out / "state" / "last-run.json").is_file()
    again = fhir_adapter.run(loaded.base_url, out, config=config, since="last")
    assert again.run_report["counts"]["incremental.unchanged_subjects"] == SUBJECTS
    assert again.run_report["server_requests"]["per_subject"] == {}
    cli_run(loaded.base_url, out, "--since", "last", "--config", str(config))
    assert report(out)["counts"]["incremental.unchanged_subjects"] == SUBJECTS


def _first_source(out: Path, subject: str, item: str) -> str:
    crf = json.loads((out / "crf" / f"{subject}.json").read_text())
    return str(next(f["source"]["id"] for f in crf["findings"] if f["item"] == item))


def _edit(base: str, rtype: str, rid: str, change: Any) -> None:
    [res] = search_all(base, rtype, {"_id": rid})
    change(res)
    put_resources(base, [{k: v for k, v in res.items() if k != "meta"}])


def _move_observation(base: str, out: Path, subjects: list[Any]) -> None:
    """An anti-dsDNA result corrected in the EHR: it was filed under the wrong patient."""
    rid = _first_source(out, subjects[0].subject_id, "anti_dsdna")
    _edit(base, "Observation", rid, lambda r: r.update(subject={"reference": f"Patient/{subjects[1].patient_id}"}))


def _patient_details(base: str, out: Path, subjects: list[Any]) -> None:
    """The birth date and sex corrected on the Patient (the CRF's age and sex; no other record changes)."""
    def change(p: dict[str, Any]) -> None:
        p.update(birthDate=f"{int(p['birthDate'][:4]) - 7}{p['birthDate'][4:]}",
                 gender="male" if p.get("gender") == "female" else "female")
    _edit(base, "Patient", subjects[0].patient_id, change)


def _specimen(base: str, out: Path, subjects: list[Any]) -> None:
    """A Specimen's accession number corrected (its Observations' own lastUpdated stay as they were)."""
    [spec, *_] = search_all(base, "Specimen", {"patient": f"Patient/{subjects[0].patient_id}"})
    _edit(base, "Specimen", spec["id"], lambda s: s.update(accessionIdentifier={"value": "ACC-CORRECTED-1"}))


def _medication(base: str, out: Path, subjects: list[Any]) -> None:
    """A shared Medication renamed in the formulary (the records naming it are unchanged)."""
    used = [m for m in search_all(base, "Medication", {})
            if search_all(base, "MedicationStatement", {"medication": f"Medication/{m['id']}"})]
    _edit(base, "Medication", used[0]["id"],
          lambda m: m.update(code={**m.get("code", {}), "text": "renamed in the formulary",
                                   "coding": [{**c, "display": "renamed in the formulary"}
                                              for c in m.get("code", {}).get("coding", [])]}))


def _site_investigator(base: str, out: Path, subjects: list[Any]) -> None:
    """A site's principal investigator replaced on its site-level ResearchStudy (DM INVID/INVNAM of its
    subjects; their own records are unchanged)."""
    [site] = [s for s in search_all(base, "ResearchStudy", {}) if s.get("partOf") and s.get("contained")][:1]

    def change(st: dict[str, Any]) -> None:
        st["contained"][0].update(identifier=[{"system": "https://hospital.example.org/sid/investigator",
                                               "value": "INV-NEW"}], name=[{"family": "Newcombe", "given": ["Ada"]}])
    _edit(base, "ResearchStudy", site["id"], change)


@pytest.mark.parametrize("change", [_move_observation, _patient_details, _specimen, _medication, _site_investigator],
                         ids=["moved-observation", "patient", "specimen", "medication", "site-investigator"])
def test_since_last_after_a_change_no_record_of_the_subject_shows_gives_a_fresh_runs_outputs(
        loaded: ServerHandle, tmp_path: Path, change: Any) -> None:
    """Changes an incremental run found no trace of in the subjects' own records (an independent audit): an
    Observation moved to another patient (its former owner's CRF named it), a Patient's details, a Specimen, a
    shared Medication. `--since last` reads the subjects concerned again: its CRFs and results are a fresh run's."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(loaded.base_url, out, "--config", str(config))
    first = server_read_crfs(out)
    change(loaded.base_url, out, plan_trial(SUBJECTS, 7).subjects)
    cli_run(loaded.base_url, out, "--since", "last", "--config", str(config))
    fresh = tmp_path / "fresh"
    cli_run(loaded.base_url, fresh, "--config", str(config))
    assert server_read_crfs(fresh) != first  # the change is one the outputs show
    assert server_read_crfs(out) == server_read_crfs(fresh)
    assert study_results(out) == study_results(fresh)
    assert 0 < report(out)["counts"]["incremental.changed_subjects"] < SUBJECTS
    # the CDISC datasets too, byte for byte: the subjects read again and those derived from their last CRF in
    # the order of a full run
    domains = sorted(p.name for p in (fresh / "export").glob("*.csv") if not p.name.startswith("coverage"))
    assert domains and [(out / "export" / n).read_bytes() == (fresh / "export" / n).read_bytes() for n in domains] \
        == [True] * len(domains)


def test_since_within_a_second_of_a_change_finds_it(loaded: ServerHandle, tmp_path: Path) -> None:
    """`--since` a moment before a change made in the same second: the change is found (a probe cut to the
    second with `gt` missed the rest of that second)."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(loaded.base_url, out, "--config", str(config))
    subject = plan_trial(SUBJECTS, 7).subjects[0]
    rid = _first_source(out, subject.subject_id, "c3")
    [res] = search_all(loaded.base_url, "Observation", {"_id": rid})
    put_resources(loaded.base_url, [{k: v for k, v in {**res, "status": "entered-in-error"}.items() if k != "meta"}])
    [after] = search_all(loaded.base_url, "Observation", {"_id": rid})
    changed_at = dt.datetime.fromisoformat(after["meta"]["lastUpdated"].replace("Z", "+00:00"))
    since = (changed_at - dt.timedelta(milliseconds=1)).isoformat()
    cli_run(loaded.base_url, out, "--since", since, "--config", str(config))
    assert report(out)["counts"]["incremental.changed_subjects"] == 1
    assert rid not in {f["source"]["id"] for f in json.loads((out / "crf" / f"{subject.subject_id}.json")
                                                             .read_text())["findings"]}


def test_since_last_against_a_server_whose_clock_is_behind_finds_a_change_made_after_the_run(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A server whose clock is two minutes behind this machine's stamps a change made after the run with a time
    before the run's start on this machine's clock: the run records its base on the server's clock (its Date
    header), so the next ``--since last`` reads the changed subject again."""
    from fhir_adapter.testing.fhir_server import start_fhir_server

    subjects = 3
    write_feed(tmp_path / "feed", subjects=subjects, seed=7)
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    with start_fhir_server(CLOCK_OFFSET_MS=-120_000) as server:
        load_feed(server.base_url, tmp_path / "feed")
        time.sleep(1.5)  # the base is found to about a request's round trip: the load is well before it
        first = CliRunner().invoke(main, ["run", "--source", server.base_url, "--out", str(out), "--config",
                                          str(config)], catch_exceptions=False)
        warned = first.output + capfd.readouterr().err  # the log's handler writes to the process's stderr
        assert first.exit_code in (0, 2) and re.search(r"the server's clock is at least 1[12]\d s behind", warned)
        assert [bool(re.match(r"the server's clock is at least 1[12]\d s behind", w["message"]))
                for w in report(out)["warnings"] if w.get("rule") == "server-clock"] == [True]
        recorded = dt.datetime.fromisoformat(json.loads((out / "state" / "last-run.json").read_text())["started"])
        assert recorded < dt.datetime.now(dt.UTC) - dt.timedelta(seconds=110)
        subject = plan_trial(subjects, 7).subjects[0]
        rid = _first_source(out, subject.subject_id, "c3")
        _edit(server.base_url, "Observation", rid, lambda r: r.update(status="entered-in-error"))
        cli_run(server.base_url, out, "--since", "last", "--config", str(config))
        assert report(out)["counts"]["incremental.changed_subjects"] == 1
        fresh = tmp_path / "fresh"
        cli_run(server.base_url, fresh, "--config", str(config))
    assert server_read_crfs(out) == server_read_crfs(fresh)
    assert rid not in {f["source"]["id"] for f in json.loads((out / "crf" / f"{subject.subject_id}.json")
                                                             .read_text())["findings"]}


def test_a_subjects_patient_merged_away_in_the_ehr_is_said_and_read_again_once_the_subject_is_repointed(
        loaded: ServerHandle, tmp_path: Path) -> None:
    """The EHR merges a subject's Patient into another (the master patient index: the old Patient gets
    `link: replaced-by`, the records move): the server run says so, naming both Patients and what to change — it
    does not follow the link — and once the ResearchSubject points at the surviving Patient, its records are the
    subject's again."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    subject = plan_trial(SUBJECTS, 7).subjects[0]
    cli_run(loaded.base_url, out, "--config", str(config))
    rid = _first_source(out, subject.subject_id, "c3")
    [old] = search_all(loaded.base_url, "Patient", {"_id": subject.patient_id})
    survivor = {k: v for k, v in old.items() if k not in ("meta", "id", "link")} | {
        "id": "merged-survivor-1", "link": [{"other": {"reference": f"Patient/{subject.patient_id}"},
                                             "type": "replaces"}]}
    put_resources(loaded.base_url, [survivor, {k: v for k, v in old.items() if k != "meta"} | {
        "active": False, "link": [{"other": {"reference": "Patient/merged-survivor-1"}, "type": "replaced-by"}]}])
    _edit(loaded.base_url, "Observation", rid, lambda r: r.update(subject={"reference": "Patient/merged-survivor-1"}))

    cli_run(loaded.base_url, out, "--config", str(config))
    [said] = [w for w in report(out)["warnings"] if w.get("rule") == "patient-link"]
    assert said["resource"] == f"Patient/{subject.patient_id}"
    assert "was replaced by Patient/merged-survivor-1" in said["message"]
    assert "ResearchSubject.individual" in said["fix"]
    assert rid not in {f["source"]["id"] for f in json.loads((out / "crf" / f"{subject.subject_id}.json")
                                                             .read_text())["findings"]}
    # the site repoints the subject at the surviving Patient: its records (the moved one too) are read again
    [rs] = [r for r in search_all(loaded.base_url, "ResearchSubject", {})
            if r["individual"]["reference"].endswith(f"/{subject.patient_id}")]
    put_resources(loaded.base_url, [{k: v for k, v in rs.items() if k != "meta"}
                                    | {"individual": {"reference": "Patient/merged-survivor-1"}}])
    cli_run(loaded.base_url, out, "--config", str(config))
    assert rid in {f["source"]["id"] for f in json.loads((out / "crf" / f"{subject.subject_id}.json")
                                                         .read_text())["findings"]}
    [said] = [w for w in report(out)["warnings"] if w.get("rule") == "patient-link"]
    assert said["resource"] == "Patient/merged-survivor-1" and "merge or re-file" in said["fix"]



def test_a_subject_withdrawn_after_a_post_is_not_read_again_and_keeps_what_was_written(loaded: ServerHandle,
                                                                                        tmp_path: Path) -> None:
    """docs/clinical-rules.md#withdrawn-subjects: once the EHR records a subject as withdrawn, the next run reads
    none of its records, retracts and updates none of its results on the server, keeps its write-back state,
    and its OUT carries its last CRF and results forward."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    subject = sorted(p.stem for p in (out / "crf").glob("*.json"))[0]
    withdrawn_before = report(out)["summary"]["excluded_research_subjects"].get("withdrawn", 0)

    def written_of(state: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in state["results"].items() if v.get("subject_id") == subject}

    state_before = written_of(json.loads((out / "state" / "written.json").read_text()))
    mine = {o["id"]: o["meta"]["versionId"] for o in adapter_observations(loaded.base_url)
            if any(f".{subject}." in i["value"] for i in o["identifier"] if i["system"] == SID_RESULT)}
    assert mine and len(state_before) == len(mine)
    [rs] = [r for r in search_all(loaded.base_url, "ResearchSubject", {})
            if any(i.get("value") == subject for i in r.get("identifier") or [])]
    _edit(loaded.base_url, "ResearchSubject", rs["id"], lambda r: r.update(status="withdrawn"))
    loaded.reset("stats")

    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    rep = report(out)
    assert rep["summary"]["excluded_research_subjects"].get("withdrawn") == withdrawn_before + 1
    assert subject not in rep["server_requests"]["per_subject"] and len(rep["server_requests"]["per_subject"]) > 0
    assert subject not in {w["subject_id"] for w in rep["writes"]}
    assert rep["summary"]["subjects_carried_forward"] == [subject]
    assert json.loads((out / "crf" / f"{subject}.json").read_text())["dm"]["status"] == "withdrawn"
    assert subject in {s["subject_id"] for s in study_results(out)["subjects"]}
    assert rep["writeback_state"]["retracted"] == 0  # no end of participation: nothing lies outside it
    after = {o["id"]: o for o in adapter_observations(loaded.base_url) if o["id"] in mine}
    assert {k: o["meta"]["versionId"] for k, o in after.items()} == mine  # neither retracted nor updated
    assert all(o["status"] != "entered-in-error" for o in after.values())
    assert written_of(json.loads((out / "state" / "written.json").read_text())) == state_before
    # an incremental run carries it forward too, still without a request for it
    crf = (out / "crf" / f"{subject}.json").read_bytes()
    cli_run(loaded.base_url, out, "--post", "--since", "last", "--config", str(config))
    rep = report(out)
    assert rep["summary"]["subjects_carried_forward"] == [subject] and rep["exit_code"] == 0
    assert subject not in rep["server_requests"]["per_subject"]
    assert (out / "crf" / f"{subject}.json").read_bytes() == crf


def test_a_subject_withdrawn_with_an_earlier_end_has_its_results_after_the_end_retracted(loaded: ServerHandle,
                                                                                          tmp_path: Path) -> None:
    """docs/clinical-rules.md#withdrawn-subjects: a withdrawal recorded with a ResearchSubject.period.end before
    results the adapter already wrote. Never read again, the subject's results are planned from its carried CRF
    as any subject's: its visit results after the end lie outside its participation and are retracted on the
    server; its per-subject results follow its data up to the end (updated, or retracted when no longer derived);
    its visit results up to the end are untouched. The server then holds what OUT/writeback says."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    cli_run(loaded.base_url, out, "--post", "--config", str(config))
    subject = sorted(p.stem for p in (out / "crf").glob("*.json"))[0]
    mine = {o["id"]: o for o in adapter_observations(loaded.base_url)
            if any(f".{subject}." in i["value"] for i in o["identifier"] if i["system"] == SID_RESULT)}

    def ident(o: dict[str, Any]) -> str:
        return str(next(i["value"] for i in o["identifier"] if i["system"] == SID_RESULT))

    visits = {k: o for k, o in mine.items() if ".subject." not in ident(o)}
    dates = sorted({o["effectiveDateTime"][:10] for o in visits.values()})
    end = dates[len(dates) // 2]
    after_end = {k for k, o in visits.items() if o["effectiveDateTime"][:10] > end}
    before_end = set(visits) - after_end
    assert after_end and before_end
    [rs] = [r for r in search_all(loaded.base_url, "ResearchSubject", {})
            if any(i.get("value") == subject for i in r.get("identifier") or [])]
    _edit(loaded.base_url, "ResearchSubject", rs["id"],
          lambda r: r.update(status="withdrawn", period={**r.get("period", {}), "end": end}))
    loaded.reset("stats")

    cli_run(loaded.base_url, out, "--post", "--config", str(config), "--allow-mass-retraction")
    rep = report(out)
    assert rep["summary"]["subjects_carried_forward"] == [subject]
    now = {o["id"]: o for o in adapter_observations(loaded.base_url) if o["id"] in mine}
    retracted = {k for k, o in now.items() if o["status"] == "entered-in-error"}
    assert after_end <= retracted and not retracted & before_end
    assert all("participation ended on " + end in now[k]["note"][0]["text"] for k in retracted)
    assert {k: now[k]["meta"]["versionId"] for k in before_end} == \
        {k: mine[k]["meta"]["versionId"] for k in before_end}  # untouched
    # the server holds what the subject's bundle says, result by result
    bundle = json.loads((out / "writeback" / f"{subject}.json").read_text())
    offline = {ident(e["resource"]): (e["resource"]["status"], e["resource"].get("valueInteger"),
                                      e["resource"].get("valueBoolean"))
               for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"}
    assert offline == {ident(o): (o["status"], o.get("valueInteger"), o.get("valueBoolean")) for o in now.values()}
    # nothing more on the next run
    loaded.reset("stats")
    cli_run(loaded.base_url, out, "--post", "--since", "last", "--config", str(config))
    assert subject not in {w["subject_id"] for w in report(out)["writes"]}
    assert writes(loaded.stats()) == 0


def test_since_last_after_the_mapping_changed_reads_every_subject_in_full(loaded: ServerHandle,
                                                                          tmp_path: Path) -> None:
    """An unchanged subject's CRF of the last run was mapped by that run's mapping files: after the study's files
    (or the site overlay, or the adapter version) changed, reusing it would keep the old mapping beside subjects
    mapped by the new one. The next --since last reads everyone in full, and says why."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    study = tmp_path / "study"
    shutil.copytree(Path(__file__).resolve().parents[2] / "mappings" / "lcar-aio", study)
    cli_run(loaded.base_url, out, "--study", str(study), "--config", str(config))
    assert json.loads((out / "state" / "last-run.json").read_text())["mapping_fingerprint"]
    cli_run(loaded.base_url, out, "--study", str(study), "--since", "last", "--config", str(config))
    assert report(out)["counts"]["incremental.changed_subjects"] == 0  # nothing changed: nobody read
    with (study / "items.yaml").open("a", encoding="utf-8") as fh:
        fh.write("\n# a site's correction of the mapping\n")
    cli_run(loaded.base_url, out, "--study", str(study), "--since", "last", "--config", str(config))
    rep = report(out)
    assert rep["counts"]["incremental.mapping_changed"] == 1
    assert rep["counts"]["incremental.changed_subjects"] == SUBJECTS
    assert any(w.get("rule") == "incremental" and "mapping files" in w["message"] for w in rep["warnings"])


@pytest.mark.parametrize("between", [(), ("--since", "last")])
def test_results_written_about_the_wrong_patient_are_retracted_there_once_the_subject_is_repointed(
        loaded: ServerHandle, tmp_path: Path, between: tuple[str, ...]) -> None:
    """A ResearchSubject linked to the wrong Patient, corrected after a --post: the subject's results on that
    Patient's chart are set to entered-in-error there (a result about another patient must not stay current), the
    run says so (`subject-moved`), and the next run writes nothing more. The other subjects' results stay. A run
    without --post in between (which records the new Patient in the state) does not make the adapter forget them,
    nor does a --post that is incremental."""
    out, config = tmp_path / "out", write_config(tmp_path / "a.yaml")
    assert cli_run(loaded.base_url, out, "--post", "--config", str(config)).exit_code in (0, 2)
    subject = plan_trial(SUBJECTS, 7).subjects[0]
    mine = f"LCAR-AIO-SLE.{subject.subject_id}."

    def results_on(patient: str) -> dict[str, str]:
        return {next(i["value"] for i in o["identifier"] if i["system"] == SID_RESULT): o["status"]
                for o in adapter_observations(loaded.base_url) if o["subject"]["reference"] == f"Patient/{patient}"}

    before = results_on(subject.patient_id)
    assert before and all(i.startswith(mine) for i in before) and set(before.values()) == {"final"}
    others = {i: s for o in plan_trial(SUBJECTS, 7).subjects[1:] for i, s in results_on(o.patient_id).items()}
    [old] = search_all(loaded.base_url, "Patient", {"_id": subject.patient_id})
    put_resources(loaded.base_url, [{k: v for k, v in old.items() if k not in ("meta", "id")} | {"id": "right-1"}])
    [rs] = [r for r in search_all(loaded.base_url, "ResearchSubject", {})
            if r["individual"]["reference"].endswith(f"/{subject.patient_id}")]
    _edit(loaded.base_url, "ResearchSubject", rs["id"], lambda r: r.update(individual={"reference": "Patient/right-1"}))

    if between:  # the corrected Patient holds the subject's records too: a read run records them as its
        for rtype in ("Observation", "AdverseEvent", "MedicationStatement", "MedicationAdministration", "Procedure"):
            moved = [r for r in search_all(loaded.base_url, rtype, {"subject": f"Patient/{subject.patient_id}"})
                     if SID_RESULT not in json.dumps(r.get("identifier"))]  # the records, not the results
            put_resources(loaded.base_url, [{k: v for k, v in r.items() if k != "meta"} | {
                k: {"reference": "Patient/right-1"} for k in ("subject", "patient") if k in r} for r in moved])
        assert cli_run(loaded.base_url, out, "--config", str(config)).exit_code in (0, 2)
        assert set(results_on(subject.patient_id).values()) == {"final"}  # nothing posted yet
    assert cli_run(loaded.base_url, out, "--post", "--config", str(config), *between).exit_code in (0, 2)
    assert set(results_on(subject.patient_id).values()) == {"entered-in-error"}
    assert set(results_on(subject.patient_id)) == set(before)
    [said] = [w for w in report(out)["warnings"] if w.get("rule") == "subject-moved"]
    assert said["subject_id"] == subject.subject_id and f"Patient/{subject.patient_id}" in said["message"]
    assert {i: s for o in plan_trial(SUBJECTS, 7).subjects[1:] for i, s in results_on(o.patient_id).items()} == others
    loaded.reset("stats")
    assert cli_run(loaded.base_url, out, "--post", "--config", str(config)).exit_code in (0, 2)
    assert report(out)["summary"]["server_writes"] == 0
