"""Candidates written by a run, and decisions honoured by the next run: values, endpoints, exports,
re-review when the EHR changed a value after it was adjudicated, write-back limited to reviewed results."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.export.odm import validate
from fhir_adapter.review.store import DecisionStore, TamperedError, new_decision
from fhir_adapter.study.load import Study
from fhir_adapter.writeback.sources import result_sources
from tests.review.review_feed import SUBJECT, run_feed


def _json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def _candidates(out: Path, visit: str, item: str) -> dict[str, Any]:
    doc = _json(out / "review" / "candidates" / f"{SUBJECT}.json")
    return next(e for e in doc["items"] if e["visit"] == visit and e["item"] == item)


def _visit(out: Path, visit: str) -> dict[str, Any]:
    study = _json(out / "results" / "study.json")
    row = next(s for s in study["subjects"] if s["subject_id"] == SUBJECT)
    return next(v for v in row["visits"] if v["visit"] == visit)


def _decide(out: Path, visit: str, item: str, action: str, **kw: Any) -> dict[str, Any]:
    d = new_decision(subject_id=SUBJECT, visit=visit, item=item, action=action, reviewer="D. Manager",
                     shown=_candidates(out, visit, item), **kw)
    return DecisionStore.under(out).append(d)


def _rows(out: Path, domain: str) -> list[dict[str, str]]:
    with (out / "export" / f"{domain}.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["SUBJID"] == SUBJECT]


def test_candidates_list_every_value_in_the_window_with_rule_window_and_flags(tmp_path: Path, study: Study) -> None:
    out, summary = run_feed(tmp_path, study)
    assert summary.exit_code == 0
    w24 = _candidates(out, "W24", "c3")
    assert (w24["rule"], w24["window"], w24["target_day"]) == ("closest", [155, 183], 169)
    assert w24["picked"] == "Observation/c3-w24a"
    by_id = {c["id"]: c for c in w24["candidates"]}
    assert list(by_id) == ["Observation/c3-w24a", "Observation/c3-w24b", "Observation/c3-late"]
    b = by_id["Observation/c3-w24b"]
    assert (b["value"], b["unit"], b["orig_value"], b["orig_unit"], b["status"]) == ("1.2", "g/L", "120", "mg/dL",
                                                                                      "final")
    assert b["source"] == {"resource_type": "Observation", "id": "c3-w24b", "version": "1"}
    assert b["datetime"].startswith("2024-08-23T09:00") and b["study_day"] == 176
    flags = {cid: {k for k, on in c["flags"].items() if on} for cid, c in by_id.items()}
    assert flags == {"Observation/c3-w24a": set(), "Observation/c3-w24b": {"unit_converted"},
                     "Observation/c3-late": {"out_of_window"}}
    assert _candidates(out, "W12", "c3")["candidates"][0]["flags"]["amended"] is True
    assert _candidates(out, "W2", "car_transgene")["candidates"][0]["flags"]["below_lloq"] is True
    # the CRF keeps the rule's pick; nothing is reviewed yet
    crf = _json(out / "crf" / f"{SUBJECT}.json")
    w24_rec = next(v for v in crf["visits"] if v["visit"] == "W24")
    assert w24_rec["values"]["c3"]["source"]["id"] == "c3-w24a"
    assert {r["REVSTAT"] for r in _rows(out, "LB")} == {"unreviewed"}
    report = _json(out / "run-report.json")["review"]
    assert report["decisions"] == 0 and report["re_review"] == [] and report["items"] == {"unreviewed": 6}


def test_the_next_run_uses_the_chosen_value_and_recomputes_endpoints(tmp_path: Path, study: Study) -> None:
    out, _ = run_feed(tmp_path, study)
    assert (_visit(out, "W24")["c3"], _visit(out, "W24")["c3_change"]) == (0.9, 0.4)
    _decide(out, "W24", "c3", "choose", candidate="Observation/c3-w24b", reason="day-169 sample haemolysed")
    _decide(out, "BL", "c3", "accept")
    _decide(out, "W12", "c3", "not_available", reason="sample from another patient (lab incident 12)")
    _decide(out, "W2", "car_transgene", "query", reason="LLOQ of the new assay?")
    out, summary = run_feed(tmp_path, study)
    assert summary.exit_code == 0
    assert (_visit(out, "W24")["c3"], _visit(out, "W24")["c3_change"]) == (1.2, 0.7)
    assert _visit(out, "W12")["c3"] is None
    crf = _json(out / "crf" / f"{SUBJECT}.json")
    w24 = next(v for v in crf["visits"] if v["visit"] == "W24")
    assert w24["values"]["c3"]["source"]["id"] == "c3-w24b"
    status = {(r["VISIT"], r["LBTESTCD"]): r["REVSTAT"] for r in _rows(out, "LB")}
    assert status == {("Baseline (pre-lymphodepletion)", "C3"): "accepted", ("Week 24", "C3"): "changed",
                      ("Week 12", "C3"): "not-available"}
    assert [r["REVSTAT"] for r in _rows(out, "PC")] == ["query"]
    report = _json(out / "run-report.json")["review"]
    assert report["decisions"] == 4 and report["applied"] == 3 and report["re_review"] == []
    assert report["decisions_head"] == DecisionStore.under(out).read().head
    assert report["items"] == {"accepted": 1, "changed": 1, "not-available": 1, "query": 1, "unreviewed": 2}
    odm = (out / "export" / "odm.xml").read_text()
    validate(out / "export" / "odm.xml")
    assert '<User OID="USR.REVIEW.1"><LoginName>D. Manager</LoginName></User>' in odm
    assert "<ReasonForChange>day-169 sample haemolysed</ReasonForChange>" in odm
    assert "review status changed: choose Observation/c3-w24b" in odm
    assert 'ItemOID="IT.LB.REVSTAT" Value="changed"' in odm


@pytest.mark.parametrize("reviewed_only", [False, True])  # exports made where the subject is, or in the run's process
def test_a_value_declared_not_available_is_a_not_done_row_in_every_export(tmp_path: Path, study: Study,
                                                                          reviewed_only: bool) -> None:
    out, _ = run_feed(tmp_path, study)
    _decide(out, "W12", "c3", "not_available", reason="sample from another patient (lab incident 12)")
    out, _ = run_feed(tmp_path, study, reviewed_only=reviewed_only)
    # the derivations see no value ...
    assert _visit(out, "W12")["c3"] is None
    crf = _json(out / "crf" / f"{SUBJECT}.json")
    assert "c3" not in next(v for v in crf["visits"] if v["visit"] == "W12")["values"]
    # ... and the exports carry the decision as a NOT DONE record, as they do a cancelled result
    [row] = [r for r in _rows(out, "LB") if r["VISIT"] == "Week 12"]
    assert (row["LBTESTCD"], row["LBSTAT"], row["LBREASND"], row["REVSTAT"]) == (
        "C3", "NOT DONE", "sample from another patient (lab incident 12)", "not-available")
    assert (row["LBORRES"], row["LBSTRESC"], row["LBSTRESN"]) == ("", "", "")
    assert row["SRCREF"] == "Observation/c3-w12/_history/2"  # the result the reviewer set aside
    ds = _json(out / "export" / "LB.json")  # Dataset-JSON
    names = [c["name"] for c in ds["columns"]]
    [ds_row] = [r for r in (dict(zip(names, row, strict=True)) for row in ds["rows"])
                if r["SUBJID"] == SUBJECT and r["VISIT"] == "Week 12"]
    assert (ds_row["LBSTAT"], ds_row["REVSTAT"]) == ("NOT DONE", "not-available")
    validate(out / "export" / "odm.xml")
    odm = (out / "export" / "odm.xml").read_text()
    event = odm.split('<StudyEventData StudyEventOID="SE.W12">')[1].split("</StudyEventData>")[0]
    assert "<ReasonForChange>sample from another patient (lab incident 12)</ReasonForChange>" in event
    assert "review status not-available: not_available" in event
    assert 'ItemOID="IT.LB.LBSTAT" Value="NOT DONE"' in event
    assert 'ItemOID="IT.LB.REVSTAT" Value="not-available"' in event
    assert "IT.LB.LBSTRESN" not in event


def test_a_not_available_decision_applied_again_to_the_crf_it_left_gives_the_same_record(tmp_path: Path,
                                                                                      study: Study) -> None:
    """An incremental run derives an unchanged subject again from its CRF file, where the decision already took
    the value out: applied again there, the NOT DONE record still names the result set aside with its category
    and LOINC code (before: empty LBCAT/LBLOINC on the second incremental run)."""
    from fhir_adapter.crf.models import SubjectCRF
    from fhir_adapter.review.apply import apply_decisions

    out, _ = run_feed(tmp_path, study)
    _decide(out, "W12", "c3", "not_available", reason="sample from another patient (lab incident 12)")
    out, _ = run_feed(tmp_path, study)
    [row] = [r for r in _rows(out, "LB") if r["VISIT"] == "Week 12"]
    written = SubjectCRF.model_validate_json((out / "crf" / f"{SUBJECT}.json").read_bytes())
    assert "c3" not in next(v for v in written.visits if v.visit == "W12").values
    decisions = DecisionStore.under(out).read().current()
    # the CRF as the mapping made it (the value in its visit) and as the run wrote it give the same record
    value = next(f for f in written.findings if f.source.reference == row["SRCREF"])
    mapped = written.model_copy(update={"visits": [
        v.model_copy(update={"values": {**v.values, "c3": value}}) if v.visit == "W12" else v
        for v in written.visits]})
    [fresh] = apply_decisions(mapped, study, decisions).not_available
    [again] = apply_decisions(written, study, decisions).not_available
    assert again == fresh and again.source.reference == row["SRCREF"] and again.loinc == row["LBLOINC"] != ""


def test_a_result_chosen_from_an_unscheduled_visit_leaves_it(tmp_path: Path, study: Study) -> None:
    """Choosing an out-of-window result that the rule placed in an unscheduled visit moves it: the export has
    it once, in the chosen visit; the unscheduled visit keeps the rule's pick among its other results."""
    out, _ = run_feed(tmp_path, study, fever=True)
    before = {(r["VISIT"], r["SRCREF"]) for r in _rows(out, "VS")}
    assert before == {("Week 2 (day 15)", "Observation/temp-15/_history/1"),
                      ("Unscheduled (day 11)", "Observation/temp-11a/_history/1")}
    w2 = _candidates(out, "W2", "temperature")
    assert [c["id"] for c in w2["candidates"]] == [
        "Observation/temp-11a", "Observation/temp-11b", "Observation/temp-15"]
    _decide(out, "W2", "temperature", "choose", candidate="Observation/temp-11a", reason="the fever of day 11")
    out, _ = run_feed(tmp_path, study, fever=True)
    rows = [(r["VISIT"], r["SRCREF"], r["VSSTRESN"], r["REVSTAT"]) for r in _rows(out, "VS")]
    assert sorted(rows) == [("Unscheduled (day 11)", "Observation/temp-11b/_history/1", "38", "unreviewed"),
                            ("Week 2 (day 15)", "Observation/temp-11a/_history/1", "38.5", "changed")]
    crf = _json(out / "crf" / f"{SUBJECT}.json")
    used = [v["values"]["temperature"]["source"]["id"] for v in crf["visits"] if "temperature" in v["values"]]
    assert sorted(used) == ["temp-11a", "temp-11b"]
    validate(out / "export" / "odm.xml")
    assert (out / "export" / "odm.xml").read_text().count('Value="Observation/temp-11a/_history/1"') == 1


