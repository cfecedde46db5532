"""TEAE flag (docs/clinical-rules.md#teae, admiral derive_var_trtemfl), per-subject counts, per-arm summary."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
from typing import Any

import pytest

from fhir_adapter.crf.models import AdverseEvent, SourceRef, SubjectCRF
from fhir_adapter.derive.safety import (
    SafetySettings,
    TeaeFlag,
    derive_safety,
    flag_teae,
    summarize_teae,
    teae_flag,
)
from fhir_adapter.endpoints import safety as safety_endpoint
from fhir_adapter.endpoints.registry import StudyInput
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import partial_period
from tests.helpers import crf, d

S = SafetySettings()
_ids = itertools.count(1)


def ae(term: str = "Headache", onset: int | None = 2, end: int | None = None, **kw: Any) -> AdverseEvent:
    return AdverseEvent(term=term, onset_date=d(onset) if onset is not None else None,
                        resolution_date=d(end) if end is not None else None,
                        source=SourceRef(resource_type="AdverseEvent", id=f"ae{next(_ids)}"), **kw)


def subject(aes: list[AdverseEvent], ld_start_day: int | None = -5, **kw: Any) -> SubjectCRF:
    return crf([], {}, ld_start_day=ld_start_day, ae=aes, **kw)


def flag(a: AdverseEvent, ld: int | None = -5, s: SafetySettings = S) -> TeaeFlag:
    return teae_flag(a, d(1), d(ld) if ld is not None else None, s)


@pytest.mark.parametrize(("onset", "teae", "pre", "case"), [
    (1, True, False, "onset"),           # the infusion day is Day 1
    (30, True, False, "onset"),
    (-1, False, True, "pre-infusion"),   # the day before Day 1 (no Day 0)
    (-5, False, True, "pre-infusion"),   # lymphodepletion start day
    (-6, False, False, "before-treatment"),
])
def test_teae_by_onset_day(onset: int, teae: bool, pre: bool, case: str) -> None:
    f = flag(ae(onset=onset))
    assert (f.teae, f.pre_infusion, f.case) == (teae, pre, case)


def test_end_of_follow_up() -> None:
    s = SafetySettings(last_day=365)
    assert flag(ae(onset=365), s=s).teae is True
    assert flag(ae(onset=366), s=s).case == "after-follow-up"


def test_worsening_of_a_pre_existing_event() -> None:
    assert flag(ae(onset=-10, grade=3, baseline_grade=1)).case == "worsened"
    assert flag(ae(onset=-10, grade=1, baseline_grade=1)).case == "before-treatment"   # not worse
    assert flag(ae(onset=-3, grade=2, baseline_grade=2)).case == "pre-infusion"
    assert flag(ae(onset=-10, end=-2, grade=3, baseline_grade=1)).teae is False       # over before Day 1
    assert flag(ae(onset=-10, grade=None, baseline_grade=1)).teae is False            # grade unknown


def test_missing_and_partial_onset() -> None:
    assert flag(ae(onset=None)).case == "onset-unknown" and flag(ae(onset=None)).teae is True
    assert flag(ae(onset=None, end=-1)).case == "ended-before-day1"
    assert flag(ae(onset=None, end=1)).teae is True                      # ended on Day 1: may be a TEAE
    # Day 1 = 2024-02-01: "2024-02" contains Day 1 → TEAE (conservative), "2024-01" lies before it
    assert flag(ae(onset=None, onset_partial="2024-02")).case == "onset-unknown"
    f = flag(ae(onset=None, onset_partial="2024-01"))
    assert (f.teae, f.case, f.pre_infusion) == (False, "partial-before-day1", False)  # may precede LD start
    f = flag(ae(onset=None, onset_partial="2024-01"), ld=-40)
    assert f.pre_infusion is True                                        # LD started 2023-12-23
    assert flag(ae(onset=None, onset_partial="2023")).teae is False
    assert flag(ae(onset=None, onset_partial="2026"), s=SafetySettings(last_day=365)).teae is False
    assert flag(ae(onset=None), s=SafetySettings(missing_onset_is_teae=False)).teae is False


def test_not_infused_subject_has_no_teae_but_pre_infusion_aes() -> None:
    f = teae_flag(ae(onset=-2), None, d(-5), S)
    assert (f.teae, f.pre_infusion, f.case) == (False, True, "not-infused")


def test_partial_period() -> None:
    assert partial_period("2024") == (d(-31), d(335))   # 2024-01-01 .. 2024-12-31 (Day 1 = 2024-02-01)
    february = partial_period("2024-02")
    assert february is not None and february[1].day == 29  # leap year
    assert partial_period(None) is None and partial_period("x") is None


def test_an_onset_on_day1_before_the_infusions_time_is_pre_infusion() -> None:
    """decisions: events from lymphodepletion start *to the infusion* are pre-infusion AEs. Infusion at 10:00 on
    Day 1: a headache from 08:00 is pre-infusion, one from 12:00 (or of Day 1 with no time) a TEAE."""
    infused = dt.datetime.combine(d(1), dt.time(10), tzinfo=dt.UTC)

    def at(hour: int) -> AdverseEvent:
        return ae(onset=1, onset_datetime=dt.datetime.combine(d(1), dt.time(hour), tzinfo=dt.UTC))

    c = subject([at(8), at(12), ae(onset=1)], infusion_time=infused)
    out = flag_teae(c, S)
    assert [(a.teae, a.pre_infusion) for a in out] == [(False, True), (True, False), (True, False)]
    assert teae_flag(at(8), d(1), None, S, infused).case == "before-treatment"  # no lymphodepletion recorded
    summary = derive_safety(c, S)
    assert [x.source for x in summary.pre_infusion_aes] == [c.ae[0].source.reference]


def test_flag_teae_sets_the_crf_flags() -> None:
    c = subject([ae(onset=3), ae(onset=-2), ae(onset=None)])
    out = flag_teae(c, S)
    assert [a.teae for a in out] == [True, False, True]
    assert [a.pre_infusion for a in out] == [False, True, False]
    assert all(a.teae is None for a in c.ae)  # the input is not changed


def test_subject_counts_and_crs_icans() -> None:
    c = subject([
        ae("Cytokine release syndrome", onset=2, end=6, grade=2, crs=True, related=True),
        ae("Cytokine release syndrome", onset=9, end=10, grade=3, crs=True, related=True),
        ae("ICANS", onset=5, end=6, grade=1, icans=True, related=True),
        ae("Pneumonia", onset=20, end=35, grade=3, serious=True, related=False),
        ae("Nausea", onset=3, grade=None),
        ae("Febrile neutropenia", onset=-2, grade=3),  # pre-infusion
        ae("Arthralgia", onset=None, onset_partial="2024-02", grade=1),
    ])
    r = derive_safety(c, S)
    assert (r.teae_count, r.serious_teae_count, r.related_teae_count) == (6, 1, 3)
    assert r.max_teae_grade == 3 and r.teae_grade_unknown == 1
    assert (r.crs.present, r.crs.episodes, r.crs.max_grade, r.crs.onset_day, r.crs.duration_days) == (
        True, 2, 3, 2, 4)
    assert (r.icans.max_grade, r.icans.onset_day, r.icans.duration_days) == (1, 5, 1)
    assert [x.term for x in r.pre_infusion_aes] == ["Febrile neutropenia"]
    assert [x.term for x in r.onset_unknown_aes] == ["Arthralgia"]


def test_unresolved_crs_has_no_duration_and_no_teae_means_none() -> None:
    r = derive_safety(subject([ae("CRS", onset=2, grade=2, crs=True)]), S)
    assert r.crs.duration_days is None and r.crs.onset_day == 2
    empty = derive_safety(subject([ae(onset=-3, grade=2)]), S)
    assert empty.teae_count == 0 and empty.max_teae_grade is None and not empty.crs.present


def test_summary_by_arm_grade_term_and_overall() -> None:
    a = derive_safety(subject([ae("Pyrexia", codes=("meddra|10037660",), grade=1),
                               ae("Fever", codes=("meddra|10037660",), grade=2),
                               ae("CRS", grade=2, crs=True, related=True)]), S)
    b = derive_safety(subject([ae("Headache", grade=None)]), S)
    c = derive_safety(subject([ae("Headache", grade=4, serious=True), ae("ICANS", grade=3, icans=True)]), S)
    e = derive_safety(subject([ae(onset=-2)]), S)  # only a pre-infusion AE
    not_infused = derive_safety(subject([ae(onset=-2)]).model_copy(update={"day1": None}), S)
    summary: dict[str, Any] = summarize_teae([("DL1", True, a), ("DL1", True, b), ("DL2", True, c), ("DL2", True, e),
                              ("DL2", False, not_infused)], ["DL1", "DL2", "DL3"])
    dl1, dl2 = summary["by_arm"]
    assert dl1["arm"] == "DL1" and dl1["n_subjects"] == 2 and dl1["any_teae"] == 2
    assert dl1["by_max_grade"] == {"1": 0, "2": 1, "3": 0, "4": 0, "5": 0, "unknown": 1}
    # coded terms count by code: Pyrexia and Fever are one term with 2 events in 1 subject
    pyrexia = next(t for t in dl1["by_term"] if t["code"] == "meddra|10037660")
    assert (pyrexia["term"], pyrexia["subjects"], pyrexia["events"]) == ("Pyrexia", 1, 2)
    grades = {"1": 0, "2": 1, "3": 0, "4": 0, "5": 0, "unknown": 0}
    assert dl1["crs"] == {"subjects": 1, "by_max_grade": grades,
                          "onset_day": {"n": 1, "median": 2, "min": 2, "max": 2},
                          "duration_days": {"n": 0, "median": None, "min": None, "max": None}}
    assert dl1["related"] == 1 and dl1["serious"] == 0
    assert dl2["n_subjects"] == 2 and dl2["any_teae"] == 1 and dl2["serious"] == 1
    assert dl2["icans"]["subjects"] == 1 and dl2["by_max_grade"]["4"] == 1
    overall = summary["overall"]
    assert overall["n_subjects"] == 4 and overall["any_teae"] == 3
    headache = next(t for t in overall["by_term"] if t["term"] == "Headache")
    assert headache["subjects"] == 2
    assert summary["pre_infusion_aes"] == {"subjects": 2, "events": 2}


def test_crs_onset_and_duration_per_dose_level_are_median_and_range() -> None:
    first = derive_safety(subject([ae("CRS", onset=2, end=5, grade=1, crs=True)]), S)
    second = derive_safety(subject([ae("CRS", onset=4, end=11, grade=2, crs=True)]), S)
    third = derive_safety(subject([ae("CRS", onset=9, grade=3, crs=True)]), S)  # unresolved: no duration
    summary: dict[str, Any] = summarize_teae([("DL1", True, x) for x in (first, second, third)], ["DL1"])
    crs = summary["by_arm"][0]["crs"]
    assert crs["onset_day"] == {"n": 3, "median": 4, "min": 2, "max": 9}
    assert crs["duration_days"] == {"n": 2, "median": 5, "min": 3, "max": 7}


def test_the_safety_population_names_the_study_s_product(study: Study) -> None:
    """teae_summary.population names the product of study.yaml (product_name), not LCAR-AIO: a second study's
    safety population is its own product's."""
    other = dataclasses.replace(study, info=study.info.model_copy(update={"product_name": "NX-19"}))
    keys = safety_endpoint.study_keys(StudyInput(study=other, settings=other.rule("safety", SafetySettings),
                                                 rows=[]))
    assert str(keys["teae_summary"]["population"]).startswith("subjects infused with NX-19 (safety population)")
    assert "LCAR" not in json.dumps(keys)
