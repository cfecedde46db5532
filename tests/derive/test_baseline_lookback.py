"""Baseline from a result in no visit — before consent, or between visit windows — inside the look-back
(docs/clinical-rules.md#baseline, ``schedule.yaml`` ``baseline.lookback_days``): it is the baseline without
becoming a visit, and ``BaselineSource`` names it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from fhir_adapter.crf.models import Finding, SubjectCRF
from fhir_adapter.derive.baseline import item_with_baseline
from fhir_adapter.derive.immunology import ImmunologySettings, derive_immunology
from fhir_adapter.derive.pga import PgaSettings, derive_pga
from fhir_adapter.derive.renal import RenalSettings, derive_renal
from fhir_adapter.derive.sledai2k import Sledai2kSettings, baseline_prior, derive_sledai2k
from fhir_adapter.results.study_json import subject_row
from fhir_adapter.results.subject import derive_subject
from fhir_adapter.study.load import Study
from tests.efficacy_helpers import conmed, rule, visit_crf
from tests.helpers import DAY1, d, descriptor, finding

CONSENT = d(-20)
LOOKBACK_FROM = DAY1 - dt.timedelta(days=56)
RENAL = rule("renal", RenalSettings)
RENAL_ON = RENAL.model_copy(update={"response": RENAL.response.model_copy(update={"enabled": True})})


def subject(visits: dict[str, tuple[int, dict[str, Finding | float]]], findings: Sequence[Finding] = (),
            **kw: Any) -> SubjectCRF:
    """Consent on day -20, look-back from day -56; ``findings`` are results placed in no visit."""
    c = visit_crf(visits, findings=list(findings))
    return c.model_copy(update={"participation_start": CONSENT, "baseline_from": LOOKBACK_FROM, **kw})


def test_a_value_from_before_consent_is_the_baseline_without_a_visit() -> None:
    crf = subject({"W4": (29, {"c3": 0.9}), "W12": (85, {"c3": 1.1})}, [finding("c3", -25, 0.5)])
    rows, source = item_with_baseline(crf, "c3")
    assert [(r.visit, r.change, r.baseline) for r in rows] == [("W4", 0.4, False), ("W12", 0.6, False)]
    assert source is not None and (source.value, source.date, source.study_day) == (0.5, d(-25), -25)
    assert source.before_participation and source.sources[0].startswith("Observation/")
    assert [v.visit for v in crf.visits] == ["W4", "W12"]  # never a visit


def test_the_look_back_bounds_how_old_a_baseline_may_be() -> None:
    old = subject({"W4": (29, {"c3": 0.9})}, [finding("c3", -57, 0.5)])
    rows, source = item_with_baseline(old, "c3")
    assert source is None and rows[0].change is None
    unlimited = old.model_copy(update={"baseline_from": None})  # lookback_days: null
    assert item_with_baseline(unlimited, "c3")[0][0].change == 0.4


def test_the_last_value_on_or_before_day1_wins_visit_or_not() -> None:
    # a BL visit on day -7 is later than the pre-consent value: the visit is the baseline
    crf = subject({"BL": (-7, {"c3": 0.7}), "W4": (29, {"c3": 0.9})}, [finding("c3", -25, 0.5)])
    rows, source = item_with_baseline(crf, "c3")
    assert source is None and [(r.visit, r.baseline, r.change) for r in rows] == [
        ("BL", True, 0.0), ("W4", False, 0.2)]
    # a result between windows (day -4, lymphodepletion) is later than the BL visit: it is the baseline
    crf = subject({"BL": (-7, {"c3": 0.7}), "W4": (29, {"c3": 0.9})}, [finding("c3", -4, 0.6)])
    rows, source = item_with_baseline(crf, "c3")
    assert source is not None and not source.before_participation and source.study_day == -4
    assert [(r.visit, r.baseline, r.change) for r in rows] == [("BL", False, None), ("W4", False, 0.3)]
    # nothing after Day 1 is ever a baseline
    crf = subject({"W4": (29, {"c3": 0.9})}, [finding("c3", 2, 0.6)])
    assert item_with_baseline(crf, "c3")[1] is None


def test_a_censored_baseline_has_no_change() -> None:
    crf = subject({"W4": (29, {"c3": 0.9})}, [finding("c3", -25, 0.2, comparator="<")])
    rows, source = item_with_baseline(crf, "c3")
    assert source is not None and source.comparator == "<" and rows[0].change is None


def test_pga_change_against_a_pre_consent_pga() -> None:
    crf = subject({"W4": (29, {"pga": 0.5})}, [finding("pga", -30, 1.8, domain="QS")])
    (w4,) = derive_pga(crf, rule("pga", PgaSettings))
    assert (w4.pga, w4.change, w4.baseline) == (0.5, -1.3, False)


def test_sledai2k_assessment_before_consent_is_the_baseline(study: Study) -> None:
    pre = [descriptor("arthritis", -30, True), descriptor("rash", -30, True), finding("protein_24h", -32, 1.2)]
    at_w4 = [descriptor("arthritis", 29, False), descriptor("rash", 29, False)]
    crf = subject({"W4": (29, {})}, pre + at_w4)
    visits = derive_sledai2k(crf, study.rule("sledai2k", Sledai2kSettings))
    assert [(v.visit, v.total, v.change, v.baseline) for v in visits] == [("W4", 0, -10, False)]
    prior = baseline_prior(visits, crf, study.rule("sledai2k", Sledai2kSettings))
    assert prior is not None and (prior.date, prior.total) == (d(-30), 10) and len(prior.sources) == 2
    # with a later assessment at a visit on or before Day 1, that visit is the baseline
    crf = subject({"BL": (-7, {}), "W4": (29, {})}, [*pre, descriptor("arthritis", -7, True), *at_w4])
    visits = derive_sledai2k(crf, study.rule("sledai2k", Sledai2kSettings))
    assert baseline_prior(visits, crf, study.rule("sledai2k", Sledai2kSettings)) is None
    assert [(v.visit, v.baseline, v.change) for v in visits] == [("BL", True, 0), ("W4", False, -4)]


def test_serology_and_b_cells_against_a_pre_consent_baseline() -> None:
    s = rule("immunology", ImmunologySettings)
    crf = subject({"W4": (29, {"anti_dsdna": finding("anti_dsdna", 29, 10.0, ref_high=30.0), "cd19": 0.0})},
                  [finding("anti_dsdna", -40, 150.0, ref_high=30.0), finding("cd19", -40, 120.0)])
    res = derive_immunology(crf, s)
    sero = res.seroconversion["anti_dsdna"]
    assert (sero.baseline_status, sero.baseline_visit, sero.seroconverted) == ("positive", None, True)
    assert sero.baseline_source is not None and sero.baseline_source.startswith("Observation/")
    assert res.b_cell_aplasia.baseline_cd19 == 120.0 and res.b_cell_aplasia.baseline_source is not None
    assert res.values["anti_dsdna"][0].change == -140.0
    # docs/clinical-rules.md#immunology: CD19+ B cells per visit with their change from baseline too
    from fhir_adapter.endpoints.immunology import visit_keys

    row = visit_keys(res, "W4")
    assert (row["cd19"], row["cd19_change"], row["anti_dsdna_change"]) == (0.0, -120.0, -140.0)


def test_renal_response_against_a_pre_consent_upcr() -> None:
    crf = subject({"W24": (169, {"upcr": 0.3, "egfr": 90.0})},
                  [finding("upcr", -30, 2.0), finding("egfr", -30, 88.0)])
    res = derive_renal(crf, RENAL_ON)
    assert res.visits[0].upcr_change == -1.7
    r = res.response
    assert r is not None and (r.baseline_visit, r.baseline_value, r.baseline_egfr) == (None, 2.0, 88.0)
    assert r.baseline_source is not None and r.last is not None and r.last.response == "complete"
    assert {b.item for b in res.baselines} == {"upcr", "egfr"}


def test_lldas_compares_new_features_with_an_assessment_in_no_visit(study: Study) -> None:
    """docs/clinical-rules.md#lldas-new-features: the previous assessment is the comparator, visit or not."""
    pre = [descriptor("arthritis", -30, True), descriptor("rash", -30, False)]   # before consent, no visit
    w4: dict[str, Finding | float] = {"pga": finding("pga", 29, 0.5, domain="QS"),
                                      "sledai2k.arthritis": descriptor("arthritis", 29, True)}
    w12: dict[str, Finding | float] = {"pga": finding("pga", 85, 0.5, domain="QS"),
                                       "sledai2k.arthritis": descriptor("arthritis", 85, True),
                                       "sledai2k.rash": descriptor("rash", 85, True)}
    between = [descriptor("arthritis", 50, True), descriptor("rash", 50, True)]   # day 50: in no window
    crf = subject({"W4": (29, w4), "W12": (85, w12)}, [*pre, *between], cm=[conmed("prednisolone", -60, None, dose=5)])
    visits = {v["visit"]: v for v in subject_row(derive_subject(crf, study))["visits"]}
    assert (visits["W4"]["lldas"], visits["W4"]["lldas_reason"]) == (True, None)
    assert visits["W12"]["lldas_failed"] == ["sledai_le_4"]   # rash scored on day 50 already: not new


