"""Safety: treatment-emergent adverse events (TEAE), CRS/ICANS, and their per-arm summary.

Definitions: ICH E9 (treatment-emergent = emerges, or worsens, after treatment start); the study's rule
(docs/clinical-rules.md#teae) — onset, or worsening of grade, on or after Day 1 through the end of follow-up;
events from lymphodepletion start to before the infusion are pre-infusion AEs, reported separately; an
AE with no onset date counts as treatment-emergent unless it ended before Day 1, and is listed — the
conservative choice of pharmaverse/admiral ``derive_var_trtemfl`` (a missing start date is flagged
treatment-emergent, admiral reference "derive_var_trtemfl", "Details"). Grades: CTCAE v5.0, CRS and ICANS
by ASTCT 2019 (Lee DW et al., Biol Blood Marrow Transplant 2019;25:625–638), as recorded in the AE CRF.
Settings: ``mappings/<study>/safety.yaml``.

TEAE flag of one AE (study day as SDTM --DY, no Day 0); the first case that applies defines the value:

1. **not infused** (no Day 1): not a TEAE; pre-infusion when its onset is on/after lymphodepletion start;
2. onset on Day 1 timed before the infusion (both times known) → not a TEAE: pre-infusion (on/after
   lymphodepletion start), else before treatment;
3. **onset date known**, study day in ``first_day`` .. ``last_day`` → TEAE (``onset``);
4. onset date known, after ``last_day`` (end of follow-up) → not a TEAE;
5. onset before Day 1, ``baseline_grade`` recorded (the grade on Day 1 of an event present at the
   infusion), the event not ended before Day 1 and its grade higher than the baseline grade → TEAE
   (``worsened``);
6. onset before Day 1, on/after lymphodepletion start → pre-infusion AE, not a TEAE;
7. onset before Day 1 and before lymphodepletion (or none) → not a TEAE (before treatment);
8. **no full onset date**: ended before Day 1 → not a TEAE; a partial onset (year or year-month) whose whole
   period lies before Day 1 → not a TEAE (pre-infusion when it lies wholly on/after lymphodepletion start),
   or after ``last_day`` → not a TEAE; otherwise → TEAE (``onset-unknown``), and listed in
   ``onset_unknown_aes``. A partial date is never imputed: only its whole period is compared.

Per subject: counts over TEAEs (any, serious, related to LCAR-AIO), the highest known grade (TEAEs without
a grade are counted in ``teae_grade_unknown``); CRS and ICANS: incidence, highest grade, onset study day
and duration of the first episode (duration = resolution date − onset date in days, the same elapsed-time
measure the DLT rules use; None while unresolved or when a date is missing).

Examples (Day 1 = 2024-02-01, lymphodepletion from day −5): onset day 1 → TEAE; onset day −1 (2024-01-31)
→ pre-infusion; onset day −10 with baseline grade 1 and grade 3 → TEAE (worsened); no onset, resolved
2024-01-20 → not TEAE; onset "2024-02" → TEAE, listed; onset "2023" → not TEAE.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fhir_adapter.crf.models import AdverseEvent, SubjectCRF
from fhir_adapter.study.timeline import before_infusion, partial_period, study_day

TeaeCase = Literal[
    "not-infused", "onset", "after-follow-up", "worsened", "pre-infusion", "before-treatment",
    "ended-before-day1", "partial-before-day1", "partial-after-follow-up", "onset-unknown",
]
GRADES = (1, 2, 3, 4, 5)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SafetySettings(_Strict):
    first_day: int = Field(1, ge=1, description="first study day of the TEAE period (Day 1 = infusion)")
    last_day: int | None = Field(None, ge=1, description="last study day (end of follow-up); None = all data")
    missing_onset_is_teae: bool = Field(True, description="an AE with no onset date is a TEAE (admiral)")


# --- dates -----------------------------------------------------------------------------------------------


def onset_day(ae: AdverseEvent, day1: dt.date | None) -> int | None:
    if ae.onset_date is not None and day1 is not None:
        return study_day(ae.onset_date, day1)
    return ae.study_day if ae.onset_date is not None else None


def end_day(ae: AdverseEvent, day1: dt.date | None) -> int | None:
    if ae.resolution_date is not None and day1 is not None:
        return study_day(ae.resolution_date, day1)
    return ae.end_study_day if ae.resolution_date is not None else None


def elapsed_days(ae: AdverseEvent) -> int | None:
    """Resolution date − onset date, in days (None when either is not a full date)."""
    if ae.onset_date is None or ae.resolution_date is None:
        return None
    return (ae.resolution_date - ae.onset_date).days


# --- TEAE flag ---------------------------------------------------------------------------------------------


class TeaeFlag(BaseModel):
    teae: bool
    pre_infusion: bool
    case: TeaeCase


def teae_flag(ae: AdverseEvent, day1: dt.date | None, ld_start: dt.date | None,
              s: SafetySettings, infusion_time: dt.datetime | None = None) -> TeaeFlag:
    """The TEAE flag of one AE (see the module docstring for the cases, in order); ``infusion_time``: the
    infusion's date-time when the EHR recorded one."""
    if day1 is None:
        pre = ae.onset_date is not None and ld_start is not None and ae.onset_date >= ld_start
        return TeaeFlag(teae=False, pre_infusion=pre, case="not-infused")
    first = day1 + dt.timedelta(days=s.first_day - 1)
    last = day1 + dt.timedelta(days=s.last_day - 1) if s.last_day is not None else None
    onset = ae.onset_date
    if onset is not None and before_infusion(onset, ae.onset_datetime, day1, infusion_time):
        pre = ld_start is not None and onset >= ld_start
        return TeaeFlag(teae=False, pre_infusion=pre, case="pre-infusion" if pre else "before-treatment")
    if onset is not None:
        if onset >= first and (last is None or onset <= last):
            return TeaeFlag(teae=True, pre_infusion=False, case="onset")
        if last is not None and onset > last:
            return TeaeFlag(teae=False, pre_infusion=False, case="after-follow-up")
        present_at_day1 = ae.resolution_date is None or ae.resolution_date >= day1
        if (ae.baseline_grade is not None and ae.grade is not None and ae.grade > ae.baseline_grade
                and present_at_day1):
            return TeaeFlag(teae=True, pre_infusion=False, case="worsened")
        if onset < day1 and ld_start is not None and onset >= ld_start:
            return TeaeFlag(teae=False, pre_infusion=True, case="pre-infusion")
        return TeaeFlag(teae=False, pre_infusion=False, case="before-treatment")
    if ae.resolution_date is not None and ae.resolution_date < day1:
        return TeaeFlag(teae=False, pre_infusion=False, case="ended-before-day1")
    period = partial_period(ae.onset_partial)
    if period is not None and period[1] < day1:
        pre = ld_start is not None and period[0] >= ld_start
        return TeaeFlag(teae=False, pre_infusion=pre, case="partial-before-day1")
    if period is not None and last is not None and period[0] > last:
        return TeaeFlag(teae=False, pre_infusion=False, case="partial-after-follow-up")
    return TeaeFlag(teae=s.missing_onset_is_teae, pre_infusion=False, case="onset-unknown")


