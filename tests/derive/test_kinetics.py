"""Cellular kinetics NCA: the engine against Phoenix WinNonlin on R ``Theoph`` and the CAR-T worked example.

Theoph data: ``tests/derive/data/Theoph.csv`` is R's ``datasets::Theoph`` as shipped by
vincentarelbundock/Rdatasets ``csv/datasets/Theoph.csv`` (commit e38552ac3cb40a532941b09d7332b03d19409919).
Reference values: WinNonlin AUClast (linear and linear-up/log-down) from Han S., Transl Clin Pharmacol
2018;26:10–17: the reference values of that validation (asancpt/NonCompart-tests CSVs).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import zoneinfo
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.crf.models import Finding, SourceRef
from fhir_adapter.derive.kinetics import KineticsSeries, KineticsSettings, auc, derive_kinetics, nca
from tests.helpers import DAY1, crf, d, finding

DATA = Path(__file__).parent / "data" / "Theoph.csv"

# subject: (Cmax, Tmax, Clast, Tlast, AUClast linear, AUClast lin-up/log-down) — Phoenix WinNonlin values
WINNONLIN = {
    1: (10.50, 1.12, 3.28, 24.37, "148.92305", "147.2347485"),
    2: (8.33, 1.92, 0.90, 24.30, "91.5268", "88.7312755"),
    3: (8.20, 1.02, 1.05, 24.17, "99.2865", "95.8781978"),
    4: (8.60, 1.07, 1.15, 24.65, "106.7963", "102.6336232"),
    5: (11.40, 1.00, 1.57, 24.35, "121.2944", "118.1793538"),
    6: (6.44, 1.15, 0.92, 23.85, "73.77555", "71.6970150"),
    7: (7.09, 3.48, 1.15, 24.22, "90.7534", "87.9692274"),
    8: (7.56, 2.02, 1.25, 24.12, "88.55995", "86.8065635"),
    9: (9.03, 0.63, 1.12, 24.43, "86.32615", "83.9374360"),
    10: (10.21, 3.55, 2.42, 23.70, "138.3681", "135.5760701"),
    11: (8.00, 0.98, 0.86, 24.08, "80.0936", "77.8934723"),
    12: (9.75, 3.52, 1.17, 24.15, "119.9775", "115.2202082"),
}


def theoph() -> dict[int, tuple[list[float], list[float]]]:
    out: dict[int, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    with DATA.open(newline="") as fh:
        for row in csv.DictReader(fh):
            t, c = out[int(row["Subject"])]
            t.append(float(row["Time"]))
            c.append(float(row["conc"]))
    return dict(out)


def _decimals(ref: str) -> int:
    return len(ref.split(".")[1])


@pytest.mark.parametrize("subject", sorted(WINNONLIN))
def test_theoph_matches_winnonlin_to_the_published_precision(subject: int) -> None:
    times, concs = theoph()[subject]
    cmax, tmax, clast, tlast, lin, log = WINNONLIN[subject]
    r_lin = nca(times, concs, "linear")
    r_log = nca(times, concs, "lin-up/log-down")
    assert (r_lin.cmax, r_lin.tmax, r_lin.clast, r_lin.tlast) == (cmax, tmax, clast, tlast)
    assert r_lin.auclast is not None and r_log.auclast is not None
    assert round(r_lin.auclast, _decimals(lin)) == float(lin)
    assert round(r_log.auclast, _decimals(log)) == float(log)


def test_theoph_has_12_subjects_of_11_samples() -> None:
    data = theoph()
    assert sorted(data) == list(range(1, 13)) and all(len(t) == 11 for t, _ in data.values())


# --- a constructed CAR-T-like example (copies/ug, LLOQ 20) -----------------------------------------------
T = [0, 1, 4, 7, 10, 14, 21, 28, 56, 90]
C = [0, 50, 2000, 15000, 30000, 12000, 3000, 800, 100, 0]


def _auc_1dp(times: Sequence[float], concs: Sequence[float]) -> float:
    """The log-down AUC rounded to 0.1 (there is one: these profiles have positive concentrations)."""
    value = auc(times, concs, "lin-up/log-down")
    assert value is not None
    return round(value, 1)


def test_worked_cart_example_engine() -> None:
    assert _auc_1dp(T[:8], C[:8]) == 231773.7
    assert auc(T[:8], C[:8], "linear") == pytest.approx(245900, abs=1e-9)
    assert _auc_1dp(T[:9], C[:9]) == 241199.3
    assert auc(T[:9], C[:9], "linear") == pytest.approx(258500, abs=1e-9)
    # AUCall: trailing BLQ as 0, linear segment 56 -> 90
    assert _auc_1dp(T, C) == 242899.3


def _pc(day_after: int, value: float, *, comparator: str | None = None, item: str = "car_transgene") -> Finding:
    return finding(item, day_after + 1, value, domain="PC", comparator=comparator, unit="{copies}/ug{DNA}")


ITEMS: dict[str, tuple[float | None, str | None]] = {"car_transgene": (20.0, "{copies}/ug{DNA}"),
                                                     "car_cells": (None, "/uL")}


def _series(findings: list[Finding], **settings: Any) -> KineticsSeries | None:
    k = derive_kinetics(crf(findings, {}), KineticsSettings(**settings), ITEMS)
    return k.primary


def test_worked_cart_example_from_the_crf_with_blq() -> None:
    values = [(0, 20, "<"), (1, 50, None), (4, 2000, None), (7, 15000, None), (10, 30000, None),
              (14, 12000, None), (21, 3000, None), (28, 800, None), (56, 100, None), (90, 12, None)]
    s = _series([_pc(t, v, comparator=c) for t, v, c in values])
    assert s is not None
    assert (s.cmax, s.tmax_day, s.clast, s.tlast_day, s.persistence_day) == (30000, 10, 100, 56, 56)
    assert s.auc0_28 is not None and round(s.auc0_28, 1) == 231773.7
    assert s.excluded_blq == [90]  # 12 < LLOQ 20 after the first quantifiable value: excluded
    lin = _series([_pc(t, v, comparator=c) for t, v, c in values], auc_method="linear")
    assert lin is not None and lin.auc0_28 == pytest.approx(245900)


def test_day28_interpolated_log_when_falling_linear_when_rising() -> None:
    falling = _series([_pc(0, 0, comparator="<"), _pc(10, 1000), _pc(21, 400), _pc(35, 100)])
    assert falling is not None and falling.auc0_28 is not None
    # C(28) on the log line between (21, 400) and (35, 100) = 200
    expected = 10 * 1000 / 2 + 11 * 600 / math.log(2.5) + 7 * 200 / math.log(2)
    assert falling.auc0_28 == pytest.approx(expected, rel=1e-12)
    rising = _series([_pc(0, 0, comparator="<"), _pc(21, 100), _pc(35, 1500)])
    assert rising is not None and rising.auc0_28 == pytest.approx(21 * 100 / 2 + 7 * (100 + 800) / 2)


def test_auc_not_evaluable_when_day28_is_not_bracketed() -> None:
    # the day-35 sample is BLQ: excluded after the first quantifiable value, so nothing brackets day 28
    s = _series([_pc(0, 0, comparator="<"), _pc(7, 500), _pc(21, 50), _pc(35, 5)])
    assert s is not None and s.auc0_28 is None and s.auc_reason is not None and "day 28" in s.auc_reason
    assert s.tlast_day == 21 and s.persistence_day == 21 and s.excluded_blq == [35]


def test_blq_before_first_quantifiable_is_zero_and_missing_day0_assumed_zero() -> None:
    s = _series([_pc(1, 5), _pc(4, 100), _pc(28, 40)])  # 5 < LLOQ 20 before the first: 0
    assert s is not None
    assert s.times == [0, 1, 4, 28] and s.levels == [0, 0, 100, 40]
    assert s.auc0_28 == pytest.approx(3 * 100 / 2 + 24 * 60 / math.log(2.5))
    assert any("time 0" in n for n in s.notes)


def test_tmax_first_of_tied_maxima_and_value_at_lloq_is_quantifiable() -> None:
    s = _series([_pc(0, 0, comparator="<"), _pc(7, 20), _pc(10, 900), _pc(14, 900), _pc(28, 20)])
    assert s is not None and s.tmax_day == 10 and s.clast == 20 and s.tlast_day == 28


def test_pre_infusion_samples_not_used_and_no_day1_gives_none() -> None:
    early = _pc(-5, 300)
    s = _series([early, _pc(0, 0, comparator="<"), _pc(7, 100)])
    assert s is not None and s.times == [0, 7]
    # a quantifiable level before the product was given is impossible: named in the notes for the data manager
    assert [n for n in s.notes if "before the infusion" in n] == [
        f"quantifiable level 300 before the infusion ({early.date}, {early.source.reference}): not used; no CAR-T "
        "cells can be in the blood before they are given — check the sample's subject, date and assay"]
    # a date-only sample of Day 1 is not known to be before the infusion (at 10:00), nor after it: not used, and
    # said so (not as a level before the infusion)
    infused = dt.datetime.combine(DAY1, dt.time(10), tzinfo=dt.UTC)
    day1 = _pc(0, 900)
    day1_only = derive_kinetics(crf([day1, _pc(7, 100)], {}, infusion_time=infused), KineticsSettings(),
                                ITEMS).primary
    assert day1_only is not None and not [n for n in day1_only.notes if "before the infusion" in n]
    assert f"level 900 on the infusion's day with a date only ({day1.date}, {day1.source.reference}): not known " \
           "to be after the infusion, not used — record the sample's time" in day1_only.notes
    # below the LLOQ before the infusion is the expected baseline: nothing to say
    blq = _series([_pc(-5, 12), _pc(-3, 20, comparator="<"), _pc(7, 100)])
    assert blq is not None and not [n for n in blq.notes if "before the infusion" in n]
    k = derive_kinetics(crf([_pc(7, 100)], {}).model_copy(update={"day1": None}), KineticsSettings(), ITEMS)
    assert k.primary is None


def test_all_blq_has_no_parameters() -> None:
    s = _series([_pc(0, 20, comparator="<"), _pc(7, 20, comparator="<")])
    assert s is not None and s.cmax is None and s.auc0_28 is None and s.auc_reason == "no quantifiable sample"


def test_secondary_series_uses_its_own_item() -> None:
    f = [finding("car_cells", 1, 0.0, domain="PC", comparator="<", unit="/uL"),
         finding("car_cells", 11, 45.0, domain="PC", unit="/uL"),
         finding("car_cells", 29, 3.0, domain="PC", unit="/uL")]
    k = derive_kinetics(crf(f, {}), KineticsSettings(), ITEMS)
    assert k.primary is None and k.secondary is not None
    assert k.secondary.cmax == 45 and k.secondary.tmax_day == 10 and k.secondary.unit == "/uL"
    assert d(1) == DAY1


def _timed(when: dt.datetime, value: float) -> Finding:
    return Finding(domain="PC", item="car_transgene", value=value, unit="{copies}/ug{DNA}", datetime=when,
                   date=when.date(), source=SourceRef(resource_type="Observation", id=f"t{when:%d%H}"))


def test_actual_sampling_times_in_fractional_days_from_the_infusion_time() -> None:
    infused = dt.datetime.combine(DAY1, dt.time(10, 0), tzinfo=dt.UTC)
    samples = [_timed(infused - dt.timedelta(hours=2), 0.0),        # pre-dose on Day 1: not used
               _timed(infused + dt.timedelta(hours=6), 900.0),      # 0.25
               _timed(infused + dt.timedelta(hours=30), 4000.0),    # 1.25 (day 2, two samples that day)
               _timed(infused + dt.timedelta(hours=40), 2500.0),    # 1.666667
               _timed(infused + dt.timedelta(days=3), 1000.0)]      # 3 (day 4)
    k = derive_kinetics(crf(samples, {}, infusion_time=infused), KineticsSettings(), ITEMS).primary
    assert k is not None and k.time0 == infused
    assert k.times == [0.0, 0.25, 1.25, 1.666667, 3.0]                # level 0 at time 0, every sample kept
    assert (k.cmax, k.tmax_day, k.tmax_date) == (4000.0, 1.25, DAY1 + dt.timedelta(days=1))
    # without an infusion time, time 0 is Day 1 00:00: the 16:00 sample of Day 1 is at 0.666667
    k = derive_kinetics(crf(samples, {}), KineticsSettings(), ITEMS).primary
    assert k is not None and k.times[:3] == [0.0, 0.333333, 0.666667] and k.tmax_day == 1.666667


def test_times_are_elapsed_time_across_a_daylight_saving_change() -> None:
    """Time = (sample date-time − time 0) in fractional days (docs/clinical-rules.md#kinetics): elapsed time,
    not the wall clock. Europe/Berlin leaves summer time on 2024-10-27: from 2024-08-21 11:50 (+02:00) to
    2025-01-29 10:50 (+01:00) is exactly 161 days. Python subtracts two times of one zone object on the wall
    clock (160.958333); a reused CRF's fixed offsets gave 161: one rule whichever way the CRF was made."""
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    infused = dt.datetime(2024, 8, 21, 11, 50, tzinfo=berlin)
    late = dt.datetime(2025, 1, 29, 10, 50, tzinfo=berlin)
    subject = crf([_timed(infused + dt.timedelta(days=1), 500.0), _timed(late, 20.0)], {},
                  day1=infused.date(), infusion_time=infused)
    k = derive_kinetics(subject, KineticsSettings(), ITEMS, site_tz="Europe/Berlin").primary
    assert k is not None and k.tlast_day == 161.0
    # without an infusion time, time 0 is Day 1 00:00 in the site time zone (+02:00 that day)
    k = derive_kinetics(subject.model_copy(update={"infusion_time": None}), KineticsSettings(), ITEMS,
                        site_tz="Europe/Berlin").primary
    assert k is not None and k.tlast_day == round(161 + (11 * 60 + 50) / 1440, 6)