def test_the_last_result_is_the_baseline_even_when_its_visit_kept_another() -> None:
    """docs/clinical-rules.md#baseline: the last assessment on or before Day 1, whatever visit it falls in. A
    BL window with results on days -8 and -6 keeps the one closest to its target (-8, the tie going to the
    earlier); the baseline is still day -6's — as pharmaverse admiral flags ABLFL on the last record before
    the first dose. It had been the visit's pick: every change from baseline off by their difference."""
    kept = finding("upcr", -8, 1.0)
    later = finding("upcr", -6, 2.0, visit="BL")
    crf = subject({"BL": (-8, {"upcr": kept}), "W4": (29, {"upcr": 0.5})}, [later])
    rows, source = item_with_baseline(crf, "upcr")
    assert [(r.visit, r.baseline, r.change) for r in rows] == [("BL", False, None), ("W4", False, -1.5)]
    assert source is not None and (source.value, source.date, source.visit) == (2.0, d(-6), "BL")
    # the same day: the later time is the later result; the visit's pick wins only a tie
    early = finding("upcr", -1, 0.4, datetime=dt.datetime.combine(d(-1), dt.time(0, 30), tzinfo=dt.UTC))
    late = finding("upcr", -1, 0.16, visit="D1",
                   datetime=dt.datetime.combine(d(-1), dt.time(9, 51), tzinfo=dt.UTC))
    crf = subject({"D1": (-1, {"upcr": early}), "W4": (29, {"upcr": 0.5})}, [late])
    rows, source = item_with_baseline(crf, "upcr")
    assert source is not None and source.value == 0.16 and rows[1].change == 0.34
    tie = finding("upcr", -1, 0.3, visit="D1", datetime=early.datetime)
    crf = subject({"D1": (-1, {"upcr": early}), "W4": (29, {"upcr": 0.5})}, [tie])
    rows, source = item_with_baseline(crf, "upcr")
    assert source is None and rows[0].baseline and rows[1].change == 0.1