def test_a_source_changed_after_adjudication_is_flagged_for_re_review(tmp_path: Path, study: Study) -> None:
    out, _ = run_feed(tmp_path, study)
    _decide(out, "W24", "c3", "choose", candidate="Observation/c3-w24b", reason="day-169 sample haemolysed")
    out, _ = run_feed(tmp_path, study, amend_chosen=True)  # the EHR corrects the chosen result: 130 mg/dL
    report = _json(out / "run-report.json")
    [flag] = report["review"]["re_review"]
    assert (flag["visit"], flag["item"], flag["decision_seq"], flag["reviewer"]) == ("W24", "c3", 1, "D. Manager")
    assert flag["changes"] == ["Observation/c3-w24b changed in the EHR: version 1 → 2, value 1.2 → 1.3"]
    assert any(w["rule"] == "re-review" and "c3 at W24" in w["message"] for w in report["warnings"])
    # the decision still applies (the chosen resource at its current version), flagged, never silently kept
    assert _visit(out, "W24")["c3"] == 1.3
    assert [r["REVSTAT"] for r in _rows(out, "LB") if r["VISIT"] == "Week 24"] == ["re-review"]
    # a new decision settles it
    _decide(out, "W24", "c3", "accept")
    out, _ = run_feed(tmp_path, study, amend_chosen=True)
    assert _json(out / "run-report.json")["review"]["re_review"] == []
    assert _visit(out, "W24")["c3"] == 0.9


