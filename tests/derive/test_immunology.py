"""Serology, seroconversion, B-cell aplasia and anti-drug antibodies (fhir_adapter/derive/immunology.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fhir_adapter.crf.models import Finding
from fhir_adapter.derive.immunology import AdaStatus, ImmunologySettings, antibody_status, derive_immunology
from tests.efficacy_helpers import rule, visit_crf
from tests.helpers import finding

S = rule("immunology", ImmunologySettings)


def dsdna(day: int, value: float | None = None, **kw: Any) -> Finding:
    return finding("anti_dsdna", day, value, **kw)


def test_shipped_settings() -> None:
    assert S.b_cell_aplasia_below == 1.0 and S.seroconversion["anti_sm"] == ("anti_sm", "anti_sm_presence")
    assert S.default_upper_limits == {"anti_dsdna": 30}


def test_status_of_one_result_in_order() -> None:
    assert antibody_status(dsdna(1, 31, ref_high=30), S) == "positive"
    assert antibody_status(dsdna(1, 30, ref_high=30), S) == "negative"     # at the limit: not above
    assert antibody_status(dsdna(1, 10, comparator="<", ref_high=30), S) == "negative"
    assert antibody_status(dsdna(1, 50, comparator="<", ref_high=30), S) is None   # could be 40
    assert antibody_status(dsdna(1, 1000, comparator=">", ref_high=30), S) == "positive"
    assert antibody_status(dsdna(1, 12, ref_high=30, interpretation=("H",)), S) == "negative"   # range wins
    assert antibody_status(dsdna(1, 12, interpretation=("H",)), S) == "positive"
    assert antibody_status(dsdna(1, 80, interpretation=("N",)), S) == "negative"
    assert antibody_status(finding("anti_sm_presence", 1, value_bool=True), S) == "positive"
    assert antibody_status(dsdna(1, 31), S) == "positive"                  # study default ULN 30
    assert antibody_status(finding("anti_sm", 1, 31.0), S) is None          # no default for anti-Sm


def test_values_and_changes() -> None:
    crf = visit_crf({"BL": (-7, {"c3": 0.5, "c4": 0.05, "igg": 12.0}),
                     "W12": (85, {"c3": 0.95, "c4": 0.2, "igg": 8.4})})
    res = derive_immunology(crf, S)
    w12 = {item: next(r for r in rows if r.visit == "W12") for item, rows in res.values.items()}
    assert w12["c3"].change == 0.45 and w12["c4"].change == 0.15 and w12["igg"].change == -3.6
    assert w12["iga"].value is None and w12["iga"].change is None
    assert set(res.values) == {"c3", "c4", "anti_dsdna", "anti_sm", "igg", "iga", "igm", "cd19"}


def test_seroconversion_first_negative_and_persistence() -> None:
    crf = visit_crf({"SCR": (-28, {"anti_dsdna": dsdna(-28, 300, ref_high=30)}),
                     "BL": (-7, {"anti_dsdna": dsdna(-7, 120, ref_high=30)}),
                     "W4": (29, {"anti_dsdna": dsdna(29, 45, ref_high=30)}),
                     "W12": (85, {"anti_dsdna": dsdna(85, 12, ref_high=30)}),
                     "W24": (169, {"anti_dsdna": dsdna(169, 8, comparator="<", ref_high=30)})})
    s = derive_immunology(crf, S).seroconversion["anti_dsdna"]
    assert s.baseline_status == "positive" and s.baseline_visit == "BL" and s.seroconverted is True
    assert s.first_negative is not None and s.first_negative.visit == "W12" and s.first_negative.study_day == 85
    assert s.persistent is True and s.last_visit == "W24"
    relapse = visit_crf({"BL": (-7, {"anti_dsdna": dsdna(-7, 120, ref_high=30)}),
                         "W12": (85, {"anti_dsdna": dsdna(85, 12, ref_high=30)}),
                         "W52": (365, {"anti_dsdna": dsdna(365, 60, ref_high=30)})})
    s = derive_immunology(relapse, S).seroconversion["anti_dsdna"]
    assert s.seroconverted is True and s.persistent is False


def test_seroconversion_not_applicable_or_not_evaluable() -> None:
    neg = derive_immunology(visit_crf({"BL": (-7, {"anti_dsdna": dsdna(-7, 5, ref_high=30)}),
                                       "W4": (29, {"anti_dsdna": dsdna(29, 5, ref_high=30)})}), S)
    assert neg.seroconversion["anti_dsdna"].seroconverted is None
    assert neg.seroconversion["anti_dsdna"].reason == "negative at baseline"
    nob = derive_immunology(visit_crf({"W4": (29, {"anti_dsdna": dsdna(29, 5, ref_high=30)})}), S)
    assert nob.seroconversion["anti_dsdna"].reason == "no baseline result"
    noafter = derive_immunology(visit_crf({"BL": (-7, {"anti_dsdna": dsdna(-7, 50, ref_high=30)})}), S)
    assert noafter.seroconversion["anti_dsdna"].reason == "no result after Day 1"
    # Day 1 is not "after Day 1": a negative on Day 1 becomes the baseline
    on_day1 = derive_immunology(visit_crf({"BL": (-7, {"anti_dsdna": dsdna(-7, 50, ref_high=30)}),
                                           "D1": (1, {"anti_dsdna": dsdna(1, 5, ref_high=30)})}), S)
    assert on_day1.seroconversion["anti_dsdna"].baseline_visit == "D1"
    stays = derive_immunology(visit_crf({"BL": (-7, {"anti_dsdna": dsdna(-7, 50, ref_high=30)}),
                                         "W4": (29, {"anti_dsdna": dsdna(29, 40, ref_high=30)})}), S)
    assert stays.seroconversion["anti_dsdna"].seroconverted is False


def test_anti_sm_falls_back_to_the_presence_item() -> None:
    crf = visit_crf({"BL": (-7, {"anti_sm_presence": finding("anti_sm_presence", -7, value_bool=True)}),
                     "W12": (85, {"anti_sm": finding("anti_sm", 85, 3.0, ref_high=7.0)})})
    s = derive_immunology(crf, S).seroconversion["anti_sm"]
    assert s.baseline_status == "positive" and s.seroconverted is True and s.first_negative is not None


def test_b_cell_aplasia_and_recovery() -> None:
    crf = visit_crf({"BL": (-7, {"cd19": 150}), "W1": (8, {"cd19": 2}), "W2": (15, {"cd19": 0}),
                     "W4": (29, {"cd19": finding("cd19", 29, 1, comparator="<")}), "W24": (169, {"cd19": 1.0}),
                     "W52": (365, {"cd19": 80})})
    b = derive_immunology(crf, S).b_cell_aplasia
    assert b.baseline_cd19 == 150 and b.aplasia is True
    assert b.onset is not None and b.onset.visit == "W2" and b.onset.study_day == 15      # 2 is not < 1
    assert b.recovery is True and b.recovered_at is not None and b.recovered_at.visit == "W24"   # 1.0 >= 1
    assert b.recovered_at.study_day == 169


def test_b_cell_aplasia_edges() -> None:
    assert derive_immunology(visit_crf({"BL": (-7, {"cd19": 150})}), S).b_cell_aplasia.aplasia is None
    never = derive_immunology(visit_crf({"W4": (29, {"cd19": 5})}), S).b_cell_aplasia
    assert never.aplasia is False and never.recovery is None
    last = derive_immunology(visit_crf({"W4": (29, {"cd19": 0})}), S).b_cell_aplasia
    assert last.aplasia is True and last.recovery is None and "after the onset" in (last.reason or "")
    ongoing = derive_immunology(visit_crf({"W4": (29, {"cd19": 0}), "W12": (85, {"cd19": 0.5})}), S).b_cell_aplasia
    assert ongoing.recovery is False
    unsure = derive_immunology(visit_crf({"W4": (29, {"cd19": finding("cd19", 29, 5, comparator="<")})}), S)
    assert unsure.b_cell_aplasia.aplasia is False   # "<5" is not certainly below 1


def test_ada_status() -> None:
    def ada(*results: tuple[int, bool]) -> AdaStatus:
        fs = [finding("anti_car_antibody", day, domain="IS", value_bool=v) for day, v in results]
        return derive_immunology(visit_crf({"BL": (-7, {})}, findings=fs), S).ada

    assert ada().status is None
    assert ada((-7, True)).status is None                 # before Day 1 does not count
    a = ada((1, True), (29, False), (85, True), (169, True))
    assert a.status == "positive" and a.first_positive_day == 85 and a.n_tested == 3   # Day 1 is not after Day 1
    assert ada((29, False), (85, False)).status == "negative"


def test_of_two_assays_the_baseline_is_the_last_result_by_time() -> None:
    """Anti-Sm measured by two assays (anti_sm, anti_sm_presence): the baseline is the last result by date, then
    time (docs/clinical-rules.md#baseline), also when the two are on one date — not the order of their ids."""
    def at(item: str, day: int, hour: int, **kw: Any) -> Finding:
        f = finding(item, day, **kw)
        assert f.date is not None
        return f.model_copy(update={"datetime": dt.datetime.combine(f.date, dt.time(hour), dt.UTC)})

    # a result in no visit timed after the baseline visit's value of the other assay, on the same date
    neg_later = at("anti_sm", -7, 14, value=3.0, ref_high=7.0)
    crf = visit_crf({"BL": (-7, {"anti_sm_presence": at("anti_sm_presence", -7, 8, value_bool=True)}),
                     "W12": (85, {"anti_sm": finding("anti_sm", 85, 3.0, ref_high=7.0)})}, findings=[neg_later])
    s = derive_immunology(crf, S).seroconversion["anti_sm"]
    assert (s.baseline_status, s.baseline_source, s.reason) == (
        "negative", neg_later.source.reference, "negative at baseline")
    # timed before it: the visit's value stays the baseline
    neg_earlier = at("anti_sm", -7, 6, value=3.0, ref_high=7.0)
    crf = visit_crf({"BL": (-7, {"anti_sm_presence": at("anti_sm_presence", -7, 8, value_bool=True)}),
                     "W12": (85, {"anti_sm": finding("anti_sm", 85, 3.0, ref_high=7.0)})}, findings=[neg_earlier])
    s = derive_immunology(crf, S).seroconversion["anti_sm"]
    assert (s.baseline_status, s.baseline_visit, s.seroconverted) == ("positive", "BL", True)
    # two results in no visit, one per assay, on one date: the later-timed one, whatever the ids
    first, second = at("anti_sm", -3, 15, value=20.0, ref_high=7.0), at("anti_sm_presence", -3, 9, value_bool=False)
    assert first.source.id < second.source.id  # the id order alone would pick the 09:00 negative
    crf = visit_crf({"W12": (85, {"anti_sm": finding("anti_sm", 85, 3.0, ref_high=7.0)})}, findings=[first, second])
    s = derive_immunology(crf, S).seroconversion["anti_sm"]
    assert (s.baseline_status, s.baseline_source, s.seroconverted) == ("positive", first.source.reference, True)