def test_a_result_a_reviewer_set_aside_is_never_the_baseline(study: Study) -> None:
    """docs/review.md: a result the reviewer set aside is neither scored nor cited — the last-result baseline
    too. BL keeps c3 on day -7 (5.0, closest to its target); the reviewer chooses day -8's 1.0, or declares the
    item not available: the set-aside 5.0 is no baseline either way."""
    from fhir_adapter.mapping.visits import place
    from fhir_adapter.review.apply import apply_decisions
    from fhir_adapter.review.candidates import item_candidates

    placed, visits = place([finding("c3", -8, 1.0), finding("c3", -7, 5.0), finding("c3", 29, 1.2)], DAY1, study)
    crf = visit_crf({}).model_copy(update={"findings": placed, "visits": visits, "baseline_from": LOOKBACK_FROM})
    entry = next(e for e in item_candidates(crf, study) if (e["visit"], e["item"]) == ("BL", "c3"))
    chosen = next(c["id"] for c in entry["candidates"] if c["value"] == "1")
    got = {}
    for action in ("choose", "not_available"):
        decision = {"action": action, "candidate": chosen if action == "choose" else None, "seq": 1, "reviewer": "r",
                    "at": "2024-03-01T00:00:00Z", "shown": {"candidates": entry["candidates"]}, "item": "c3",
                    "visit": "BL", "reason": "haemolysed"}
        reviewed = apply_decisions(crf, study, {(crf.subject_id, "BL", "c3"): decision}).crf
        rows, source = item_with_baseline(reviewed, "c3")
        got[action] = (source, [(r.visit, r.value, r.baseline, r.change) for r in rows])
    assert got["choose"] == (None, [("BL", 1.0, True, 0.0), ("W4", 1.2, False, 0.2)])
    assert got["not_available"] == (None, [("BL", None, False, None), ("W4", 1.2, False, None)])