def test_a_corrected_infusion_date_that_changes_the_rules_pick_asks_for_re_review(tmp_path: Path,
                                                                                    study: Study) -> None:
    """An accept confirms the rule's pick the reviewer saw. Day 1 corrected four days later: the candidates are on
    other study days and the rule now picks another one — what the reviewer confirmed no longer describes the
    CRF, so the item is asked again (it was kept 'accepted', out of every re-review list)."""
    out, _ = run_feed(tmp_path, study)
    assert _candidates(out, "W24", "c3")["picked"] == "Observation/c3-w24a"
    _decide(out, "W24", "c3", "accept")
    out, _ = run_feed(tmp_path, study, day1_shift=4)
    assert _candidates(out, "W24", "c3")["picked"] == "Observation/c3-w24b"
    report = _json(out / "run-report.json")
    [flag] = [f for f in report["review"]["re_review"] if (f["visit"], f["item"]) == ("W24", "c3")]
    assert "Observation/c3-w24a is now on study day 165 (was 169): Day 1 changed" in flag["changes"]
    assert flag["changes"][-1] == ("the rule now picks Observation/c3-w24b (the reviewer accepted "
                                   "Observation/c3-w24a)")
    assert [r["REVSTAT"] for r in _rows(out, "LB") if r["VISIT"] == "Week 24"] == ["re-review"]


