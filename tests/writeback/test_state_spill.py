"""The write-back state keeps this run's entries on disk until it is saved: the saved file is the same bytes as
one orjson dump of all entries (keys sorted), with earlier runs' entries kept or replaced subject by subject."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.writeback.state import STATE_VERSION, WrittenState


def result(subject: str, name: str, value: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": name},
            "identifier": [{"system": SID_RESULT, "value": f"{subject}-{name}"}],
            "subject": {"reference": f"Patient/{subject}"}, "valueInteger": value,
            "derivedFrom": [{"reference": f"Observation/{subject}-src"}], "note": [{"text": "\u00e9 \"q\""}]}


def test_saved_state_is_one_dump_of_every_entry(tmp_path: Path) -> None:
    path = tmp_path / "written.json"
    first = WrittenState(path)
    for subject in ("s2", "s1", "s3"):
        first.commit(first.plan(subject, [result(subject, "b", 1), result(subject, "a", 2)], [], dt.date(2025, 1, 1)))
    first.save()
    data = orjson.loads(path.read_bytes())
    assert path.read_bytes() == orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    assert sorted(data["results"]) == ["s1-a", "s1-b", "s2-a", "s2-b", "s3-a", "s3-b"]
    assert data["version"] == STATE_VERSION

    second = WrittenState(path)  # s1 changes, s2 loses a result (retracted), s3 is not processed
    second.commit(second.plan("s1", [result("s1", "a", 5), result("s1", "b", 1)], [], dt.date(2025, 2, 1)))
    plan = second.plan("s2", [result("s2", "a", 2)], [], dt.date(2025, 2, 1))
    assert [r["status"] for r in plan.retractions] == ["entered-in-error"]
    second.commit(plan)
    second.save(tmp_path / "again.json")
    again = orjson.loads((tmp_path / "again.json").read_bytes())
    assert (tmp_path / "again.json").read_bytes() == orjson.dumps(again, option=orjson.OPT_SORT_KEYS)
    assert again["results"]["s3-a"] == data["results"]["s3-a"]
    assert again["results"]["s1-a"]["hash"] != data["results"]["s1-a"]["hash"]
    assert again["results"]["s2-b"]["retracted"] == "2025-02-01"
    assert second.changes == {"new": 0, "updated": 1, "unchanged": 2, "retracted": 1}


def test_a_write_confirmed_in_part_records_only_the_confirmed_results(tmp_path: Path) -> None:
    """A subject's write split into transactions that stopped part-way: the results not confirmed keep their
    earlier entry (or none), so the next run plans them again and only them."""
    path = tmp_path / "written.json"
    first = WrittenState(path)
    first.commit(first.plan("s1", [result("s1", "a", 1), result("s1", "b", 1)], [], dt.date(2025, 1, 1)))
    first.save()

    second = WrittenState(path)  # a changes, b retracted, c and d new; only a and c were confirmed
    plan = second.plan("s1", [result("s1", "a", 2), result("s1", "c", 1), result("s1", "d", 1)], [],
                       dt.date(2025, 2, 1))
    second.commit(plan, pending=["s1-b", "s1-d"])
    second.save()
    saved = orjson.loads(path.read_bytes())["results"]
    assert sorted(saved) == ["s1-a", "s1-b", "s1-c"]
    assert "retracted" not in saved["s1-b"]  # its retraction was not confirmed
    assert second.changes == {"new": 1, "updated": 1, "unchanged": 0, "retracted": 0}

    third = WrittenState(path)
    again = third.plan("s1", [result("s1", "a", 2), result("s1", "c", 1), result("s1", "d", 1)], [],
                       dt.date(2025, 3, 1))
    assert again.changes == {"new": 1, "updated": 0, "unchanged": 2}
    assert [r["identifier"] for r in again.report] == ["s1-b"]


def test_a_retraction_is_dated_in_utc_not_in_the_machines_time_zone(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With no date given (the pipeline gives the site's), a retraction's date is today in UTC: a machine set to
    a zone whose date differs from UTC's right now must not change the note, the state or the write key."""
    utc = dt.datetime.now(dt.UTC)
    monkeypatch.setenv("TZ", "Pacific/Kiritimati" if utc.hour >= 10 else "Etc/GMT+12")  # another date than UTC's
    time.tzset()
    try:
        assert dt.date.today() != dt.datetime.now(dt.UTC).date()  # the machine's date is another day
        first = WrittenState(tmp_path / "written.json")
        first.commit(first.plan("s1", [result("s1", "a", 1)], [], dt.date(2025, 1, 1)))
        first.save()
        plan = WrittenState(tmp_path / "written.json").plan("s1", [], [])
        today = dt.datetime.now(dt.UTC).date().isoformat()
        assert f" on {today}: " in plan.retractions[0]["note"][0]["text"]
        assert plan.entries["s1-a"]["retracted"] == today
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_retraction_names_a_source_gone_from_the_data_in_its_note_not_in_a_reference(tmp_path: Path) -> None:
    """A server that checks references (HAPI's referential integrity on write) refuses a reference to a deleted
    resource, and the stale result would stay current: a source no longer in the data is named in the note only;
    one that is there (entered-in-error) keeps its reference."""
    first = WrittenState(tmp_path / "written.json")
    both = {**result("s1", "a", 1), "derivedFrom": [{"reference": "Observation/kept/_history/2"},
                                                    {"reference": "Observation/gone"}]}
    first.commit(first.plan("s1", [both], [], dt.date(2025, 1, 1)))
    first.save()
    source = [{"resourceType": "Observation", "id": "kept", "status": "entered-in-error",
               "meta": {"versionId": "3"}}]
    [retraction] = WrittenState(tmp_path / "written.json").plan("s1", [], source, dt.date(2025, 2, 1)).retractions
    assert retraction["derivedFrom"] == [{"reference": "Observation/kept/_history/2"}]
    assert "Observation/gone is no longer in the source" in retraction["note"][0]["text"]