def test_a_day1_result_after_the_infusion_is_not_the_baseline() -> None:
    """decisions: baseline on or before Day 1, before the infusion. Day 1 at 08:00 (kept by D1) and 20:00, the
    infusion at 12:00: the 08:00 result is the baseline, not the later one."""
    def at(hour: int) -> dt.datetime:
        return dt.datetime.combine(DAY1, dt.time(hour), tzinfo=dt.UTC)

    before, after = finding("c3", 1, 0.9, datetime=at(8)), finding("c3", 1, 0.5, datetime=at(20), visit="D1")
    crf = subject({"D1": (1, {"c3": before}), "W4": (29, {"c3": 1.0})}, [after], infusion_time=at(12))
    rows, source = item_with_baseline(crf, "c3")
    assert source is None and [(r.visit, r.baseline, r.change) for r in rows] == [("D1", True, 0.0),
                                                                                ("W4", False, 0.1)]


def test_a_visits_own_day1_value_after_the_infusion_is_not_the_baseline() -> None:
    """D1 keeps only a 20:00 result, the infusion was at 12:00: the baseline is BL's (day -7), and D1 has a
    change like any later visit."""
    after = finding("c3", 1, 0.5, datetime=dt.datetime.combine(DAY1, dt.time(20), tzinfo=dt.UTC))
    crf = subject({"BL": (-7, {"c3": 0.7}), "D1": (1, {"c3": after}), "W4": (29, {"c3": 1.0})},
                  infusion_time=dt.datetime.combine(DAY1, dt.time(12), tzinfo=dt.UTC))
    rows, source = item_with_baseline(crf, "c3")
    assert source is None and [(r.visit, r.baseline, r.change) for r in rows] == [
        ("BL", True, 0.0), ("D1", False, -0.2), ("W4", False, 0.3)]


def test_a_visits_change_is_against_its_own_results_date_not_the_windows_first() -> None:
    """D1's window holds day -1 (the baseline, not kept) and Day 1 (kept, after the infusion): D1's value is
    dated Day 1, after the baseline, so it has a change (the visit is dated by its window's earliest result)."""
    infused = dt.datetime.combine(DAY1, dt.time(9), tzinfo=dt.UTC)
    base = finding("upcr", -1, 2.5, visit="D1")
    kept = finding("upcr", 1, 0.3, datetime=infused + dt.timedelta(hours=3))
    crf = subject({"D1": (-1, {"upcr": kept}), "W4": (29, {"upcr": 0.5})}, [base], infusion_time=infused)
    rows, source = item_with_baseline(crf, "upcr")
    assert source is not None and source.value == 2.5
    assert [(r.visit, r.baseline, r.change) for r in rows] == [("D1", False, -2.2), ("W4", False, -2.0)]


def test_the_exports_flag_the_baseline_the_derivations_take(study: Study) -> None:
    """--BLFL and the change from baseline date a visit's value by its own result: a screening visit dated by a
    clinician's assessment inside a 28-day look-back whose platelets were drawn outside it has no baseline in
    either; one dated by an earlier result whose kept platelets are inside has it in both."""
    from fhir_adapter.export.cdisc import RowBuilder

    since = DAY1 - dt.timedelta(days=28)
    rows_of = RowBuilder(study)
    for drawn, visit_day, expected in ((-40, -20, None), (-20, -40, "SCR")):
        crf = visit_crf({"SCR": (visit_day, {"platelets": finding("platelets", drawn, 150.0)}),
                         "W4": (29, {"platelets": 200.0})}).model_copy(update={"baseline_from": since})
        rows, _ = item_with_baseline(crf, "platelets")
        derived = next((r.visit for r in rows if r.baseline), None)
        flagged, _ = rows_of.baseline_records(crf)
        assert derived == expected and {v for v, i in flagged if i == "platelets"} == ({expected} - {None})