def test_a_decision_naming_a_result_that_is_no_candidate_is_re_review_not_changed(tmp_path: Path,
                                                                                  study: Study) -> None:
    """A decision (written by something else than the app, its chain kept) choosing Observation/nope, which was
    never a candidate: the rule's pick stays, and the item is re-review with the reason — not 'changed' in LB
    and odm.xml while the value is the rule's."""
    out, _ = run_feed(tmp_path, study)
    store = DecisionStore.under(out)
    decision = new_decision(subject_id=SUBJECT, visit="W24", item="c3", action="accept", reviewer="D. Manager",
                            shown=_candidates(out, "W24", "c3"))
    store.append({**decision, "action": "choose", "candidate": "Observation/nope", "reason": "scripted"})
    out, _ = run_feed(tmp_path, study)
    [flag] = _json(out / "run-report.json")["review"]["re_review"]
    assert flag["changes"] == ["Observation/nope is not a candidate of c3 at W24: the rule's pick is used"]
    assert _visit(out, "W24")["c3"] == 0.9
    assert [r["REVSTAT"] for r in _rows(out, "LB") if r["VISIT"] == "Week 24"] == ["re-review"]


def test_decisions_for_a_subject_no_research_subject_names_are_warned_of(tmp_path: Path, study: Study) -> None:
    """A decision for 999-999 (a typo, or another study's file): not applied, and said, not silently ignored."""
    out, _ = run_feed(tmp_path, study)
    store = DecisionStore.under(out)
    shown = _candidates(out, "W24", "c3")
    store.append(new_decision(subject_id="999-999", visit="W24", item="c3", action="accept", reviewer="D. Manager",
                              shown=shown))
    _decide(out, "W24", "c3", "accept")
    out, _ = run_feed(tmp_path, study)
    warned = [w for w in _json(out / "run-report.json")["warnings"] if w["rule"] == "review-subject"]
    assert [w["subject_id"] for w in warned] == ["999-999"]