def test_the_patients_of_a_subject_survive_a_result_another_subject_committed(tmp_path: Path) -> None:
    """Roster-CSV subjects share one result identifier (the adapter's own ResearchStudy): once a subject commits
    it, asking the Patients of another subject that had it must not fail that subject (a KeyError did)."""
    shared = {**result("s1", "study", 1), "identifier": [{"system": SID_RESULT, "value": "study"}]}
    first = WrittenState(tmp_path / "written.json")
    for subject in ("s1", "s2"):
        first.commit(first.plan(subject, [result(subject, "a", 1), {**shared, "subject": {
            "reference": f"Patient/{subject}"}}], [], dt.date(2025, 1, 1)))
    first.save()
    second = WrittenState(tmp_path / "written.json")
    second.commit(second.plan("s1", [result("s1", "a", 1), shared], [], dt.date(2025, 2, 1)))
    assert second.patients_of("s2") == {"s2"}


def _study() -> dict[str, Any]:
    return {"resourceType": "ResearchStudy", "status": "active",
            "identifier": [{"system": SID_RESULT, "value": "study"}]}


def _recorded_under(path: Path) -> str:
    return str(orjson.loads(path.read_bytes())["results"]["study"]["subject_id"])


def test_the_shared_research_study_survives_the_subject_it_was_recorded_under(tmp_path: Path) -> None:
    """The adapter's own ResearchStudy is in every roster-CSV subject's bundle under one identifier and recorded
    under one of them. That subject's next plan without it (withdrawn: carried forward) failed with a KeyError
    when another subject had committed it this run, or retracted the study when planned first; its write left
    pending erased the entry another subject had committed."""
    path = tmp_path / "written.json"
    first = WrittenState(path)
    for subject in ("s1", "s2"):
        first.commit(first.plan(subject, [_study(), result(subject, "a", 1)], [], dt.date(2025, 1, 1)))
    first.save()
    owner = _recorded_under(path)
    other = "s1" if owner == "s2" else "s2"
    # the other subject first, then the owner without the study (carried forward, nothing new of it)
    state = WrittenState(path)
    state.commit(state.plan(other, [_study(), result(other, "a", 1)], [], dt.date(2025, 2, 1)))
    plan = state.plan(owner, [result(owner, "a", 1)], [], dt.date(2025, 2, 1))
    assert plan.retractions == []
    state.commit(plan)
    state.save()
    assert "study" in orjson.loads(path.read_bytes())["results"]
    # the owner first: the study is kept, never retracted with the subject
    state = WrittenState(path)
    owner = _recorded_under(path)
    plan = state.plan(owner, [result(owner, "a", 1)], [], dt.date(2025, 3, 1))
    assert plan.retractions == [] and "study" in plan.entries and not plan.entries["study"].get("retracted")
    # the study's write left pending by its owner after another subject committed it: the other's entry stays
    state = WrittenState(path)
    owner = _recorded_under(path)
    other = "s1" if owner == "s2" else "s2"
    state.commit(state.plan(other, [_study(), result(other, "a", 1)], [], dt.date(2025, 4, 1)))
    state.commit(state.plan(owner, [_study(), result(owner, "a", 1)], [], dt.date(2025, 4, 1)), pending={"study"})
    state.save()
    again = WrittenState(path)
    assert again.plan(owner, [_study(), result(owner, "a", 1)], [], dt.date(2025, 5, 1)).kinds["study"] == "unchanged"


def _about(resource: dict[str, Any], patient: str) -> dict[str, Any]:
    return {**resource, "subject": {"reference": f"Patient/{patient}"}}


