"""Prednisolone-equivalent dose: the worked numbers of docs/clinical-rules.md#glucocorticoid-daily-dose."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fhir_adapter.crf.models import ConMed
from fhir_adapter.derive.glucocorticoids import (
    GlucocorticoidSettings,
    derive_pred_eq,
    glucocorticoid_series,
    pred_eq_on,
    record_pred_eq,
)
from tests.efficacy_helpers import conmed, rule, visit_crf
from tests.helpers import d

S = rule("glucocorticoids", GlucocorticoidSettings)


def dose(cms: list[ConMed], day: int = 10) -> float | None:
    return pred_eq_on(cms, d(day), S).mg_per_day


def test_shipped_table() -> None:
    factors = {g.name: g.factor for g in S.drugs}
    assert factors == {"prednisone": 1, "prednisolone": 1, "methylprednisolone": 1.25, "dexamethasone": 6.67,
                       "hydrocortisone": 0.25, "betamethasone": 8.33, "triamcinolone": 1.25, "deflazacort": 0.83,
                       "cortisone": 0.2}
    assert {g.name: g.rxnorm for g in S.drugs}["methylprednisolone"] == "6902"
    assert S.systemic_routes == ("oral", "intravenous", "intramuscular")


def test_every_other_day_is_averaged() -> None:
    assert dose([conmed("prednisone", 1, 60, dose=20, freq=0.5)]) == 10


def test_factors() -> None:
    assert dose([conmed("methylprednisolone", 1, None, dose=16)]) == 20
    assert dose([conmed("dexamethasone", 1, None, dose=1.5)]) == pytest.approx(10, abs=0.01)   # 1.5 x 6.67
    assert dose([conmed("deflazacort", 1, None, dose=6)]) == pytest.approx(5, abs=0.02)
    assert dose([conmed("betamethasone", 1, None, dose=0.6)]) == pytest.approx(5, abs=0.01)
    assert dose([conmed("cortisone acetate", 1, None, dose=25)]) == 5   # alias


def test_concurrent_records_are_summed() -> None:
    am_pm = [conmed("hydrocortisone", 1, None, dose=20), conmed("hydrocortisone", 1, None, dose=10)]
    assert dose(am_pm) == 7.5
    overlap = [conmed("prednisolone", 1, 20, dose=5), conmed("methylprednisolone", 10, 30, dose=4)]
    assert dose(overlap, 9) == 5 and dose(overlap, 10) == 10 and dose(overlap, 20) == 10 and dose(overlap, 21) == 5


def test_taper_and_inclusive_dates() -> None:
    taper = [conmed("prednisolone", 1, 7, dose=20), conmed("prednisolone", 8, 14, dose=15),
             conmed("prednisolone", 15, 21, dose=10), conmed("prednisolone", 22, 28, dose=7.5)]
    assert [dose(taper, day) for day in (1, 7, 8, 14, 15, 22, 28, 29)] == [20, 20, 15, 15, 10, 7.5, 7.5, None]
    average = sum(dose(taper, day) or 0 for day in range(1, 29)) / 28
    assert average == pytest.approx(13.125)
    assert dose(taper, -1) is None   # no record before the taper: missing, not 0
    taper[-1] = taper[-1].model_copy(update={"status": "completed"})
    assert dose(taper, 29) == 0       # the completed last step is the evidence of 0
    assert pred_eq_on(taper, d(29), S).sources == [taper[-1].source.reference]


def test_routes() -> None:
    assert dose([conmed("betamethasone", 1, None, dose=1, route="topical")]) is None
    assert dose([conmed("triamcinolone", 1, None, dose=40, route="intra-articular")]) is None
    assert dose([conmed("prednisolone", 1, None, dose=5, route="inhaled")]) is None
    assert dose([conmed("methylprednisolone", 1, None, dose=40, route="intravenous")]) == 50
    assert dose([conmed("triamcinolone", 1, None, dose=4, route="intramuscular")]) == 5
    # subcutaneous is not in the study's list (docs/clinical-rules.md#glucocorticoid-routes); a site adds it
    assert dose([conmed("dexamethasone", 1, None, dose=3, route="subcutaneous")]) is None
    missing = pred_eq_on([conmed("dexamethasone", 1, None, dose=3, route="subcutaneous")], d(10), S)
    assert (missing.reason or "").startswith(
        "no glucocorticoid record by a counted route (oral, intravenous, intramuscular) covers the date")
    with_sc = S.model_copy(update={"systemic_routes": (*S.systemic_routes, "subcutaneous")})
    sc = [conmed("dexamethasone", 1, None, dose=3, route="subcutaneous")]
    assert pred_eq_on(sc, d(10), with_sc).mg_per_day == 20.01   # 3 mg x 6.67
    # unknown route: the mapping's systemic flag, else count_unknown_route (true)
    assert dose([conmed("prednisolone", 1, None, dose=5, route=None)]) == 5
    assert dose([conmed("prednisolone", 1, None, dose=5, route=None, systemic=False)]) is None
    no_unknown = S.model_copy(update={"count_unknown_route": False})
    assert pred_eq_on([conmed("prednisolone", 1, None, dose=5, route=None)], d(10), no_unknown).mg_per_day is None


def test_rxnorm_code_wins_over_the_name() -> None:
    assert dose([conmed("solu-medrol", 1, None, dose=4, rxnorm="6902")]) == 5
    assert dose([conmed("budesonide", 1, None, dose=9, drug_class="glucocorticoid")]) is None


def test_administrations_count_on_their_date_and_replace_orders() -> None:
    pulse = [conmed("methylprednisolone", day, day, dose=500, kind="administration", route="intravenous",
                    freq=None) for day in (2, 3, 4)]
    oral = conmed("methylprednisolone", 1, None, dose=8)
    assert [dose([*pulse, oral], day) for day in (1, 2, 4, 5)] == [10, 625, 625, 10]
    keep_orders = S.model_copy(update={"administrations_replace_orders": False})
    assert pred_eq_on([*pulse, oral], d(2), keep_orders).mg_per_day == 635


def test_statuses_and_kinds_not_counted() -> None:
    assert dose([conmed("prednisone", 1, None, dose=10, status="entered-in-error")]) is None
    assert dose([conmed("prednisone", 1, None, dose=10, kind="dispense")]) is None
    assert dose([conmed("prednisone", 1, None, daily=10, freq=None)]) == 10   # mapping's daily dose wins


def test_unknown_dose_is_not_evaluable_with_reason() -> None:
    r = pred_eq_on([conmed("prednisone", 1, None, dose=None), conmed("prednisolone", 1, None, dose=5)], d(10), S)
    assert r.mg_per_day is None and "prednisone" in (r.reason or "") and "no dose that can be read" in (r.reason or "")
    r = pred_eq_on([conmed("prednisone", 1, None, dose=2, unit="{tbl}")], d(10), S)
    assert r.mg_per_day is None and "{tbl}" in (r.reason or "")
    r = pred_eq_on([conmed("prednisone", 1, None, dose=20, freq=None)], d(10), S)
    assert r.mg_per_day is None and "frequency" in (r.reason or "")
    assert dose([conmed("prednisone", 1, None, dose=0.01, unit="g")]) == 10


def test_per_visit_and_series() -> None:
    cms = [conmed("prednisolone", -30, 14, dose=20), conmed("prednisolone", 15, None, dose=5),
           conmed("prednisone", None, None, dose=5), conmed("fludrocortisone", 1, None, dose=0.1,
                                                              drug_class="glucocorticoid")]
    crf = visit_crf({"BL": (-7, {}), "W2": (15, {}), "W4": (29, {})}, cm=cms)
    visits = {v.visit: v for v in derive_pred_eq(crf, S)}
    assert visits["BL"].mg_per_day == 20 and visits["W2"].mg_per_day == 5 and visits["W4"].mg_per_day == 5
    assert visits["W2"].sources == [cms[1].source.reference]
    series = glucocorticoid_series(crf, S)
    assert [(p.study_day, p.mg_per_day) for p in series.points] == [(-7, 20), (15, 5)]
    assert series.undated == [cms[2].source.reference] and series.unrecognised == [cms[3].source.reference]


def test_missing_is_not_zero() -> None:
    none = pred_eq_on([], d(10), S)
    assert none.mg_per_day is None and "missing, not 0" in (none.reason or "")
    # a record that the drug is not taken, covering the date
    not_taken = conmed("prednisone", 1, None, dose=None, status="not-taken")
    r = pred_eq_on([not_taken], d(10), S)
    assert (r.mg_per_day, r.basis, r.sources) == (0, "record", [not_taken.source.reference])
    # stopped before the date: 0 after its end, its dose while it ran
    stopped = conmed("prednisolone", 1, 5, dose=10, status="stopped")
    assert dose([stopped], 3) == 10 and dose([stopped], 6) == 0
    # a topical course that ended (or a topical "not taken") is no evidence of 0 for the systemic dose
    cream = conmed("hydrocortisone", 1, 5, dose=1, route="topical", status="completed")
    assert dose([cream], 3) is None and dose([cream], 6) is None
    assert dose([conmed("prednisone", 1, None, dose=None, route="topical", status="not-taken")], 6) is None
    assert dose([cream, stopped], 6) == 0 and pred_eq_on([cream, stopped], d(6), S).sources == [
        stopped.source.reference]
    # an order that ended is no evidence of 0; only a statement is
    ended_order = conmed("prednisolone", 1, 5, dose=10, status="completed", kind="request")
    assert dose([ended_order], 6) is None
    # a site that declares its medication list complete: 0 citing the records read
    complete = S.model_copy(update={"medication_list_complete": True})
    hcq = conmed("hydroxychloroquine", 1, None, dose=200, drug_class="antimalarial")
    r = pred_eq_on([hcq], d(10), complete)
    assert (r.mg_per_day, r.basis, r.sources) == (0, "medication-list-complete", [hcq.source.reference])


def test_site_overlay_declares_the_medication_list_complete(tmp_path: Path) -> None:
    from pathlib import Path

    from fhir_adapter.study.load import load_study

    site = tmp_path / "site.yaml"
    site.write_text("site: complete-list-site\nmedication_list_complete: true\n")
    root = Path(__file__).resolve().parents[2] / "mappings" / "lcar-aio"
    study = load_study(root, site)
    assert study.rule("glucocorticoids", GlucocorticoidSettings).medication_list_complete


def test_series_changes_on_the_days_the_daily_doses_change() -> None:
    # administrations (one day, and one with an end), a taper, an ongoing order, statements stopped and not taken
    cms = [conmed("methylprednisolone", 3, None, dose=500, kind="administration", route="intravenous", freq=None),
           conmed("methylprednisolone", 5, 6, dose=250, kind="administration", route="intravenous", freq=None),
           conmed("prednisolone", 1, 9, dose=20), conmed("prednisolone", 10, 19, dose=10),
           conmed("prednisone", 24, 27, dose=5, status="stopped"), conmed("prednisone", 21, 22, status="not-taken"),
           conmed("prednisolone", 36, None, dose=2.5, kind="request"), conmed("prednisone", 40, 40, dose=7.5)]
    crf = visit_crf({"SCR": (-2, {}), "W6": (42, {})}, cm=cms)
    series = glucocorticoid_series(crf, S)
    expected: list[tuple[dt.date, float | None]] = []
    day = d(-2)
    last: float | None = -1.0
    while day <= d(42):  # the dose worked out on every single day
        mg = pred_eq_on(cms, day, S).mg_per_day
        if mg != last:
            expected.append((day, mg))
            last = mg
        day += dt.timedelta(days=1)
    assert [(p.date, p.mg_per_day) for p in series.points] == expected
    assert expected[:3] == [(d(-2), None), (d(1), 20), (d(3), 645)]
    assert expected[7:11] == [(d(20), None), (d(21), 0), (d(23), None), (d(24), 5)]  # not taken on 21-22
    assert glucocorticoid_series(crf, S, start=d(20), end=d(19)).points == []


def test_each_counted_record_carries_its_own_prednisolone_equivalent_daily_dose() -> None:
    """``ConMed.pred_eq_daily_mg`` (the CRF's CM domain): daily mg of the drug × the table's factor, for the
    records the dose counts; None for any other record and for an unknown daily dose."""
    cms = [conmed("methylprednisolone", 1, None, dose=16),                 # 16 mg/day of the drug itself
           conmed("prednisone", 1, 60, dose=20, freq=0.5),                   # every other day
           conmed("dexamethasone", 1, 1, dose=10, freq=None, kind="administration"),
           conmed("prednisone", 1, None, daily=7.5, freq=None),
           conmed("hydrocortisone", 1, None, dose=20, route="topical"),     # not systemic
           conmed("prednisone", 1, None, dose=10, kind="dispense"),         # not counted: duplicates its order
           conmed("prednisone", 1, None, dose=10, status="entered-in-error"),
           conmed("prednisone", 1, None, dose=None),                        # unknown dose
           conmed("prednisone", 1, None, dose=2, unit="{tbl}"),             # not a mass
           conmed("tacrolimus", 1, None, dose=2, drug_class="immunosuppressant")]
    out = record_pred_eq(cms, S)
    assert [c.pred_eq_daily_mg for c in out] == [20, 10, 66.7, 7.5, None, None, None, None, None, None]
    assert [c.daily_dose_mg for c in out][:1] == [None] and all(c.pred_eq_daily_mg is None for c in cms)
    # the records' own doses add up to the day's dose
    assert pred_eq_on(cms[:2], d(10), S).mg_per_day == sum(c.pred_eq_daily_mg or 0 for c in out[:2]) == 30


def test_a_dose_on_a_half_is_rounded_half_up_as_every_stored_value() -> None:
    """0.75 mg dexamethasone × 6.67 = 5.0025 mg/day (a standard tablet), 5.0024999999999995 as a float: rounded
    half up to the three decimals (docs/clinical-rules.md#glucocorticoid-daily-dose), 5.003 — the day's dose and
    the record's own, as the CRF's converted values and PGA are rounded (fhir_adapter/numbers.py)."""
    dex = [conmed("dexamethasone", 1, None, dose=0.75)]
    assert dose(dex) == 5.003
    assert record_pred_eq(dex, S)[0].pred_eq_daily_mg == 5.003


def test_no_dose_for_an_unscheduled_visit_which_the_results_leave_out() -> None:
    """An unscheduled visit (UNS<day>, made by a CRP outside every window) is not in results/study.json: no
    prednisolone-equivalent dose is derived, so none is written back for it either."""
    crf = visit_crf({"W4": (29, {}), "UNS40": (40, {"crp": 3.0})}, cm=[conmed("prednisone", 1, None, dose=5)])
    crf = crf.model_copy(update={"visits": [v.model_copy(update={"unscheduled": v.visit.startswith("UNS")})
                                            for v in crf.visits]})
    assert [(v.visit, v.mg_per_day) for v in derive_pred_eq(crf, S)] == [("W4", 5)]