def test_writeback_can_be_limited_to_reviewed_results(tmp_path: Path, study: Study) -> None:
    default, _ = run_feed(tmp_path, study, out=tmp_path / "default")  # default: everything goes back, as before
    everything = [e["resource"]["identifier"][0]["value"]
                  for e in _json(default / "writeback" / f"{SUBJECT}.json")["entry"]
                  if e["resource"]["resourceType"] == "Observation"]
    # the "no DLT" result cites the infusion it was judged from (and the AEs considered: none here)
    assert everything == ["LCAR-AIO-SLE.101-001.BL.sledai-2k", "LCAR-AIO-SLE.101-001.subject.dlt"]
    out, _ = run_feed(tmp_path, study, reviewed_only=True)
    bundle = _json(out / "writeback" / f"{SUBJECT}.json")
    assert bundle["entry"] == []
    report = _json(out / "run-report.json")
    held = report["review"]["held_back"]
    assert set(everything) <= set(held)
    assert not any(k.startswith("LCAR-AIO-SLE.101-001") for k in _json(out / "state" / "written.json")["results"])
    # the SLEDAI-2K at baseline is derived from C3 and the rash descriptor: once both are reviewed, it goes back
    _decide(out, "BL", "c3", "accept")
    _decide(out, "BL", "sledai2k.rash", "accept")
    out, _ = run_feed(tmp_path, study, reviewed_only=True)
    written = [e["resource"]["identifier"][0]["value"] for e in _json(out / "writeback" / f"{SUBJECT}.json")["entry"]
               if e["resource"]["resourceType"] == "Observation"]
    assert written == ["LCAR-AIO-SLE.101-001.BL.sledai-2k"]
    assert "LCAR-AIO-SLE.101-001.BL.sledai-2k" not in _json(out / "run-report.json")["review"]["held_back"]


def test_a_tampered_decision_file_stops_the_run(tmp_path: Path, study: Study) -> None:
    out, _ = run_feed(tmp_path, study)
    _decide(out, "BL", "c3", "accept")
    path = DecisionStore.under(out).path
    path.write_bytes(path.read_bytes().replace(b"D. Manager", b"X. Forger"))
    with pytest.raises(TamperedError, match=r"review-decisions\.jsonl:1"):
        run_feed(tmp_path, study)