def test_a_value_later_on_the_baselines_own_day_has_a_change() -> None:
    """The baseline drawn at 08:00 on Day 1 (not kept), D1 keeping the 20:00 result after the 12:00 infusion:
    D1's value is after the baseline — a change, as at any later visit."""
    def at(hour: int) -> dt.datetime:
        return dt.datetime.combine(DAY1, dt.time(hour), tzinfo=dt.UTC)

    morning = finding("c3", 1, 0.9, datetime=at(8), visit="D1")
    evening = finding("c3", 1, 0.5, datetime=at(20))
    crf = subject({"D1": (1, {"c3": evening}), "W4": (29, {"c3": 1.0})}, [morning], infusion_time=at(12))
    rows, source = item_with_baseline(crf, "c3")
    assert source is not None and source.value == 0.9
    assert [(r.visit, r.baseline, r.change) for r in rows] == [("D1", False, -0.4), ("W4", False, 0.1)]


def test_no_endpoint_takes_a_day1_assessment_after_the_infusion_as_its_baseline() -> None:
    """docs/clinical-rules.md#baseline: "on or before Day 1, before the infusion" serves SLEDAI-2K, serology and
    B-cell aplasia as it serves a lab value. BL (day -7): arthritis, anti-dsDNA 100 (positive), CD19 150; D1 at
    15:00, after the 10:00 infusion: no arthritis but a rash, anti-dsDNA 20, CD19 0.5; W4: arthritis, anti-dsDNA
    20. The baselines are BL's: SLEDAI-2K 6 (arthritis 4, DNA binding 2; W4 change -2, not 0 against D1's 4),
    anti-dsDNA positive (it seroconverts at W4), CD19 150."""
    infused = dt.datetime.combine(DAY1, dt.time(10), tzinfo=dt.UTC)
    late = dt.datetime.combine(DAY1, dt.time(15), tzinfo=dt.UTC)

    def at_d1(f: Finding) -> Finding:
        return f.model_copy(update={"datetime": late, "visit": "D1"})

    findings = [descriptor("arthritis", -7, True).model_copy(update={"visit": "BL"}),
                at_d1(descriptor("arthritis", 1, False)), at_d1(descriptor("rash", 1, True)),
                descriptor("arthritis", 29, True).model_copy(update={"visit": "W4"})]
    crf = subject({"BL": (-7, {"anti_dsdna": 100.0, "cd19": 150.0}),
                   "D1": (1, {"anti_dsdna": at_d1(finding("anti_dsdna", 1, 20.0)),
                              "cd19": at_d1(finding("cd19", 1, 0.5))}),
                   "W4": (29, {"anti_dsdna": 20.0, "cd19": 0.4})}, findings, infusion_time=infused)
    sledai = derive_sledai2k(crf, rule("sledai2k", Sledai2kSettings))
    assert [(v.visit, v.total, v.baseline, v.change) for v in sledai] == [
        ("BL", 6, True, 0), ("D1", 4, False, -2), ("W4", 4, False, -2)]
    assert baseline_prior(sledai, crf, rule("sledai2k", Sledai2kSettings)) is None
    immunology = derive_immunology(crf, rule("immunology", ImmunologySettings))
    sero = immunology.seroconversion["anti_dsdna"]
    assert (sero.baseline_visit, sero.baseline_status, sero.seroconverted) == ("BL", "positive", True)
    assert immunology.b_cell_aplasia.baseline_cd19 == 150
    # a clinician's assessment of that afternoon placed in no visit is no baseline either
    off_visit = [f.model_copy(update={"visit": None}) if f.date == DAY1 else f for f in findings]
    crf = subject({"BL": (-7, {}), "W4": (29, {})}, off_visit, infusion_time=infused)
    sledai = derive_sledai2k(crf, rule("sledai2k", Sledai2kSettings))
    assert baseline_prior(sledai, crf, rule("sledai2k", Sledai2kSettings)) is None
    assert [(v.visit, v.total, v.baseline, v.change) for v in sledai] == [("BL", 4, True, 0), ("W4", 4, False, 0)]