def test_a_subject_linked_to_another_patient_is_remembered_until_retracted_there(tmp_path: Path) -> None:
    """Results a and b written about Patient A; the ResearchSubject then names B, whose records give a only. The
    state remembers A (a run without a server in between must not make it forget), says the current results are
    about B (what a subject who leaves then carries), and the offline bundle retracts a and b on A — never with
    the identifier's fullUrl of a's result on B."""
    from fhir_adapter.writeback.bundle import offline_transaction

    path = tmp_path / "written.json"
    first = WrittenState(path)
    first.commit(first.plan("s1", [_about(result("s1", "a", 1), "A"), _about(result("s1", "b", 2), "A")], [],
                            dt.date(2025, 1, 1), patient_id="A"))
    first.save()
    second = WrittenState(path)
    plan = second.plan("s1", [_about(result("s1", "a", 1), "B")], [], dt.date(2025, 2, 1), patient_id="B")
    assert [r["subject"]["reference"] for r in plan.retractions] == ["Patient/A"]   # b, on A
    assert [(r["identifier"][0]["value"], r["subject"]["reference"], r["status"]) for r in plan.moved] == [
        ("s1-a", "Patient/A", "entered-in-error")]                                   # a, on A
    bundle = offline_transaction([_about(result("s1", "a", 1), "B"), *plan.retractions, *plan.moved], "B")
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(urls) == len(set(urls))
    assert sorted(e["request"]["url"].split("&patient=")[1].split("&")[0] for e in bundle["entry"][1:-1]) == [
        "Patient/A", "Patient/A", "Patient/B"]
    second.commit(plan)
    second.save()
    third = WrittenState(path)  # a run without a server in between: A is still remembered
    assert third.written_about("s1") == {"B"} and third.patients_of("s1") == {"A", "B"}
    plan = third.plan("s1", [_about(result("s1", "a", 1), "B")], [], dt.date(2025, 3, 1), patient_id="B")
    assert {r["identifier"][0]["value"] for r in plan.moved} == {"s1-a", "s1-b"}  # still in the bundle
    plan.moved_away_done()  # a --post retracted them on A
    third.commit(plan)
    third.save()
    assert WrittenState(path).patients_of("s1") == {"B"}


def test_the_adapters_own_research_subject_remembers_its_former_patient(tmp_path: Path) -> None:
    """A roster-CSV subject with no result yet: its only entry is the adapter's ResearchSubject, about a Patient
    by ``individual`` — pointed at another Patient, the former one is remembered (to move it on the server)."""
    def research_subject(patient: str) -> dict[str, Any]:
        return {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study",
                "identifier": [{"system": SID_RESULT, "value": "s1-rs"}],
                "individual": {"reference": f"Patient/{patient}"}}

    path = tmp_path / "written.json"
    first = WrittenState(path)
    first.commit(first.plan("s1", [research_subject("A")], [], dt.date(2025, 1, 1), patient_id="A"))
    first.save()
    second = WrittenState(path)
    assert second.patients_of("s1") == {"A"}
    second.commit(second.plan("s1", [research_subject("B")], [], dt.date(2025, 2, 1), patient_id="B"))
    second.save()
    assert WrittenState(path).patients_of("s1") == {"A", "B"}


def test_the_state_amends_a_changed_value_not_a_changed_method_text(tmp_path: Path) -> None:
    """OUT/writeback marks amended a result whose value replaced one written before (and keeps it so), not one whose
    method text or sources changed (a new adapter version): no amendment for the chart."""
    from fhir_adapter.terminology.codes import SID_RESULT
    from fhir_adapter.writeback.state import WrittenState

    def res(value: int, method: str, descriptor: str = "rash") -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final", "identifier": [{"system": SID_RESULT,
                                                                                  "value": "S.1.W4.x"}],
                "subject": {"reference": "Patient/p1"}, "valueInteger": value, "method": {"text": method},
                "component": [{"code": {"text": descriptor}, "valueInteger": value}]}

    def run(value: int, method: str, descriptor: str = "rash") -> str:
        """One run: the state as the last run left it, this run's plan of the result, committed and saved."""
        state = WrittenState(tmp_path / "written.json")
        plan = state.plan("1", [res(value, method, descriptor)], [])
        status = str(plan.amend([res(value, method, descriptor)])[0]["status"])
        state.commit(plan)
        state.save()
        return status

    assert run(4, "v1") == "final"
    assert run(4, "v2") == "final"    # the same value, another method text: updated, not amended
    assert run(4, "v2", "alopecia") == "amended"  # the same total from another descriptor: what it reports changed
    (tmp_path / "written.json").unlink()
    assert run(4, "v1") == "final"
    assert run(5, "v2") == "amended"  # another value
    assert run(5, "v3") == "amended"  # amended once: stays amended