def test_cli_reviewed_only_setting_from_the_config_file(tmp_path: Path, study: Study) -> None:
    from click.testing import CliRunner

    from fhir_adapter.cli.commands import main
    from tests.review.review_feed import feed

    src = feed().write(tmp_path / "feed")
    cfg = tmp_path / "adapter.yaml"
    cfg.write_text("writeback_reviewed_only: true\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["-q", "run", "--source", str(src), "--out", str(out), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert _json(out / "writeback" / f"{SUBJECT}.json")["entry"] == []
    assert _json(out / "run-report.json")["review"]["writeback_reviewed_only"] is True
    state = tmp_path / "elsewhere"
    r = CliRunner().invoke(main, ["-q", "run", "--source", str(src), "--out", str(out), "--review-state", str(state)])
    assert r.exit_code == 0, r.output
    assert _json(out / "run-report.json")["review"]["decisions_file"] == str(state / "review-decisions.jsonl")


def _descriptor(out: Path, visit: str, code: str) -> dict[str, Any]:
    return next(d for d in _visit(out, visit)["sledai2k_descriptors"] if d["code"] == code)


def _written(out: Path, ident: str) -> dict[str, Any]:
    """The result resource the write-back bundle holds with identifier ``ident``."""
    return next(e["resource"] for e in _json(out / "writeback" / f"{SUBJECT}.json")["entry"]
                if e["resource"].get("identifier", [{}])[0].get("value") == ident)


def test_a_result_declared_not_available_is_neither_scored_nor_cited_by_the_sledai(tmp_path: Path,
                                                                                  study: Study) -> None:
    """SLEDAI-2K reads every result of its look-back window, not the visit's value: a decision must reach it."""
    out, _ = run_feed(tmp_path, study, sledai=True)
    dna = _descriptor(out, "W24", "increased-dna-binding")
    assert (dna["score"], dna["sources"]) == (2, ["Observation/dsdna-w24/_history/1"])
    assert _visit(out, "W24")["sledai2k"] == 2
    _decide(out, "W24", "anti_dsdna", "not_available", reason="sample mislabelled")
    out, _ = run_feed(tmp_path, study, sledai=True)
    assert _visit(out, "W24")["anti_dsdna"] is None
    dna = _descriptor(out, "W24", "increased-dna-binding")
    assert (dna["score"], dna["basis"], dna["sources"]) == (0, "not-assessed", [])
    assert _visit(out, "W24")["sledai2k"] == 0
    sledai = _written(out, "LCAR-AIO-SLE.101-001.W24.sledai-2k")
    assert sledai["valueInteger"] == 0
    assert not any("dsdna-w24" in ref for ref in result_sources(sledai))
    assert "Observation/rash-w24" in result_sources(sledai)


def test_a_chosen_c3_is_the_one_the_sledai_scores_at_that_visit(tmp_path: Path, study: Study) -> None:
    out, _ = run_feed(tmp_path, study, sledai=True)
    # week 24: the rule's pick (0.9, day 169) is not below range; the day-178 0.7 is after the visit date
    low = _descriptor(out, "W24", "low-complement")
    assert (low["score"], low["sources"]) == (0, ["Observation/c3-w24a/_history/1"])
    # baseline: the rule's pick (0.5, day -7) is below range; the day -9 1.1 is not
    assert _descriptor(out, "BL", "low-complement")["score"] == 2
    _decide(out, "W24", "c3", "choose", candidate="Observation/c3-w24low", reason="day-169 sample clotted")
    _decide(out, "BL", "c3", "choose", candidate="Observation/c3-bl-rpt", reason="day -7 sample haemolysed")
    out, _ = run_feed(tmp_path, study, sledai=True)
    low = _descriptor(out, "W24", "low-complement")
    assert (low["score"], low["sources"]) == (2, ["Observation/c3-w24low/_history/1"])
    low = _descriptor(out, "BL", "low-complement")
    assert (low["score"], low["sources"]) == (0, ["Observation/c3-bl-rpt/_history/1"])
    assert not any("c3-bl/" in ref for ref in result_sources(_written(out, "LCAR-AIO-SLE.101-001.BL.sledai-2k")))


def test_reviewed_only_writes_the_sledai_once_all_its_sources_are_reviewed(tmp_path: Path, study: Study) -> None:
    out, _ = run_feed(tmp_path, study, sledai=True, reviewed_only=True)
    assert "LCAR-AIO-SLE.101-001.W24.sledai-2k" in _json(out / "run-report.json")["review"]["held_back"]
    _decide(out, "W24", "c3", "accept")
    _decide(out, "W24", "sledai2k.rash", "accept")
    _decide(out, "W24", "anti_dsdna", "not_available", reason="sample mislabelled")
    out, _ = run_feed(tmp_path, study, sledai=True, reviewed_only=True)
    assert "LCAR-AIO-SLE.101-001.W24.sledai-2k" not in _json(out / "run-report.json")["review"]["held_back"]
    assert sorted(result_sources(_written(out, "LCAR-AIO-SLE.101-001.W24.sledai-2k"))) == [
        "Observation/c3-w24a", "Observation/rash-w24"]


def test_accepting_the_pick_never_moves_a_score(tmp_path: Path, study: Study) -> None:
    """An accept confirms the rule's pick: SLEDAI-2K still judges its whole look-back, as without a decision.
    Week 24 picks the day-169 C3 (in range); the day-165 C3 below range, in the look-back, scores low complement
    before and after the accept."""
    out, _ = run_feed(tmp_path, study, sledai=True, low_in_lookback=True)
    before = _descriptor(out, "W24", "low-complement")
    assert (before["score"], before["sources"]) == (2, ["Observation/c3-w24-165/_history/1"])
    total = _visit(out, "W24")["sledai2k"]
    _decide(out, "W24", "c3", "accept")
    out, _ = run_feed(tmp_path, study, sledai=True, low_in_lookback=True)
    assert (_descriptor(out, "W24", "low-complement"), _visit(out, "W24")["sledai2k"]) == (before, total)
