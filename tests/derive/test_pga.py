"""PGA per visit (docs/clinical-rules.md#pga) and the shared baseline rule (fhir_adapter/derive/baseline.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.derive.baseline import changes, item_by_visit
from fhir_adapter.derive.pga import PgaSettings, PgaVisit, derive_pga
from fhir_adapter.numbers import round_half_up
from tests.efficacy_helpers import rule, visit_crf
from tests.helpers import finding

S = rule("pga", PgaSettings)


def by_visit(crf: SubjectCRF) -> dict[str, PgaVisit]:
    return {p.visit: p for p in derive_pga(crf, S)}


def test_shipped_settings() -> None:
    assert S.item == "pga" and S.decimals == 1


@pytest.mark.parametrize(("mm", "stored"), [(33.3, 1.0), (34, 1.0), (35, 1.1), (36.7, 1.1), (16.7, 0.5), (100, 3.0)])
def test_mm_converted_by_mapping_then_rounded_half_up(mm: float, stored: float) -> None:
    # the mapping stores mm x 0.03; 35 mm = 1.0499999999999998 in binary and must still round up to 1.1
    p = by_visit(visit_crf({"W4": (29, {"pga": mm * 0.03})}))["W4"]
    assert p.pga == stored


def test_round_half_up_on_the_decimal_value() -> None:
    assert round_half_up(0.25, 1) == 0.3 and round(0.25, 1) == 0.2   # banker's rounding would give 0.2
    assert round_half_up(1.05, 1) == 1.1 and round_half_up(1.04, 1) == 1.0
    assert round_half_up(2.449999, 1) == 2.4


def test_baseline_is_last_pga_on_or_before_day1_and_change_after_it() -> None:
    p = by_visit(visit_crf({"SCR": (-28, {"pga": 2.0}), "BL": (-7, {"pga": 1.5}), "D1": (1, {"pga": 1.4}),
                            "W4": (29, {"pga": 0.5}), "W12": (85, {"pga": 1.6})}))
    # Day 1 itself is on or before Day 1: D1 is the baseline, not BL
    assert [v for v in p if p[v].baseline] == ["D1"]
    assert p["SCR"].change is None and p["BL"].change is None
    assert p["D1"].change == 0
    assert p["W4"].change == -0.9     # 0.5 - 1.4, no binary noise
    assert p["W12"].change == 0.2


def test_no_baseline_no_change() -> None:
    p = by_visit(visit_crf({"W4": (29, {"pga": 0.5}), "W12": (85, {"pga": 0.4})}))
    assert p["W4"].change is None and p["W12"].change is None and not any(v.baseline for v in p.values())


def test_missing_pga_at_a_visit_is_none_and_baseline_skips_it() -> None:
    p = by_visit(visit_crf({"BL": (-7, {"pga": 1.5}), "D1": (1, {"c3": 0.9}), "W4": (29, {})}))
    assert p["D1"].pga is None and p["BL"].baseline and p["W4"].pga is None and p["W4"].change is None


def test_unknown_day1_gives_no_baseline() -> None:
    p = by_visit(visit_crf({"BL": (-7, {"pga": 1.5}), "W4": (29, {"pga": 1.0})}, day1=None))
    assert not any(v.baseline for v in p.values()) and p["W4"].change is None


def test_changes_ties_pick_the_first_and_dates_after_baseline_only() -> None:
    day = dt.date(2024, 2, 1)
    base, diffs = changes([day, day, day + dt.timedelta(1)], [3, 5, 4], day)
    assert base == 0 and diffs == [0, None, 1]  # same-date second entry is not "after" the baseline


def test_censored_values_have_no_change() -> None:
    crf = visit_crf({"BL": (-7, {"anti_dsdna": 200}), "W4": (29, {"anti_dsdna": finding("anti_dsdna", 29, 10,
                                                                                           comparator="<")}),
                     "W12": (85, {"anti_dsdna": 40})})
    rows = {r.visit: r for r in item_by_visit(crf, "anti_dsdna")}
    assert rows["W4"].value == 10 and rows["W4"].comparator == "<" and rows["W4"].change is None
    assert rows["W12"].change == -160
    censored_base = visit_crf({"BL": (-7, {"c3": finding("c3", -7, 0.2, comparator="<")}), "W4": (29, {"c3": 0.9})})
    rows = {r.visit: r for r in item_by_visit(censored_base, "c3")}
    assert rows["BL"].baseline and rows["W4"].change is None
