"""Which adverse events a subject has: background CAR-T toxicities and infections drawn from module-level
rates, plus the plan's DLT / look-alike scenarios placed exactly (onset day, grade, duration, causality).

Background events are kept below every DLT rule (CRS/ICANS <= grade 2, cytopenias recovered before day 28,
related non-haematological events <= grade 2) so only the planned scenarios produce DLTs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from random import Random

from ..timeline import DATA_CUT
from . import scenarios as sc
from .adverse_events import HOSPITALISATION, LIFE_THREATENING, AEvent
from .context import SubjectContext
from .course import DiseaseCourse, Haem
from .irregularities import AE_MISSING_GRADE, AE_ONGOING, OVERRIDE_FEVER

HOURS = 60   # minutes
DLT_WINDOW_DAYS = 30

#: background event rates: term -> (share of subjects, grade choices, onset day range, duration days, causality)
BACKGROUND: tuple[tuple[str, float, tuple[int, ...], tuple[int, int], tuple[int, int], str], ...] = (
    ("icans", 0.08, (1,), (4, 9), (1, 3), "probable"),
    ("fatigue", 0.30, (1,), (1, 10), (5, 20), "possible"),
    ("headache", 0.20, (1,), (1, 7), (1, 3), "possible"),
    ("hypogammaglobulinaemia", 0.20, (2,), (60, 120), (100, 300), "probable"),
)
CRS_SHARE = 0.80
CRS_GRADES = (1, 1, 1, 2, 2)
#: infections after day 30: term, weight, causality
INFECTIONS: tuple[tuple[str, int, str], ...] = (
    ("urti", 5, "unlikely"), ("uti", 3, "unlikely"), ("covid", 2, "unrelated"), ("zoster", 1, "possible"),
)
INFECTION_COUNTS = (0, 0, 1, 1, 2)


def _ev(ctx: SubjectContext, term: str, grade: int | None, onset_day: int, duration_min: int | None,
        causality: str, criteria: tuple[tuple[str, str], ...] = (), rid: str | None = None,
        onset_min: tuple[int, int] = (420, 1260)) -> AEvent:
    onset = ctx.on_day(onset_day, ctx.rng.randint(*onset_min))
    resolved = None if duration_min is None else onset + timedelta(minutes=duration_min)
    return AEvent(term, grade, onset, resolved, causality, criteria, rid)


def _days(rng: Random, lo: int, hi: int) -> int:
    """A duration of lo..hi days, in minutes (with a few hours of jitter)."""
    return rng.randint(lo, hi) * 1440 + rng.randint(-180, 180)


def _crs(ctx: SubjectContext, grade: int, onset_day: int, duration_min: int, serious: bool = True) -> AEvent:
    ev = _ev(ctx, "crs", grade, onset_day, duration_min, "certain", (HOSPITALISATION,) if serious else ())
    end_day = onset_day + -(-duration_min // 1440)
    ctx.course.crs.append((onset_day, end_day, grade))
    return ev


def _set_neutrophils(c: DiseaseCourse, nadir: float, recovery_start: int, tau: float) -> None:
    h = c.neutrophils
    c.neutrophils = Haem(h.base, min(0.95, nadir / h.base), min(h.nadir_day, recovery_start - 1), recovery_start,
                         tau)


def _dlt_crs(ctx: SubjectContext) -> list[AEvent]:
    return [_crs(ctx, 3, 4, 5 * 1440, True)]


def _dlt_icans(ctx: SubjectContext) -> list[AEvent]:
    return [_ev(ctx, "icans", 4, 6, _days(ctx.rng, 4, 6), "certain", (LIFE_THREATENING, HOSPITALISATION))]


def _dlt_related_nonhaem(ctx: SubjectContext) -> list[AEvent]:
    return [_ev(ctx, "alt", 3, 10, 12 * 1440, "possible")]


def _dlt_neutropenia(ctx: SubjectContext) -> list[AEvent]:
    _set_neutrophils(ctx.course, 0.12, 38, 6.0)
    return [_ev(ctx, "neutropenia", 4, 3, (44 - 3) * 1440, "probable")]


def _look_neutropenia_g3(ctx: SubjectContext) -> list[AEvent]:
    _set_neutrophils(ctx.course, 0.7, 14, 4.0)
    return [_ev(ctx, "neutropenia", 3, 3, _days(ctx.rng, 14, 18), "probable")]


def _look_neutropenia_g4(ctx: SubjectContext) -> list[AEvent]:
    _set_neutrophils(ctx.course, 0.3, 13, 4.0)
    return [_ev(ctx, "neutropenia", 4, 2, _days(ctx.rng, 14, 18), "probable")]


def _look_crs_48h(ctx: SubjectContext) -> list[AEvent]:
    return [_crs(ctx, 3, 3, 40 * HOURS, True)]


def _look_related_3d(ctx: SubjectContext) -> list[AEvent]:
    return [_ev(ctx, "ast", 3, 8, 3 * 1440, "possible")]


def _look_grade2_late(ctx: SubjectContext) -> list[AEvent]:
    return [_ev(ctx, "zoster", 2, ctx.rng.randint(45, 90), _days(ctx.rng, 10, 14), "possible")]


def _look_related_late(ctx: SubjectContext) -> list[AEvent]:
    return [_ev(ctx, "pneumonia", 3, ctx.rng.randint(40, 60), 10 * 1440, "possible", (HOSPITALISATION,))]


def _look_unrelated_long(ctx: SubjectContext) -> list[AEvent]:
    return [_ev(ctx, "uti", 3, 14, 9 * 1440, "unlikely", (HOSPITALISATION,))]


def _pre_infusion(ctx: SubjectContext) -> list[AEvent]:
    return [_ev(ctx, "nausea", ctx.rng.choice((1, 2)), -4, _days(ctx.rng, 1, 2), "unlikely",
                onset_min=(600, 1080))]


SCENARIO_EVENTS: dict[str, Callable[[SubjectContext], list[AEvent]]] = {
    sc.DLT_CRS_G3_OVER_72H: _dlt_crs,
    sc.DLT_ICANS_G4: _dlt_icans,
    sc.DLT_RELATED_NONHAEM_G3_OVER_7D: _dlt_related_nonhaem,
    sc.DLT_NEUTROPENIA_G4_BEYOND_D30: _dlt_neutropenia,
    sc.LOOK_NEUTROPENIA_G3_RECOVERED: _look_neutropenia_g3,
    sc.LOOK_NEUTROPENIA_G4_RECOVERED: _look_neutropenia_g4,
    sc.LOOK_CRS_G3_WITHIN_48H: _look_crs_48h,
    sc.LOOK_RELATED_NONHAEM_G3_3D: _look_related_3d,
    sc.LOOK_GRADE2_AFTER_D30: _look_grade2_late,
    sc.LOOK_RELATED_NONHAEM_G3_AFTER_D30: _look_related_late,
    sc.LOOK_UNRELATED_NONHAEM_G3_OVER_7D: _look_unrelated_long,
    sc.PRE_INFUSION_AE: _pre_infusion,
}


def _cytopenia_grade(term: str, nadir: float) -> int:
    limits = (0.5, 1.0, 1.5) if term == "neutropenia" else (25.0, 50.0, 75.0)
    return next((4 - i for i, limit in enumerate(limits) if nadir < limit), 0)


def _cytopenias(ctx: SubjectContext, skip_neutropenia: bool) -> list[AEvent]:
    out = []
    window_complete = ctx.day1 + timedelta(days=DLT_WINDOW_DAYS) < DATA_CUT
    for term, h in (("neutropenia", ctx.course.neutrophils), ("thrombocytopenia", ctx.course.platelets)):
        if term == "neutropenia" and skip_neutropenia:
            continue
        grade = _cytopenia_grade(term, h.nadir())
        if not window_complete:   # not yet known whether a grade 4 would persist past Day 30
            grade = min(grade, 3)
        if grade >= 2:
            onset = max(1, h.nadir_day - 3)
            end = min(h.recovery_start + ctx.rng.randint(2, 5), 25)
            out.append(_ev(ctx, term, grade, onset, (end - onset) * 1440, "probable"))
    return out


def draw_events(ctx: SubjectContext, scenarios: tuple[str, ...]) -> list[AEvent]:
    """All AEs of an enrolled subject (before the data cut); fills ctx.course.crs on the way."""
    rng = ctx.rng
    events: list[AEvent] = []
    for s in scenarios:
        if s in SCENARIO_EVENTS:
            events.extend(SCENARIO_EVENTS[s](ctx))
    terms = {e.term for e in events}
    if "crs" not in terms and rng.random() < CRS_SHARE:
        grade = rng.choice(CRS_GRADES)
        events.append(_crs(ctx, grade, rng.randint(2, 7), _days(rng, 2, 6), serious=grade >= 2))
    events.extend(_cytopenias(ctx, "neutropenia" in terms))
    for term, share, grades, onset, duration, causality in BACKGROUND:
        if term not in terms and rng.random() < share:
            events.append(_ev(ctx, term, rng.choice(grades), rng.randint(*onset), _days(rng, *duration),
                              causality))
    names = [t for t, _, _ in INFECTIONS]
    weights = [w for _, w, _ in INFECTIONS]
    causalities = {t: c for t, _, c in INFECTIONS}
    for _ in range(rng.choice(INFECTION_COUNTS)):
        term = rng.choices(names, weights)[0]
        events.append(_ev(ctx, term, rng.choice((1, 2)), rng.randint(31, 700), _days(rng, 4, 14),
                          causalities[term]))
    for (_, item), ir in ctx.irregular.items():
        if ir.kind == AE_ONGOING:
            events.append(_ev(ctx, item, 2, rng.randint(80, 100), None, "probable", rid=ir.resource_id))
        elif ir.kind == AE_MISSING_GRADE:
            events.append(_ev(ctx, item, None, 9, 10 * 1440, "possible", rid=ir.resource_id))
        elif ir.kind == OVERRIDE_FEVER and "W8" in ctx.visits:
            onset_day = ctx.sd(ctx.visits["W8"].date()) - 1
            events.append(_ev(ctx, "urti", 1, onset_day, 5 * 1440, "unlikely"))
    last = min(ctx.followup_end, DATA_CUT - timedelta(days=1))
    return [e for e in events if e.onset.date() <= last]