def flag_teae(crf: SubjectCRF, s: SafetySettings) -> list[AdverseEvent]:
    """``crf.ae`` with ``teae`` and ``pre_infusion`` set by :func:`teae_flag` (copies of the records)."""
    out = []
    for ae in crf.ae:
        f = teae_flag(ae, crf.day1, crf.lymphodepletion_start, s, crf.infusion_time)
        out.append(ae.model_copy(update={"teae": f.teae, "pre_infusion": f.pre_infusion}))
    return out


# --- per subject ---------------------------------------------------------------------------------------


class AeListing(BaseModel):
    source: str
    term: str
    code: str | None = None
    grade: int | None = None
    grade_approximate: bool = False
    serious: bool | None = None
    related: bool | None = None
    onset: str | None = Field(None, description="onset date, or the partial date as recorded")
    onset_day: int | None = None
    end_day: int | None = None
    crs: bool = False
    icans: bool = False
    teae_case: TeaeCase


class Syndrome(BaseModel):
    """CRS or ICANS of one subject (treatment-emergent episodes only)."""

    present: bool = False
    episodes: int = 0
    max_grade: int | None = None
    onset_day: int | None = Field(None, description="study day of the first episode's onset")
    duration_days: int | None = Field(None, description="first episode: resolution − onset, in days")


class SafetySubject(BaseModel):
    teae_count: int = 0
    serious_teae_count: int = 0
    related_teae_count: int = 0
    max_teae_grade: int | None = None
    teae_grade_unknown: int = 0
    crs: Syndrome = Field(default_factory=Syndrome)
    icans: Syndrome = Field(default_factory=Syndrome)
    teaes: list[AeListing] = Field(default_factory=list)
    pre_infusion_aes: list[AeListing] = Field(default_factory=list)
    onset_unknown_aes: list[AeListing] = Field(default_factory=list)


def _listing(ae: AdverseEvent, day1: dt.date | None, case: TeaeCase) -> AeListing:
    return AeListing(
        source=ae.source.reference, term=ae.term, code=ae.codes[0] if ae.codes else None, grade=ae.grade,
        grade_approximate=ae.grade_approximate, serious=ae.serious, related=ae.related,
        onset=ae.onset_date.isoformat() if ae.onset_date else ae.onset_partial, onset_day=onset_day(ae, day1),
        end_day=end_day(ae, day1), crs=ae.crs, icans=ae.icans, teae_case=case,
    )


def _syndrome(events: list[AdverseEvent], day1: dt.date | None) -> Syndrome:
    if not events:
        return Syndrome()
    grades = [e.grade for e in events if e.grade is not None]
    dated = [e for e in events if e.onset_date is not None]
    first = min(dated, key=lambda e: e.onset_date or dt.date.max) if dated else None
    return Syndrome(
        present=True, episodes=len(events), max_grade=max(grades) if grades else None,
        onset_day=onset_day(first, day1) if first else None,
        duration_days=elapsed_days(first) if first else None,
    )


