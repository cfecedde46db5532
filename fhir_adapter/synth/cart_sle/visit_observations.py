"""Scheduled protocol-visit results of one subject: visit dates drawn inside the windows, then each
assessment group's Observations (labs, vitals, CAR-T kinetics), with the planned irregularities applied;
plus the unscheduled daily results during cytokine release syndrome."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

from ..timeline import DATA_CUT, at, study_day_to_date
from .context import SubjectContext
from .irregularities import (
    AMENDED,
    DSDNA_VALUE_STRING,
    DUPLICATE,
    ENTERED_IN_ERROR,
    NO_EFFECTIVE,
    PRELIMINARY,
    UPCR_BELOW_LLOQ,
)
from .kinetics import CELLS_LLOQ, TRANSGENE_LLOQ
from .lab_values import VALUE_MODELS, egfr_ckd_epi_2021
from .schedule import GROUP_ITEMS, GROUP_VISITS, PROTEIN_24H_VISITS, VISIT_BY_ID, VISITS

#: per visit: candidate study days of its window (no Day 0) and their weights (target day most likely)
_DAY_CHOICES: dict[str, tuple[list[int], list[int]]] = {
    v.id: ([d for d in range(v.lo, v.hi + 1) if d != 0],
           [max(1, 4 - abs(d - v.day)) for d in range(v.lo, v.hi + 1) if d != 0])
    for v in VISITS
}
#: visits a subject occasionally misses
_MISSABLE = frozenset({"W3", "W36", "W78"})
_MISS_RATE = 0.02
#: per visit, the assessment groups due (in the order the results are written)
_VISIT_GROUPS: dict[str, tuple[str, ...]] = {
    v.id: tuple(g for g, vs in GROUP_VISITS.items() if v.id in vs and g != "sledai") for v in VISITS
}
_ENTERED_IN_ERROR_PLATELETS = 12.0   # 10^9/L, clumped sample
_UPCR_LLOQ = 0.05                    # mg/mg
_MIN_PER_DAY = 1440


def draw_visits(ctx: SubjectContext, screening: date, protected: frozenset[str]) -> None:
    """Fill ctx.visits: one site-local draw time per protocol visit that happened before the data cut."""
    rng = ctx.rng
    for v in VISITS:
        if v.id == "SCR":
            d = screening
        else:
            days, weights = _DAY_CHOICES[v.id]
            d = study_day_to_date(ctx.day1, rng.choices(days, weights)[0])
        if d >= DATA_CUT or d > ctx.followup_end:
            continue
        if v.id in _MISSABLE and v.id not in protected and rng.random() < _MISS_RATE:
            continue
        ctx.visits[v.id] = at(d, rng.randint(450, 600 if v.id == "D1" else 690))


def _value(ctx: SubjectContext, vid: str, key: str, sd: int, when: datetime) -> float:
    forced = ctx.course.forced.get((vid, key))
    return forced if forced is not None else VALUE_MODELS[key](ctx.course, sd, when.date(), ctx.rng)


def _lab(ctx: SubjectContext, vid: str, key: str, value: float, when: datetime, delay: int) -> str:
    """Write one lab result, applying a planned irregularity; return the id a panel refers to."""
    obs = ctx.obs
    ir = ctx.irregular.get((vid, key))
    if ir is None:
        return obs.lab(key, value, when, delay)
    if ir.kind == AMENDED:
        return obs.lab(key, value, when, delay, status="amended", rid=ir.resource_id, version="2",
                       updated_after_min=ctx.rng.randint(2, 5) * _MIN_PER_DAY)
    if ir.kind == DUPLICATE:
        return obs.lab(key, value, when, delay, rid=ir.related_id, duplicate_id=ir.resource_id)
    if ir.kind == NO_EFFECTIVE:
        return obs.lab(key, value, when, delay, rid=ir.resource_id, effective=False)
    if ir.kind == PRELIMINARY:
        return obs.lab(key, value, when, delay, status="preliminary", rid=ir.resource_id)
    if ir.kind == UPCR_BELOW_LLOQ:
        return obs.lab(key, _UPCR_LLOQ, when, delay, rid=ir.resource_id, comparator="<")
    if ir.kind == DSDNA_VALUE_STRING:
        return obs.lab_string(key, "45", when, delay, rid=ir.resource_id)
    if ir.kind == ENTERED_IN_ERROR:
        obs.lab(key, _ENTERED_IN_ERROR_PLATELETS, when, delay, status="entered-in-error", rid=ir.resource_id,
                version="2", updated_after_min=180)
        redraw = when + timedelta(minutes=ctx.rng.randint(60, 150))
        return obs.lab(key, value, redraw, delay, rid=ir.related_id)
    return obs.lab(key, value, when, delay)


def _cbc(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    c, rng, forced = ctx.course, ctx.rng, ctx.course.forced
    neut = _value(ctx, vid, "neutrophils", sd, when)
    lymph = _value(ctx, vid, "lymphocytes", sd, when)
    other = c.other_wbc.base * c.other_wbc.factor(sd) * (0.92 + 0.16 * rng.random())
    values = {
        "leukocytes": forced.get((vid, "leukocytes"), neut + lymph + other),
        "neutrophils": neut, "lymphocytes": lymph,
        "hemoglobin": _value(ctx, vid, "hemoglobin", sd, when),
        "platelets": _value(ctx, vid, "platelets", sd, when),
    }
    delay = rng.randint(45, 300)
    members = [_lab(ctx, vid, key, values[key], when, delay) for key in GROUP_ITEMS["cbc"]]
    if ctx.site.cbc_panel:
        ctx.obs.panel(members, when, delay)


def _chemistry(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    delay = ctx.rng.randint(60, 360)
    creatinine = ctx.obs.report("creatinine", _value(ctx, vid, "creatinine", sd, when))
    _lab(ctx, vid, "creatinine", creatinine, when, delay)
    egfr = egfr_ckd_epi_2021(creatinine, ctx.course.age_on(when.date()), ctx.course.sex == "female")
    _lab(ctx, vid, "egfr", egfr, when, delay)


def _vitals(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    rng, obs = ctx.rng, ctx.obs
    t = when - timedelta(minutes=rng.randint(5, 25))
    obs.vital("temperature", _value(ctx, vid, "temperature", sd, t), t)
    systolic = round(ctx.course.systolic + rng.randint(-8, 8))
    obs.blood_pressure(systolic, round(systolic * 0.63) + rng.randint(-4, 4), t)
    obs.vital("spo2", _value(ctx, vid, "spo2", sd, t), t)


def _weight(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    t = when - timedelta(minutes=ctx.rng.randint(5, 25))
    ctx.obs.vital("weight", _value(ctx, vid, "weight", sd, t), t)


def _height(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    ctx.obs.vital("height", ctx.course.height, when - timedelta(minutes=ctx.rng.randint(5, 25)))


def _urinalysis(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    t = when + timedelta(minutes=ctx.rng.randint(10, 45))
    delay = ctx.rng.randint(60, 300)
    for key in ("urine_rbc", "urine_wbc", ctx.site.casts_item):
        _lab(ctx, vid, key, _value(ctx, vid, key, sd, t), t, delay)


def _collection_period(ctx: SubjectContext, vid: str, sd: int, when: datetime) -> tuple[datetime, datetime]:
    """24-hour urine collection ending on the visit morning, or starting on it when the day before falls
    outside the visit window; both ends stay inside the window."""
    prev = sd - 1 if sd != 1 else -1
    minutes = ctx.rng.randint(390, 480)
    if prev >= VISIT_BY_ID[vid].lo:
        return at(study_day_to_date(ctx.day1, prev), minutes), at(when.date(), minutes)
    start = at(when.date(), minutes)
    return start, start + timedelta(days=1)


def _urine_protein(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    t = when + timedelta(minutes=ctx.rng.randint(10, 45))
    _lab(ctx, vid, "upcr", _value(ctx, vid, "upcr", sd, t), t, ctx.rng.randint(60, 400))
    if ctx.course.ln and vid in PROTEIN_24H_VISITS:
        start, end = _collection_period(ctx, vid, sd, when)
        if end.date() >= DATA_CUT:
            return
        value = _value(ctx, vid, "protein_24h", sd, end)
        ctx.obs.lab("protein_24h", value, end, ctx.rng.randint(120, 600), period=(start, end))


def _simple_group(group: str, delay: tuple[int, int]) -> Callable[[SubjectContext, str, datetime, int], None]:
    def write(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
        d = ctx.rng.randint(*delay)
        for key in GROUP_ITEMS[group]:
            _lab(ctx, vid, key, _value(ctx, vid, key, sd, when), when, d)

    return write


def _immunology(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    rng = ctx.rng
    delay = rng.randint(600, 4000)
    for key in ("igg", "iga", "igm", "anti_sm", "cd19"):
        _lab(ctx, vid, key, _value(ctx, vid, key, sd, when), when, delay)
    negative = ctx.course.ana_turns_negative and sd >= 300
    ctx.obs.coded("ana", not negative, when, delay)


def _kinetics(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    assert ctx.infusion is not None
    rng, kin = ctx.rng, ctx.course.kinetics
    if vid == "D1":   # the Day 1 sample is drawn before the infusion, whatever day the D1 labs were on
        when = ctx.infusion - timedelta(minutes=rng.randint(45, 120))
    t = (when - ctx.infusion).total_seconds() / 86400.0
    delay = rng.randint(3, 10) * _MIN_PER_DAY + rng.randint(0, 600)
    noise = 0.12 * (rng.random() - 0.5)   # +-0.06 log10 assay noise
    for key, value, lloq in (("car_transgene", kin.transgene(t, noise), TRANSGENE_LLOQ),
                             ("car_cells", kin.cells(t, noise), CELLS_LLOQ)):
        if value < lloq:
            ctx.obs.lab(key, lloq, when, delay, comparator="<")
        else:
            ctx.obs.lab(key, value, when, delay)


def _anti_car(ctx: SubjectContext, vid: str, when: datetime, sd: int) -> None:
    delay = ctx.rng.randint(3, 10) * _MIN_PER_DAY
    ctx.obs.coded("anti_car", sd >= ctx.course.anti_car_positive_from, when, delay)


_GROUP_WRITERS: dict[str, Callable[[SubjectContext, str, datetime, int], None]] = {
    "cbc": _cbc, "chemistry": _chemistry, "vitals": _vitals, "weight": _weight, "height": _height,
    "urinalysis": _urinalysis, "urine_protein": _urine_protein,
    "complement": _simple_group("complement", (120, 1500)), "dsdna": _simple_group("dsdna", (600, 4000)),
    "immunology": _immunology, "inflammation": _simple_group("inflammation", (45, 240)),
    "kinetics": _kinetics, "anti_car": _anti_car,
}


def emit_groups(ctx: SubjectContext, vid: str, when: datetime, groups: tuple[str, ...]) -> None:
    """Results of the given assessment groups drawn at ``when`` (also used outside the trial schedule)."""
    sd = ctx.sd(when.date())
    for group in groups:
        _GROUP_WRITERS[group](ctx, vid, when, sd)


def emit_visit_results(ctx: SubjectContext) -> None:
    for vid, when in ctx.visits.items():
        sd = ctx.sd(when.date())
        for group in _VISIT_GROUPS[vid]:
            _GROUP_WRITERS[group](ctx, vid, when, sd)


def emit_crs_day_results(ctx: SubjectContext) -> None:
    """Daily inflammation labs and twice-daily temperatures on every day of a CRS episode (unscheduled)."""
    rng, c = ctx.rng, ctx.course
    for onset, end, _grade in c.crs:
        for sd in range(onset, end + 1):
            d = study_day_to_date(ctx.day1, sd)
            if d >= DATA_CUT:
                return
            draw = at(d, rng.randint(360, 420))
            delay = rng.randint(45, 180)
            for key in GROUP_ITEMS["inflammation"]:
                ctx.obs.lab(key, VALUE_MODELS[key](c, sd, d, rng), draw, delay)
            for minutes in (rng.randint(480, 540), rng.randint(1200, 1290)):
                t = at(d, minutes)
                ctx.obs.vital("temperature", VALUE_MODELS["temperature"](c, sd, d, rng), t)
