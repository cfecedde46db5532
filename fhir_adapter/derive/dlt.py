"""Dose-limiting toxicity (DLT) of one subject: the protocol's DLT rules, as data, applied to its AEs.

Definition: the LCAR-AIO DLT list (docs/clinical-rules.md#dlt-rules, the CAR-T phase I pattern):
DLT window = onset on study days 1–30; grade ≥ 4 CRS or ICANS; grade 3 CRS or ICANS not resolved to
≤ grade 2 within 72 h; grade ≥ 3 non-haematological TEAE (not CRS or ICANS) related to LCAR-AIO (possibly,
probably or definitely) lasting > 7 days; grade 4 neutropenia or thrombocytopenia still present after
Day 30; any grade 5 event not assessed as unrelated. Grades: CTCAE v5.0, CRS/ICANS by ASTCT 2019. The rules
live in ``mappings/<study>/dlt.yaml``; this module is the engine that reads them (rules as data, as CDISC
CORE's rules engine: every finding names its rule and its source).

Rule vocabulary (``when``; every key given must hold — a key left out does not constrain):

* ``category``: any of ``crs``, ``icans``, ``hematologic``, ``non_hematologic`` (neither CRS, ICANS nor
  haematological), ``any`` — from the AE CRF flags;
* ``terms`` / ``codes`` / ``code_prefixes``: a regular expression found in the event's term (any case), or
  one of its codes equal to / starting with a listed one (``system|code``, or the bare code); either may
  match;
* ``grade_min`` / ``grade_eq``: the recorded (maximum) grade of the event;
* ``related``: ``related`` (assessed as possibly, probably or definitely related) or ``not_unrelated``
  (not assessed as unrelated: related, or relatedness missing);
* ``duration_over_hours``: onset to resolution lasts strictly longer than this many hours;
* ``persists_after_day``: the event is still present on a study day after this one.

Durations in hours (docs/clinical-rules.md#dlt-durations): the AE CRF keeps one record per event at its maximum
grade, with onset and resolution dates and, when the EHR sent a dateTime, their times in the site time zone
(``onset_datetime``, ``resolution_datetime``). "Not resolved to ≤ grade 2 within 72 h" is read as **the grade-3
record lasts more than 72 h from onset to resolution** (exactly 72 h is not a DLT). With both times the duration
is exact (60 h → no, 84 h → DLT), whatever zone object the times carry. An end given as a date only may be at any
time of that calendar day in the site time zone (``study.yaml`` ``timezone``, never the zone of another time; a
daylight-saving day has 23 or 25 h), so the duration is a range: decided when the whole range is on one side
of the limit (dates 2 days apart: at most 72 h → no; 4 days apart: more than 72 h → DLT), otherwise **"duration
ambiguous"** — undecided, as docs/clinical-rules.md#dlt-not-evaluable requires for an unknown duration (dates 3
days apart → not evaluable; in Europe/Berlin 2024-03-28 to 2024-04-01, across the spring change: 71-119 h → not
evaluable).
When a site records each change of grade as its own record, that record's duration is the time at that grade;
otherwise it is an upper bound of it (the conservative reading). An unresolved event lasts at least from its onset
until the start of the subject's last data date (``last contact``): a DLT when that alone exceeds the limit,
otherwise undecided. "Still present after Day 30" and the window compare calendar study days
(docs/clinical-rules.md#dlt-window).

Each condition is True, False or unknown. An event meets a rule when all its conditions are True, cannot
meet it when any is False, and is **undecided** otherwise (grade, relatedness, onset or duration unknown),
which is never counted either way. The DLT window is one more condition: onset study day in
``window.first_day`` .. ``window.last_day`` (a partial onset whose period overlaps the window is unknown).

Subject result; the first case that applies defines the value:

1. not infused → ``dlt`` None, not evaluable "not infused";
2. an event meets a rule → ``dlt`` True, with every such event in ``dlt_events``;
3. an event is undecided for a rule → ``dlt`` None, with the reasons in ``not_evaluable``;
4. ``require_complete_window`` and the subject was not followed through the window → None: its participation
   has an end, or it died, without data to the window's end (final); or, still followed, no data dated after
   the infusion day inside the window (study days 2 .. ``window.last_day``: a result, a visit, an AE onset or
   resolution), or the last such data before ``window.last_day`` (docs/clinical-rules.md#dlt-window).

In cases 3 and 4 ``pending`` says whether data still to come can decide it (the subject is followed: no end of
participation, no death): dose escalation names no RP2D while a subject is pending.
5. otherwise → ``dlt`` False.

"No DLT" therefore needs evidence that the subject was seen during the window and through its end: years of
routine-care data after the infusion with nothing in days 2–30 do not show that no DLT happened.

Examples (Day 1 = 2024-02-01): CRS grade 3 from 2024-02-02T08:00 to 2024-02-05T20:00 (84 h) → DLT; from
2024-02-02T20:00 to 2024-02-05T08:00 (60 h) → no; dates only, day 2 to day 6 → DLT, to day 5 → not evaluable
(duration ambiguous), to day 4 → no; grade-3 rash related from day 3 to day 11 (dates only) → DLT; to day 10 →
not evaluable; to day 9 → no; grade 4 neutropenia from day 10 resolved on day 31 → DLT, resolved on day 30 →
no; grade 3 diarrhoea with relatedness missing, lasting 10 days → not evaluable; a grade-2 event with unknown
relatedness → no DLT (cannot meet any rule).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fhir_adapter.crf.models import AdverseEvent, SubjectCRF
from fhir_adapter.study.timeline import before_infusion, partial_period, study_day, zone

Category = Literal["crs", "icans", "hematologic", "non_hematologic", "any"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class When(_Strict):
    category: tuple[Category, ...] = Field(
        ("any",), description="the event is in one of these classes: crs, icans, hematologic, non_hematologic (none of "
        "the three), any")
    terms: tuple[str, ...] = Field((), description="regular expressions searched in the term, any case")
    codes: tuple[str, ...] = Field((), description="system|code, or a bare code")
    code_prefixes: tuple[str, ...] = Field((), description="system|prefix, or a bare code prefix")
    grade_min: int | None = Field(None, ge=1, le=5, description="the event's recorded (maximum) grade is at least "
                                  "this")
    grade_eq: int | None = Field(None, ge=1, le=5, description="the event's recorded (maximum) grade is exactly this; "
                                 "not with grade_min")
    related: Literal["related", "not_unrelated"] | None = Field(
        None, description="related: assessed as related to the study product; not_unrelated: related or relatedness "
        "missing")
    duration_over_hours: float | None = Field(
        None, ge=0, description="onset to resolution lasts strictly longer than this many hours "
        "(docs/clinical-rules.md#dlt-durations)")
    persists_after_day: int | None = Field(
        None, ge=1, description="the event is still present on a study day after this one")

    @field_validator("terms")
    @classmethod
    def _regexes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"term pattern {p!r} is not a regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_grade_test(self) -> When:
        if self.grade_min is not None and self.grade_eq is not None:
            raise ValueError("give grade_min or grade_eq, not both")
        return self


class Rule(_Strict):
    id: str = Field(description="the rule's id, named in dlt_events and in the not-evaluable reasons; unique")
    description: str = Field("", description="the rule in words, echoed in results/study.json settings; the "
                             "evaluation does not read it")
    when: When = Field(description="the conditions, all of which must hold (with the window); a key left out does "
                       "not constrain")


class Window(_Strict):
    first_day: int = Field(1, ge=1, description="first study day of the DLT window, inclusive (Day 1 = the infusion)")
    last_day: int = Field(30, ge=1, description="last study day of the DLT window, inclusive")


class DltSettings(_Strict):
    window: Window = Field(Window(), description="an event is DLT-relevant when its onset study day lies in the window "
                           "(docs/clinical-rules.md#dlt-window)")
    require_complete_window: bool = Field(
        True, description="a subject without a DLT is DLT-evaluable only with data on study days 2..last_day and "
        "on or after last_day; else not evaluable")
    resolved_outcomes: tuple[str, ...] = Field(
        ("resolved", "recovered", "resolvedWithSequelae", "fatal", "C49498", "C49495", "C48275"),
        description="outcomes meaning the event ended (its duration is unknown without a resolution date)",
    )
    rules: tuple[Rule, ...] = Field(
        min_length=1, description="the DLT rules: an event in the window meeting every condition of a rule is a DLT "
        "(docs/clinical-rules.md#dlt-rules)")

    @model_validator(mode="after")
    def _unique_ids(self) -> DltSettings:
        ids = [r.id for r in self.rules]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"DLT rule ids must be unique: {dup}")
        if self.window.last_day < self.window.first_day:
            raise ValueError("window.last_day is before window.first_day")
        return self


class DltEvent(BaseModel):
    source: str = Field(description="reference of the AdverseEvent")
    term: str
    rule: str
    reason: str


class DltResult(BaseModel):
    dlt: bool | None
    dlt_events: list[DltEvent] = Field(default_factory=list)
    not_evaluable: list[str] = Field(default_factory=list)
    evaluated: list[str] = Field(default_factory=list, description="AEs that could fall in the DLT window")
    pending: bool = Field(False, description="not evaluable yet while the subject is still followed (its "
                                             "participation has no end, it has not died): later data — a "
                                             "resolution, a relatedness, follow-up to the window's end — can "
                                             "decide it; dose escalation names no RP2D meanwhile")


# --- conditions: each returns (True | False | None, what was seen) --------------------------------------

Outcome = tuple[bool | None, str]


class _Ctx:
    def __init__(self, crf: SubjectCRF, s: DltSettings, tz: str) -> None:
        assert crf.day1 is not None
        self.day1: dt.date = crf.day1
        self.infusion_time = crf.infusion_time
        self.s = s
        self.site_tz = zone(tz)
        self.last_contact = _last_contact(crf)

    def day(self, d: dt.date) -> int:
        return study_day(d, self.day1)

    def ongoing(self, ae: AdverseEvent) -> bool:
        return (ae.resolution_date is None and ae.resolution_partial is None
                and (ae.outcome or "") not in self.s.resolved_outcomes)


def _last_contact(crf: SubjectCRF) -> dt.date | None:
    dates = [f.date for f in crf.findings if f.date] + [v.date for v in crf.visits if v.date]
    dates += [d for ae in crf.ae for d in (ae.onset_date, ae.resolution_date) if d]
    dates += [d for e in crf.ex for d in (e.start_date, e.end_date) if d]
    return max(dates) if dates else None


def _categories(ae: AdverseEvent) -> set[str]:
    cats = {"any"}
    cats |= {c for c, flag in (("crs", ae.crs), ("icans", ae.icans), ("hematologic", ae.hematologic)) if flag}
    if not (ae.crs or ae.icans or ae.hematologic):
        cats.add("non_hematologic")
    return cats


def _category(ae: AdverseEvent, w: When, _c: _Ctx) -> Outcome:
    hit = _categories(ae) & set(w.category)
    return bool(hit), "/".join(sorted(hit - {"any"})) or "event"


def _code_hit(code: str, wanted: tuple[str, ...], prefix: bool) -> bool:
    bare = code.split("|", 1)[-1]
    for w in wanted:
        target = code if "|" in w else bare
        if target.startswith(w) if prefix else target == w:
            return True
    return False


def _term(ae: AdverseEvent, w: When, _c: _Ctx) -> Outcome:
    ok = any(re.search(p, ae.term, re.IGNORECASE) for p in w.terms) or any(
        _code_hit(c, w.codes, False) or _code_hit(c, w.code_prefixes, True) for c in ae.codes)
    return ok, f"'{ae.term}'"


def _grade(ae: AdverseEvent, w: When, _c: _Ctx) -> Outcome:
    if ae.grade is None:
        return None, "grade unknown"
    ok = ae.grade >= w.grade_min if w.grade_min is not None else ae.grade == w.grade_eq
    return ok, f"grade {ae.grade}" + (" (approximate, from severity)" if ae.grade_approximate else "")


def _related(ae: AdverseEvent, w: When, _c: _Ctx) -> Outcome:
    if w.related == "not_unrelated":
        return ae.related is not False, "not assessed as unrelated" if ae.related is None else (
            "related" if ae.related else "unrelated")
    if ae.related is None:
        return None, "relatedness unknown"
    return ae.related, "related" if ae.related else "unrelated"


def _midnight(day: dt.date, site_tz: dt.tzinfo) -> dt.datetime:
    """The instant (UTC) a calendar date starts in the site time zone."""
    return dt.datetime.combine(day, dt.time(), tzinfo=site_tz).astimezone(dt.UTC)


def _bounds(day: dt.date, moment: dt.datetime | None, site_tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """The earliest and latest instant (UTC) an AE onset or end can be: its time when the EHR sent one (whatever
    offset or zone object it carries, e.g. a fixed offset after a CRF's JSON round-trip), else any time of its
    calendar date in the site time zone (``study.yaml`` ``timezone``: 23 or 25 h on a daylight-saving change)."""
    if moment is not None:
        at = moment.astimezone(dt.UTC)
        return at, at
    return _midnight(day, site_tz), _midnight(day + dt.timedelta(days=1), site_tz) - dt.timedelta(microseconds=1)


def _hours(delta: dt.timedelta) -> float:
    return delta.total_seconds() / 3600


def _h(hours: float, limit: float | None = None) -> str:
    """Hours as a reason shows them (84, 72.5); to the minute when a tenth would show the limit itself for a
    duration that is not (72 h 1 min is "72 h 1 min", not "72 h (> 72 h)")."""
    tenth = f"{round(hours, 1):g}"
    if limit is None or float(tenth) != limit or hours == limit:
        return f"{tenth} h"
    if round(hours * 3600) == round(limit * 3600):  # within half a second (a date-only end: the day's last µs)
        return f"{limit:g} h {'and a fraction of a second' if hours > limit else 'less a fraction of a second'}"
    whole, rest = divmod(round(hours * 3600), 3600)
    minutes, seconds = divmod(rest, 60)
    return " ".join([f"{whole} h", *([f"{minutes} min"] if minutes else []), *([f"{seconds} s"] if seconds else [])])


def _dates_only(ae: AdverseEvent) -> str:
    if ae.onset_datetime is None and ae.resolution_datetime is None:
        return "dates only"
    return "onset date only" if ae.onset_datetime is None else "resolution date only"


def _duration(ae: AdverseEvent, w: When, c: _Ctx) -> Outcome:
    """Onset to resolution > ``limit`` h: in hours from the times when both ends have one; from a date-only end
    the duration is a range (any time of that day), decided only when the whole range is on one side of the
    limit and otherwise undecided ("duration ambiguous", docs/clinical-rules.md#dlt-durations)."""
    limit = w.duration_over_hours
    assert limit is not None
    if ae.onset_date is None:
        return None, "duration unknown (no onset date)"
    onset_first, onset_last = _bounds(ae.onset_date, ae.onset_datetime, c.site_tz)
    if ae.resolution_date is not None:
        end_first, end_last = _bounds(ae.resolution_date, ae.resolution_datetime, c.site_tz)
        shortest, longest = _hours(end_first - onset_last), _hours(end_last - onset_first)
        if shortest == longest:
            return shortest > limit, f"lasting {_h(shortest, limit)} ({'>' if shortest > limit else '≤'} {limit:g} h)"
        span = f"{round(shortest, 1):g}-{_h(longest)}"
        if shortest > limit:
            return True, f"lasting more than {limit:g} h ({span} from {_dates_only(ae)})"
        if longest <= limit:
            return False, f"lasting at most {limit:g} h ({span} from {_dates_only(ae)})"
        return None, f"duration ambiguous ({_dates_only(ae)}): {span}, could be ≤ or > {limit:g} h"
    if c.ongoing(ae) and c.last_contact is not None:
        seen_first = _midnight(c.last_contact, c.site_tz)
        hours = max(0.0, _hours(seen_first - onset_last))
        if hours > limit:
            return True, f"unresolved, lasting at least {_h(hours, limit)} (> {limit:g} h)"
        return None, f"unresolved at the last data (at least {_h(hours)} so far): duration unknown"
    return None, "duration unknown (no resolution date)"


def _persists(ae: AdverseEvent, w: When, c: _Ctx) -> Outcome:
    after = w.persists_after_day
    assert after is not None
    if ae.resolution_date is not None:
        end = c.day(ae.resolution_date)
        return end > after, f"present until day {end}"
    if c.ongoing(ae) and c.last_contact is not None:
        last = c.day(c.last_contact)
        if last > after:
            return True, f"unresolved at the last data (day {last})"
        return None, f"unresolved at the last data (day {last}): not known after day {after}"
    return None, "end date unknown"


def _window(ae: AdverseEvent, c: _Ctx) -> Outcome:
    lo, hi = c.s.window.first_day, c.s.window.last_day
    if before_infusion(ae.onset_date, ae.onset_datetime, c.day1, c.infusion_time):
        return False, "onset on Day 1 before the infusion"
    if ae.onset_date is not None:
        day = c.day(ae.onset_date)
        return lo <= day <= hi, f"onset day {day}"
    if ae.resolution_date is not None and c.day(ae.resolution_date) < lo:
        return False, "ended before the DLT window"
    period = partial_period(ae.onset_partial)
    if period is not None:
        first, last = c.day(period[0]), c.day(period[1])
        if last < lo or first > hi:
            return False, f"onset {ae.onset_partial} outside the DLT window"
        return None, f"partial onset date {ae.onset_partial}: in the DLT window unknown"
    return None, "no onset date: in the DLT window unknown"


_CONDITIONS: tuple[tuple[str, Callable[[AdverseEvent, When, _Ctx], Outcome]], ...] = (
    ("category", _category),
    ("terms", _term),
    ("grade", _grade),
    ("related", _related),
    ("duration_over_hours", _duration),
    ("persists_after_day", _persists),
)


def _applies(w: When, key: str) -> bool:
    if key == "category":
        return True
    if key == "terms":
        return bool(w.terms or w.codes or w.code_prefixes)
    if key == "grade":
        return w.grade_min is not None or w.grade_eq is not None
    return getattr(w, key) is not None


def evaluate_rule(ae: AdverseEvent, rule: Rule, ctx: _Ctx) -> Outcome:
    """Does ``ae`` meet ``rule`` (window included)? (True/False/None, the reasons)."""
    outcomes = [_window(ae, ctx)]
    outcomes += [check(ae, rule.when, ctx) for key, check in _CONDITIONS if _applies(rule.when, key)]
    if any(ok is False for ok, _ in outcomes):
        return False, ""
    unknown = [why for ok, why in outcomes if ok is None]
    if unknown:
        return None, "; ".join(unknown)
    return True, ", ".join(why for _, why in outcomes)


def derive_dlt(crf: SubjectCRF, s: DltSettings, tz: str) -> DltResult:
    """DLT evaluation of one subject (the cases of the module docstring, in order); ``tz`` is the site time zone
    (IANA name, ``study.yaml`` ``timezone``) in which a date-only onset, end or last contact is a calendar day."""
    if crf.day1 is None:
        return DltResult(dlt=None, not_evaluable=["not infused"])
    ctx = _Ctx(crf, s, tz)
    events: list[DltEvent] = []
    undecided: list[str] = []
    evaluated: list[str] = []
    for ae in crf.ae:
        if _window(ae, ctx)[0] is not False:
            evaluated.append(ae.source.reference)
        open_rules: dict[str, list[str]] = {}
        for rule in s.rules:
            ok, why = evaluate_rule(ae, rule, ctx)
            if ok:
                events.append(DltEvent(source=ae.source.reference, term=ae.term, rule=rule.id, reason=why))
            elif ok is None:
                open_rules.setdefault(why, []).append(rule.id)
        if open_rules and not any(e.source == ae.source.reference for e in events):
            for why, ids in open_rules.items():
                undecided.append(f"{ae.source.reference} '{ae.term}': {why} (could meet {', '.join(ids)})")
    if events:
        return DltResult(dlt=True, dlt_events=events, not_evaluable=undecided, evaluated=evaluated)
    ended = _followup_ended(crf, ctx)
    if undecided:  # an event still open (unresolved, grade or relatedness unknown): data to come may decide it
        return DltResult(dlt=None, not_evaluable=undecided, evaluated=evaluated, pending=ended is None)
    if s.require_complete_window:
        gap = _followup_gap(crf, ctx, ended)
        if gap is not None:
            return DltResult(dlt=None, evaluated=evaluated, not_evaluable=[gap], pending=ended is None)
    return DltResult(dlt=False, evaluated=evaluated)


def _contact_days(crf: SubjectCRF, ctx: _Ctx) -> list[int]:
    """Study days on which the subject was seen: results, visits, AE onsets and resolutions."""
    dates = [f.date for f in crf.findings if f.date] + [v.date for v in crf.visits if v.date]
    dates += [d for ae in crf.ae for d in (ae.onset_date, ae.resolution_date) if d]
    return sorted({ctx.day(x) for x in dates})


def _followup_ended(crf: SubjectCRF, ctx: _Ctx) -> str | None:
    """Why no more data of the subject will come (its participation has an end, it died), the earliest; None
    while it is followed."""
    ended = [(d, f"participation ended on study day {ctx.day(d)}") for d in (crf.dm.end_of_participation,)
             if d is not None] + [(d, f"died on study day {ctx.day(d)}") for d in (crf.dm.death_date,)
                                  if d is not None]
    return min(ended)[1] if ended else None


def _followup_gap(crf: SubjectCRF, ctx: _Ctx, ended: str | None) -> str | None:
    """Why the subject was not followed through the DLT window (case 4), or None when it was; ``ended``: why
    no more data will come (:func:`_followup_ended`), which makes the gap final."""
    w = ctx.s.window
    days = _contact_days(crf, ctx)
    after = [x for x in days if x > 1]
    in_window = [x for x in after if x <= w.last_day]
    if ended and (not after or after[-1] < w.last_day):
        return f"DLT window not followed to its end: {ended} (window ends day {w.last_day})"
    if not after:
        return (f"DLT window not followed: no data after the infusion day (window study days "
                f"{w.first_day}-{w.last_day})")
    if not in_window:
        return (f"DLT window not followed: no data on study days 2-{w.last_day} (next data on study day "
                f"{after[0]})")
    if after[-1] < w.last_day:
        return (f"DLT window not completed: last data on study day {after[-1]} (window ends day "
                f"{w.last_day})")
    return None