def derive_safety(crf: SubjectCRF, s: SafetySettings) -> SafetySubject:
    """TEAE counts, CRS/ICANS and the pre-infusion and onset-unknown listings of one subject."""
    out = SafetySubject()
    teaes: list[AdverseEvent] = []
    for ae in crf.ae:
        f = teae_flag(ae, crf.day1, crf.lymphodepletion_start, s, crf.infusion_time)
        row = _listing(ae, crf.day1, f.case)
        if f.pre_infusion:
            out.pre_infusion_aes.append(row)
        if f.case == "onset-unknown":
            out.onset_unknown_aes.append(row)
        if f.teae:
            teaes.append(ae)
            out.teaes.append(row)
    out.teae_count = len(teaes)
    out.serious_teae_count = sum(1 for e in teaes if e.serious)
    out.related_teae_count = sum(1 for e in teaes if e.related)
    grades = [e.grade for e in teaes if e.grade is not None]
    out.max_teae_grade = max(grades) if grades else None
    out.teae_grade_unknown = sum(1 for e in teaes if e.grade is None)
    out.crs = _syndrome([e for e in teaes if e.crs], crf.day1)
    out.icans = _syndrome([e for e in teaes if e.icans], crf.day1)
    return out


# --- per arm and overall -----------------------------------------------------------------------------------


def _grade_counts(values: Sequence[int | None]) -> dict[str, int]:
    out = {str(g): 0 for g in GRADES} | {"unknown": 0}
    for v in values:
        out[str(v) if v is not None else "unknown"] += 1
    return out


def _median_range(values: Sequence[int | None]) -> dict[str, float | int | None]:
    """Median (min–max) over the known values, as CAR-T trials report time to onset and duration; ``n`` = how
    many subjects had the value (an unresolved episode has no duration)."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(known), "median": statistics.median(known), "min": known[0], "max": known[-1]}


def _group(arm: str, subjects: Sequence[SafetySubject]) -> dict[str, object]:
    with_teae = [s for s in subjects if s.teae_count]
    terms: dict[str, tuple[str, str | None]] = {}
    term_subjects: dict[str, set[int]] = {}
    term_events: dict[str, int] = {}
    for i, s in enumerate(subjects):
        for e in s.teaes:
            key = e.code or e.term.strip().casefold()
            terms.setdefault(key, (e.term, e.code))
            term_subjects.setdefault(key, set()).add(i)
            term_events[key] = term_events.get(key, 0) + 1
    by_term: list[dict[str, object]] = [
        {"term": term, "code": code, "subjects": len(term_subjects[key]), "events": term_events[key]}
        for key, (term, code) in sorted(terms.items(), key=lambda kv: (-len(term_subjects[kv[0]]),
                                                                       kv[1][0].casefold()))
    ]

    def syndrome(name: Literal["crs", "icans"]) -> dict[str, object]:
        present = [getattr(s, name) for s in subjects if getattr(s, name).present]
        return {"subjects": len(present), "by_max_grade": _grade_counts([p.max_grade for p in present]),
                "onset_day": _median_range([p.onset_day for p in present]),
                "duration_days": _median_range([p.duration_days for p in present])}

    return {
        "arm": arm,
        "n_subjects": len(subjects),
        "any_teae": len(with_teae),
        "by_max_grade": _grade_counts([s.max_teae_grade for s in with_teae]),
        "by_term": by_term,
        "serious": sum(1 for s in subjects if s.serious_teae_count),
        "related": sum(1 for s in subjects if s.related_teae_count),
        "crs": syndrome("crs"),
        "icans": syndrome("icans"),
    }


def summarize_teae(rows: Sequence[tuple[str | None, bool, SafetySubject]],
                   arm_order: Sequence[str] = (), product: str = "the study product") -> dict[str, object]:
    """Per arm (in ``arm_order``, then others alphabetically) and overall, over infused subjects:
    subjects with any TEAE, by maximum grade (a subject whose TEAEs are all ungraded counts as
    ``unknown``), by term (code if coded, else the text), serious, related, CRS/ICANS incidence, maximum
    grade, and the first episode's onset study day and duration (median, min, max over the subjects who have
    them). ``rows`` = (arm, infused, safety); ``product``: the study's product (study.yaml ``product_name``).
    Pre-infusion AEs are counted over all subjects.
    """
    infused = [(arm or "unassigned", s) for arm, inf, s in rows if inf]
    arms = [a for a in arm_order if any(x == a for x, _ in infused)]
    arms += sorted({a for a, _ in infused} - set(arms))
    pre = [s for _, _, s in rows if s.pre_infusion_aes]
    return {
        "population": f"subjects infused with {product} (safety population); counts are subjects, "
                      "except `events`",
        "by_arm": [_group(a, [s for x, s in infused if x == a]) for a in arms],
        "overall": _group("overall", [s for _, s in infused]),
        "pre_infusion_aes": {"subjects": len(pre), "events": sum(len(s.pre_infusion_aes) for s in pre)},
        "onset_unknown_aes": sum(len(s.onset_unknown_aes) for _, _, s in rows),
    }
