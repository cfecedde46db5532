"""DLT evaluation with the study's rules (mappings/lcar-aio/dlt.yaml, docs/clinical-rules.md#dlt-rules)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_adapter.crf.models import AdverseEvent, SourceRef, SubjectCRF
from fhir_adapter.derive.dlt import DltResult, DltSettings, derive_dlt
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import parse_fhir_date
from tests.helpers import crf, d, finding

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def rules(study: Study) -> DltSettings:
    return study.rule("dlt", DltSettings)


def ae(term: str, onset: int | None, end: int | None, grade: int | None, **kw: Any) -> AdverseEvent:
    return AdverseEvent(term=term, grade=grade, onset_date=d(onset) if onset is not None else None,
                        resolution_date=d(end) if end is not None else None,
                        source=SourceRef(resource_type="AdverseEvent", id=f"ae{next(_ids)}"), **kw)


def evaluate(rules: DltSettings, *aes: AdverseEvent, last_day: int = 60) -> DltResult:
    """A subject followed up to ``last_day`` (a lab result weekly from day 8, and on that day) with these AEs."""
    days = sorted({x for x in (8, 15, 22, 29) if x < last_day} | {last_day})
    return derive_dlt(crf([finding("crp", x, 1.0) for x in days], {}, ae=list(aes)), rules, "UTC")


def crs(onset: int, end: int | None, grade: int | None, **kw: Any) -> AdverseEvent:
    return ae("Cytokine release syndrome", onset, end, grade, crs=True, **kw)


def rule_ids(r: DltResult) -> list[str]:
    return [e.rule for e in r.dlt_events]


def test_a_crs_on_day1_before_the_infusions_time_is_no_dlt(rules: DltSettings) -> None:
    """A grade-4 CRS from 08:00 to 09:00 on Day 1, the cells given at 10:00: not a reaction to them (outside the
    DLT window, which starts with the infusion); the same CRS at 11:00 is a DLT."""
    infused = dt.datetime.combine(d(1), dt.time(10), tzinfo=dt.UTC)

    def at(hour: int) -> AdverseEvent:
        return crs(1, 1, 4, onset_datetime=dt.datetime.combine(d(1), dt.time(hour), tzinfo=dt.UTC))

    for hour, dlt in ((8, False), (11, True)):
        subject = crf([finding("crp", x, 1.0) for x in (8, 15, 22, 29, 60)], {}, ae=[at(hour)],
                      infusion_time=infused)
        assert derive_dlt(subject, rules, "UTC").dlt is dlt, hour


def test_grade_4_crs_or_icans_is_a_dlt(rules: DltSettings) -> None:
    r = evaluate(rules, crs(3, 4, 4))
    assert r.dlt is True and rule_ids(r) == ["crs-icans-grade-4"]
    assert r.dlt_events[0].source.startswith("AdverseEvent/")
    assert r.dlt_events[0].term == "Cytokine release syndrome"
    r = evaluate(rules, ae("ICANS", 6, 7, 4, icans=True))
    assert rule_ids(r) == ["crs-icans-grade-4"]


@pytest.mark.parametrize(("end", "dlt"), [(3, False), (4, False), (5, None), (6, True)])
def test_grade_3_crs_72_hours_from_dates_only(rules: DltSettings, end: int, dlt: bool | None) -> None:
    # onset day 2, dates only (any time of each day): to day 4 at most 72 h; to day 5 between 48 and 96 h,
    # ambiguous, so not evaluable; to day 6 more than 72 h whatever the times
    r = evaluate(rules, crs(2, end, 3))
    assert r.dlt is dlt
    if dlt:
        assert rule_ids(r) == ["crs-icans-grade-3-over-72h"]
        assert "more than 72 h (72-120 h from dates only)" in r.dlt_events[0].reason
    if dlt is None:
        (why,) = r.not_evaluable
        assert "duration ambiguous (dates only): 48-96 h, could be ≤ or > 72 h" in why
        assert "crs-icans-grade-3-over-72h" in why


def timed(term: str, onset: str, end: str | None, grade: int, *, tz: str = "UTC", **kw: Any) -> AdverseEvent:
    """An AE with the onset and resolution the EHR sent (a date or a dateTime), read as the AE mapping does."""
    start, stop = parse_fhir_date(onset, tz), parse_fhir_date(end, tz) if end else None
    return AdverseEvent(term=term, grade=grade, onset_date=start.date, onset_datetime=start.datetime,
                        resolution_date=stop.date if stop else None,
                        resolution_datetime=stop.datetime if stop else None,
                        source=SourceRef(resource_type="AdverseEvent", id=f"ae{next(_ids)}"), **kw)


def evaluate_april(rules: DltSettings, *aes: AdverseEvent) -> DltResult:
    """A subject infused on 2024-04-08, followed weekly to day 60, with these AEs."""
    day1 = dt.date(2024, 4, 8)
    results = [finding("crp", x, 1.0, day1=day1) for x in (8, 15, 22, 29, 60)]
    return derive_dlt(crf(results, {}, day1=day1, ae=list(aes)), rules, "UTC")


@pytest.mark.parametrize(("onset", "end", "dlt", "said"), [
    ("2024-04-09T20:00:00Z", "2024-04-12T08:00:00Z", False, None),       # 60 h
    ("2024-04-09T08:00:00Z", "2024-04-12T20:00:00Z", True, "lasting 84 h (> 72 h)"),  # 3 calendar days apart
    ("2024-04-09T20:00:00Z", "2024-04-13T08:00:00Z", True, "lasting 84 h (> 72 h)"),  # 4 calendar days apart
    ("2024-04-09T08:00:00Z", "2024-04-12T08:00:00Z", False, None),       # exactly 72 h
    ("2024-04-09T08:00:00Z", "2024-04-12T08:01:00Z", True, "lasting 72 h 1 min (> 72 h)"),
    ("2024-04-09T08:00:00Z", "2024-04-12T07:59:59Z", False, "lasting 71 h 59 min 59 s (≤ 72 h)"),
    # onset time, resolution date only: 76 to 100 h → DLT; 64 to 88 h → ambiguous
    ("2024-04-09T20:00:00Z", "2024-04-13", True, "more than 72 h (76-100 h from resolution date only)"),
    ("2024-04-09T08:00:00Z", "2024-04-12", None, "duration ambiguous (resolution date only): 64-88 h"),
])
def test_grade_3_crs_72_hours_from_times(rules: DltSettings, onset: str, end: str, dlt: bool | None,
                                         said: str | None) -> None:
    r = evaluate_april(rules, timed("Cytokine release syndrome", onset, end, 3, crs=True))
    assert r.dlt is dlt
    if dlt:
        assert said is not None and said in r.dlt_events[0].reason
        assert rule_ids(r) == ["crs-icans-grade-3-over-72h"]
    if dlt is None:
        assert said is not None and said in r.not_evaluable[0]


def test_durations_are_elapsed_hours_across_a_daylight_saving_change(rules: DltSettings) -> None:
    # Europe/Berlin moves to summer time on 2024-03-31: 20:00+01:00 to 21:00+02:00 three days on is 72 h
    onset, end = "2024-03-30T20:00:00+01:00", "2024-04-02T21:00:00+02:00"
    day1 = dt.date(2024, 3, 29)
    results = [finding("crp", x, 1.0, day1=day1) for x in (8, 15, 22, 29, 60)]
    event = timed("ICANS", onset, end, 3, tz="Europe/Berlin", icans=True)
    assert event.onset_datetime is not None and event.onset_datetime.hour == 20
    assert derive_dlt(crf(results, {}, day1=day1, ae=[event]), rules, "Europe/Berlin").dlt is False
    later = timed("ICANS", onset, "2024-04-02T21:30:00+02:00", 3, tz="Europe/Berlin", icans=True)
    assert derive_dlt(crf(results, {}, day1=day1, ae=[later]), rules, "Europe/Berlin").dlt is True


def berlin_subject(aes: list[AdverseEvent], last_day: int = 60, day1: dt.date = dt.date(2024, 3, 26)) -> SubjectCRF:
    """A subject infused on ``day1`` (2024-03-26: Europe/Berlin moves to summer time on 2024-03-31, study day 6),
    seen weekly up to ``last_day``."""
    days = sorted({x for x in (8, 15, 22, 29) if x < last_day} | {last_day})
    return crf([finding("crp", x, 1.0, day1=day1) for x in days], {}, day1=day1, ae=aes)


@pytest.mark.parametrize(("onset", "end", "dlt", "said"), [
    # the day after the change starts at 22:00Z, not 23:00Z: the shortest duration is 71 h, not 72 h
    ("2024-03-28", "2024-04-01", None, "duration ambiguous (dates only): 71-119 h"),
    # the change falls on the end date after its first instant: still more than 72 h, one hour less at most
    ("2024-03-27", "2024-03-31", True, "more than 72 h (72-119 h from dates only)"),
    # autumn: 2024-10-27 has 25 h, so two dates 2 days apart may be 73 h apart
    ("2024-10-25", "2024-10-27", None, "duration ambiguous (dates only): 24-73 h"),
])
def test_date_only_ends_are_days_in_the_site_time_zone(rules: DltSettings, onset: str, end: str,
                                                       dlt: bool | None, said: str) -> None:
    event = timed("Cytokine release syndrome", onset, end, 3, tz="Europe/Berlin", crs=True)
    r = derive_dlt(berlin_subject([event], day1=dt.date.fromisoformat(onset) - dt.timedelta(days=2)), rules,
                   "Europe/Berlin")
    assert r.dlt is dlt
    assert said in (r.dlt_events[0].reason if dlt else r.not_evaluable[0])


@pytest.mark.parametrize("resolved", [True, False])
def test_a_crf_read_back_from_its_json_gives_the_same_dlt_answer(rules: DltSettings, resolved: bool) -> None:
    # an incremental run reuses the CRF file: JSON keeps the onset time's offset (+01:00), not its zone, but the
    # resolution date (or the last data date, 2024-04-01, study day 7) is a day of summer time in Europe/Berlin
    event = timed("Cytokine release syndrome", "2024-03-28T23:30:00+01:00", "2024-04-01" if resolved else None,
                  3, tz="Europe/Berlin", crs=True)
    fresh = berlin_subject([event], last_day=60 if resolved else 7)
    read_back = SubjectCRF.model_validate_json(fresh.model_dump_json())
    moment = read_back.ae[0].onset_datetime
    assert moment is not None and not isinstance(moment.tzinfo, ZoneInfo)  # the zone became a fixed offset
    first, second = (derive_dlt(c, rules, "Europe/Berlin") for c in (fresh, read_back))
    assert first == second
    assert first.dlt is None
    said = "71.5-95.5 h" if resolved else "at least 71.5 h so far"
    assert said in first.not_evaluable[0]


def test_grade_3_icans_unresolved_beyond_72h_is_a_dlt_and_unresolved_short_is_not_evaluable(
        rules: DltSettings) -> None:
    r = evaluate(rules, ae("ICANS", 5, None, 3, icans=True), last_day=20)
    assert r.dlt is True and "at least" in r.dlt_events[0].reason
    r = evaluate(rules, ae("ICANS", 5, None, 3, icans=True), last_day=7)
    assert r.dlt is None and any("unresolved" in x for x in r.not_evaluable)


@pytest.mark.parametrize(("end", "dlt"), [(9, False), (10, None), (11, True)])
def test_related_non_haematological_grade_3_over_7_days_from_dates_only(rules: DltSettings, end: int,
                                                                        dlt: bool | None) -> None:
    # onset day 3, dates only: to day 9 at most 168 h; to day 10 (7 calendar days) 144 to 192 h, ambiguous;
    # to day 11 more than 168 h
    r = evaluate(rules, ae("Hepatotoxicity", 3, end, 3, related=True))
    assert r.dlt is dlt
    if dlt:
        assert rule_ids(r) == ["non-hematologic-grade-3-related-over-7d"]
    if dlt is None:
        assert "duration ambiguous (dates only): 144-192 h, could be ≤ or > 168 h" in r.not_evaluable[0]


@pytest.mark.parametrize(("onset", "end", "dlt"), [
    ("2024-04-10T08:00:00Z", "2024-04-17T08:00:00Z", False),   # exactly 7 days = 168 h
    ("2024-04-10T08:00:00Z", "2024-04-17T09:00:00Z", True),    # 169 h
    ("2024-04-10T20:00:00Z", "2024-04-17T08:00:00Z", False),   # 156 h, 7 calendar days apart
    ("2024-04-10T02:00:00Z", "2024-04-17T20:00:00Z", True),    # 186 h, 7 calendar days apart
])
def test_related_non_haematological_grade_3_over_7_days_from_times(rules: DltSettings, onset: str, end: str,
                                                                   dlt: bool) -> None:
    r = evaluate_april(rules, timed("Hepatotoxicity", onset, end, 3, related=True))
    assert r.dlt is dlt
    if dlt:
        assert rule_ids(r) == ["non-hematologic-grade-3-related-over-7d"]


def test_non_haematological_not_related_or_grade_2_is_no_dlt(rules: DltSettings) -> None:
    assert evaluate(rules, ae("Hepatotoxicity", 3, 20, 3, related=False)).dlt is False
    assert evaluate(rules, ae("Rash", 3, 20, 2)).dlt is False          # relatedness unknown but grade 2
    # haematological grade 3 related for weeks: not the non-haematological rule, not grade 4
    assert evaluate(rules, ae("Anaemia", 3, 40, 3, related=True, hematologic=True)).dlt is False
    # CRS is excluded from the non-haematological rule: grade 3 related CRS for 2 days only
    assert evaluate(rules, crs(3, 5, 3, related=True)).dlt is False


def test_unknown_grade_relatedness_or_duration_is_not_evaluable(rules: DltSettings) -> None:
    r = evaluate(rules, ae("Diarrhoea", 4, 20, None, related=True))
    assert r.dlt is None and any("grade unknown" in x for x in r.not_evaluable)
    r = evaluate(rules, ae("Diarrhoea", 4, 20, 3))
    assert r.dlt is None and any("relatedness unknown" in x for x in r.not_evaluable)
    r = evaluate(rules, ae("Diarrhoea", 4, None, 3, related=True, resolution_partial="2024-02"))
    assert r.dlt is None and any("duration unknown" in x for x in r.not_evaluable)
    r = evaluate(rules, ae("Diarrhoea", 4, None, 3, related=True, outcome="resolved"))
    assert r.dlt is None and any("duration unknown" in x for x in r.not_evaluable)
    # a DLT in another event decides the subject; the undecided event is still listed
    r = evaluate(rules, ae("Diarrhoea", 4, 20, None), crs(2, 3, 4))
    assert r.dlt is True and r.not_evaluable


@pytest.mark.parametrize(("end", "dlt"), [(30, False), (31, True)])
def test_grade_4_neutropenia_still_present_after_day_30(rules: DltSettings, end: int, dlt: bool) -> None:
    r = evaluate(rules, ae("Neutrophil count decreased", 8, end, 4, hematologic=True))
    assert r.dlt is dlt


def test_neutropenia_rule_terms_codes_and_persistence(rules: DltSettings) -> None:
    assert evaluate(rules, ae("Thrombocytopenia", 8, 45, 4, hematologic=True)).dlt is True
    assert evaluate(rules, ae("Lymphocyte count decreased", 8, 45, 4, hematologic=True)).dlt is False
    assert evaluate(rules, ae("Neutropenia", 8, 45, 3, hematologic=True)).dlt is False
    coded = ae("Agranulocytosis", 8, 45, 4, hematologic=True, codes=("http://hl7.org/fhir/sid/icd-10-cm|D70.1",))
    assert evaluate(rules, coded).dlt is True
    # unresolved at the last data on day 40 → present after day 30; last data on day 25 → not known
    assert evaluate(rules, ae("Neutropenia", 8, None, 4, hematologic=True), last_day=40).dlt is True
    r = evaluate(rules, ae("Neutropenia", 8, None, 4, hematologic=True), last_day=25)
    assert r.dlt is None


def test_grade_5_not_assessed_as_unrelated(rules: DltSettings) -> None:
    assert rule_ids(evaluate(rules, ae("Sepsis", 12, 14, 5, related=None))) == ["grade-5-not-unrelated"]
    assert evaluate(rules, ae("Sepsis", 12, 14, 5, related=True)).dlt is True
    assert evaluate(rules, ae("Road traffic accident", 12, 12, 5, related=False)).dlt is False


@pytest.mark.parametrize(("onset", "in_window"), [(1, True), (30, True), (31, False), (-1, False)])
def test_dlt_window_day_30_vs_31(rules: DltSettings, onset: int, in_window: bool) -> None:
    r = evaluate(rules, crs(onset, onset + 1, 4))
    assert r.dlt is in_window


def test_partial_or_missing_onset(rules: DltSettings) -> None:
    r = evaluate(rules, ae("ICANS", None, None, 4, icans=True, onset_partial="2024-02"))
    assert r.dlt is None and any("partial onset" in x for x in r.not_evaluable)
    assert evaluate(rules, ae("ICANS", None, None, 4, icans=True, onset_partial="2023")).dlt is False
    r = evaluate(rules, ae("ICANS", None, None, 4, icans=True))
    assert r.dlt is None and any("no onset date" in x for x in r.not_evaluable)
    # not a candidate for any rule: an unknown onset does not matter
    assert evaluate(rules, ae("Headache", None, None, 1)).dlt is False


def test_approximate_grade_is_used_and_said(rules: DltSettings) -> None:
    r = evaluate(rules, ae("Hepatotoxicity", 3, 20, 3, related=True, grade_approximate=True))
    assert r.dlt is True and "approximate" in r.dlt_events[0].reason


def test_not_infused_and_incomplete_window(rules: DltSettings) -> None:
    c = crf([], {}).model_copy(update={"day1": None})
    r = derive_dlt(c, rules, "UTC")
    assert r.dlt is None and r.not_evaluable == ["not infused"]
    r = evaluate(rules, last_day=29)
    assert r.dlt is None and "not completed" in r.not_evaluable[0]
    assert evaluate(rules, last_day=30).dlt is False


@pytest.mark.parametrize(("days", "reason"), [
    ([-20, -7, 1], "no data after the infusion day"),
    ([-7, 1, 482], "no data on study days 2-30 (next data on study day 482)"),
    ([-7, 15], "not completed: last data on study day 15"),
])
def test_no_follow_up_through_the_window_is_not_evaluable(rules: DltSettings, days: list[int],
                                                          reason: str) -> None:
    # routine-care data long after the infusion, with nothing in the window, is no evidence of "no DLT"
    r = derive_dlt(crf([finding("weight", x, 60.0, domain="VS") for x in days], {}), rules, "UTC")
    assert r.dlt is None and len(r.not_evaluable) == 1 and reason in r.not_evaluable[0]
    assert r.pending, "still followed: the data may come, dose escalation waits"


@pytest.mark.parametrize(("ended", "reason"), [
    ({"end_of_participation": d(20)}, "participation ended on study day 20"),
    ({"death_date": d(12)}, "died on study day 12"),
    ({"end_of_participation": d(20), "death_date": d(18)}, "died on study day 18"),
    # an end on or after the window's last day, the data stopping before it: no more will come either
    ({"end_of_participation": d(30)}, "participation ended on study day 30"),
    ({"end_of_participation": d(40)}, "participation ended on study day 40"),
])
def test_follow_up_that_ended_in_the_window_is_final(rules: DltSettings, ended: dict[str, Any],
                                                     reason: str) -> None:
    """A subject who left the study (or died, without a DLT) before day 30 will never be followed to the end of
    the window: not evaluable for good (replaced in escalation), not "pending"."""
    c = crf([finding("weight", x, 60.0, domain="VS") for x in (-7, 8, 15)], {})
    c = c.model_copy(update={"dm": c.dm.model_copy(update=ended)})
    r = derive_dlt(c, rules, "UTC")
    assert r.dlt is None and r.not_evaluable == [f"DLT window not followed to its end: {reason} (window ends day 30)"]
    assert not r.pending
    # ended after the window, or with data to its end: evaluated as before
    c = crf([finding("weight", x, 60.0, domain="VS") for x in (-7, 8, 30)], {})
    assert derive_dlt(c.model_copy(update={"dm": c.dm.model_copy(update=ended)}), rules, "UTC").dlt is False


def test_an_undecided_event_is_pending_while_the_subject_is_followed(rules: DltSettings) -> None:
    """An event still open — a grade-3 CRS unresolved at the last data, a relatedness not recorded — may be a
    DLT: data still to come decide it, and the RP2D waits; once the participation ended, it is final."""
    for event in (crs(3, None, 3), ae("Diarrhoea", 3, 13, 3)):  # unresolved; relatedness unknown
        r = derive_dlt(crf([finding("crp", x, 1.0) for x in (3, 5)], {}, ae=[event]), rules, "UTC")
        assert r.dlt is None and r.pending, event.term
        ended = crf([finding("crp", x, 1.0) for x in (3, 5)], {}, ae=[event])
        ended = ended.model_copy(update={"dm": ended.dm.model_copy(update={"end_of_participation": d(6)})})
        r = derive_dlt(ended, rules, "UTC")
        assert r.dlt is None and not r.pending, event.term


def test_follow_up_in_and_through_the_window_is_evaluable(rules: DltSettings) -> None:
    # seen in the window (an AE resolving on day 12) and on day 30: no DLT
    seen = [finding("weight", 30, 60.0, domain="VS")]
    r = derive_dlt(crf(seen, {}, ae=[ae("Headache", 10, 12, 1)]), rules, "UTC")
    assert r.dlt is False
    # a DLT needs no follow-up beyond the event
    r = derive_dlt(crf([], {}, ae=[crs(3, 4, 4)]), rules, "UTC")
    assert r.dlt is True


def test_evaluated_lists_the_events_that_could_fall_in_the_window(rules: DltSettings) -> None:
    a, b, c = ae("Headache", 5, 6, 1), ae("Headache", 40, 41, 1), ae("Headache", None, None, 1)
    r = evaluate(rules, a, b, c)
    assert r.evaluated == [a.source.reference, c.source.reference]


def test_rule_vocabulary_validation() -> None:
    with pytest.raises(ValueError, match="grade_min or grade_eq"):
        DltSettings.model_validate({"rules": [{"id": "x", "when": {"grade_min": 3, "grade_eq": 3}}]})
    with pytest.raises(ValueError, match="unique"):
        DltSettings.model_validate({"rules": [{"id": "x", "when": {}}, {"id": "x", "when": {}}]})
    with pytest.raises(ValueError, match="regular expression"):
        DltSettings.model_validate({"rules": [{"id": "x", "when": {"terms": ["("]}}]})
    custom = DltSettings.model_validate({"window": {"first_day": 1, "last_day": 28},
                                         "require_complete_window": False,
                                         "rules": [{"id": "any-g3", "when": {"grade_min": 3}}]})
    assert evaluate(custom, ae("Rash", 28, 29, 3)).dlt is True
    assert evaluate(custom, ae("Rash", 29, 30, 3)).dlt is False


def test_a_duration_a_microsecond_over_its_limit_does_not_read_as_the_limit(rules: DltSettings) -> None:
    """Unresolved grade 3 ICANS from a date-only onset on day 5 with the last data on day 9: at least 72 h and
    the last microsecond of the onset day — a DLT, and the reason does not read "72 h (> 72 h)"."""
    r = evaluate(rules, ae("ICANS", 5, None, 3, icans=True), last_day=9)
    (reason,) = [e.reason for e in r.dlt_events]
    assert "72 h and a fraction of a second (> 72 h)" in reason


def test_duration_text_says_which_side_of_a_fractional_limit_it_is_on() -> None:
    from fhir_adapter.derive.dlt import _h

    assert _h(72.5 + 1e-7, 72.5) == "72.5 h and a fraction of a second"
    assert _h(72.5 - 1e-7, 72.5) == "72.5 h less a fraction of a second"
    assert _h(72.5 + 1 / 60, 72.5) == "72 h 31 min" and _h(84) == "84 h"
