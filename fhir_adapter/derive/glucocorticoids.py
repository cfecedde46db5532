"""Prednisolone-equivalent daily glucocorticoid dose on a date, per visit and as a time series.

Definition: equivalent anti-inflammatory doses of the BNF ("prednisolone 5 mg = methylprednisolone 4 mg =
dexamethasone 750 µg = hydrocortisone 20 mg = …") and US tables (betamethasone 0.6 mg), as fixed in
docs/clinical-rules.md#glucocorticoid-equivalence; only systemic routes count
(docs/clinical-rules.md#glucocorticoid-routes).
The factors, RxNorm ingredient codes and systemic routes are data in ``mappings/<study>/glucocorticoids.yaml``.

Which concomitant-medication records (:class:`ConMed`) count; the first case that applies decides:

1. status in ``excluded_statuses`` (entered-in-error, not-taken, …) or ``source_kind`` not in
   ``source_kinds`` (dispenses duplicate their request by default) → ignored;
2. ingredient not in the table (by RxNorm ingredient code, else by lower-case name or alias) → not a
   glucocorticoid of the table; a record with ``drug_class`` glucocorticoid is listed in ``unrecognised``;
3. route known: counted only when it is one of ``systemic_routes`` (oral, intravenous, intramuscular
   by default; the one list of systemic routes, which the medication mapping also uses);
   route unknown: the record's ``systemic`` flag when the mapping set it, else ``count_unknown_route``
   (default true: an unstated route of a prednisolone tablet is oral, and counting it is the conservative
   choice for LLDAS);
4. no ``start_date`` → cannot be placed in time: listed in ``undated``, never counted.

The dose of one counted record on a date D (mg/day of the drug; × factor → prednisolone-equivalent):

* ``administration`` — counts on its ``start_date`` only: ``daily_dose_mg``, else ``dose`` in mg;
* ``statement`` / ``request`` / ``dispense`` — active when start_date ≤ D ≤ end_date (inclusive; no end =
  ongoing): ``daily_dose_mg``, else ``dose`` (mg) × ``frequency_per_day`` — averaged per day, so 20 mg every
  other day (frequency 0.5) is 10 mg/day on every day of the period;
* when ``administrations_replace_orders`` is on and a drug has an administration on D, the statement/request
  records of that drug are not counted on D (the administration is the ground truth for that day);
* when ``statements_replace_orders`` is on and a drug has a statement active on D, the orders (requests) of
  that drug are not counted on D (what was taken beats what was prescribed);
* a counted record whose daily dose cannot be computed (no dose, unit not convertible to mg, no frequency)
  makes the dose on D not evaluable: None, with the reason and the record.

Dose on D = Σ over counted records of daily mg × factor, rounded to 3 decimals. No counted record active on D:
missing is not zero (docs/clinical-rules.md#missing-is-not-zero); the first case that applies decides:

a. a glucocorticoid MedicationStatement of the table, by a systemic route (as in step 3; a topical cream that
   ended says nothing about systemic steroids), says the drug is not taken on D (status in
   ``not_taken_statuses`` covering D) or was stopped before D (status in ``stopped_statuses``, ended before D)
   → 0, citing those records (``basis`` ``record``);
b. ``medication_list_complete`` (a site declares its EHR's medication list complete) → 0, citing the
   setting and the medication records read (``basis`` ``medication-list-complete``);
c. otherwise → None ("no glucocorticoid record"): the dose is missing, and LLDAS's steroid criterion is not
   assessable.

Examples (docs/clinical-rules.md#glucocorticoid-daily-dose): prednisone 20 mg QOD → 10; methylprednisolone
16 mg daily → 20; dexamethasone 1.5 mg daily → 1.5 × 6.67 = 10.005; hydrocortisone 20 mg AM + 10 mg PM
(two records) → 7.5; a 4-week taper 20/15/10/7.5 → 7.5 on day 28; topical betamethasone → 0;
IV methylprednisolone 500 mg administrations on 3 days → 625 on each of those days and 0 on the day after.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fhir_adapter.crf.models import ConMed, SubjectCRF
from fhir_adapter.numbers import round_half_up
from fhir_adapter.study.timeline import study_day

_MG_PER_UNIT = {"mg": 1.0, "g": 1000.0, "ug": 0.001, "mcg": 0.001, "µg": 0.001}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Glucocorticoid(_Strict):
    name: str = Field(description="ingredient name, lower case")
    rxnorm: str | None = Field(None, description="RxNorm ingredient RxCUI")
    factor: float = Field(gt=0, description="prednisolone-equivalent mg per mg of this drug")
    aliases: tuple[str, ...] = Field(
        default=(), description="other names of the ingredient a record may carry (lower case), matched like `name` "
        "when no RxCUI matches")


class GlucocorticoidSettings(_Strict):
    drugs: tuple[Glucocorticoid, ...] = Field(
        description="the glucocorticoids, one row per ingredient: the one list (medications.yaml takes their class and "
        "RxCUI from it)")
    systemic_routes: tuple[str, ...] = Field(
        ("oral", "intravenous", "intramuscular"),
        description="route names whose doses count; CM's systemic flag is set from them too "
        "(docs/clinical-rules.md#glucocorticoid-routes)")
    count_unknown_route: bool = Field(
        True, description="a record without a route counts (true) or not (false), unless the mapping set its systemic "
        "flag")
    source_kinds: tuple[str, ...] = Field(
        ("statement", "request", "administration"),
        description="which records count: statement, request, administration, dispense (a dispense repeats the "
        "request it fills)")
    administrations_replace_orders: bool = Field(
        True, description="on a date with an administration of a drug, that drug's other records are not counted "
        "that day")
    statements_replace_orders: bool = Field(
        True, description="on a date with an active statement of a drug, that drug's requests (orders) are not counted "
        "that day (docs/clinical-rules.md#glucocorticoid-records)")
    excluded_statuses: tuple[str, ...] = Field(
        ("entered-in-error", "not-taken", "not-done", "cancelled", "draft"),
        description="record statuses that never count toward the dose")
    decimals: int = Field(3, ge=0, le=6, description="decimals the mg/day dose is rounded to (half up)")
    not_taken_statuses: tuple[str, ...] = Field(
        ("not-taken",), description="statement statuses that show a dose of 0 on the dates the statement covers "
        "(docs/clinical-rules.md#missing-is-not-zero)")
    stopped_statuses: tuple[str, ...] = Field(
        ("stopped", "completed"), description="statement statuses that show a dose of 0 after the statement's end "
        "date")
    medication_list_complete: bool = Field(
        False, description="the EHR's medication list is complete: with no counted record on a date, the dose is 0 "
        "(a site overlay may set it)")

    @model_validator(mode="after")
    def _unique_keys(self) -> GlucocorticoidSettings:
        seen: dict[str, str] = {}
        for d in self.drugs:
            for key in (d.name, *d.aliases, *([f"rxnorm:{d.rxnorm}"] if d.rxnorm else [])):
                if key in seen and seen[key] != d.name:
                    raise ValueError(f"'{key}' names both {seen[key]} and {d.name}")
                seen[key] = d.name
        allowed = {"statement", "request", "administration", "dispense"}
        unknown = sorted(set(self.source_kinds) - allowed)
        if unknown:
            raise ValueError(f"unknown source_kinds {unknown}; use {sorted(allowed)}")
        return self

    def lookup(self, cm: ConMed) -> Glucocorticoid | None:
        """The table row of a record: by RxNorm ingredient code first, else by name or alias."""
        for d in self.drugs:
            if cm.rxnorm and d.rxnorm == cm.rxnorm:
                return d
        name = cm.drug.strip().lower()
        return next((d for d in self.drugs if name == d.name or name in d.aliases), None)


class PredEqDose(BaseModel):
    """Prednisolone-equivalent dose on one date."""

    date: dt.date
    mg_per_day: float | None
    sources: list[str] = Field(default_factory=list, description="records that contributed")
    reason: str | None = Field(None, description="why the dose is not evaluable")
    basis: str | None = Field(None, description="doses | record | medication-list-complete (what a 0 rests on)")


class PredEqVisit(BaseModel):
    visit: str
    date: dt.date | None
    study_day: int | None = None
    mg_per_day: float | None
    sources: list[str] = Field(default_factory=list)
    reason: str | None = None
    basis: str | None = None


class SeriesPoint(BaseModel):
    date: dt.date
    study_day: int | None
    mg_per_day: float | None


class GlucocorticoidSeries(BaseModel):
    """Step series of the dose: a point on the first date and on every date the dose changes."""

    points: list[SeriesPoint] = Field(default_factory=list)
    undated: list[str] = Field(default_factory=list, description="counted records without a start date")
    unrecognised: list[str] = Field(default_factory=list, description="glucocorticoids not in the table")


def _systemic(cm: ConMed, s: GlucocorticoidSettings) -> bool:
    if cm.route:
        return cm.route.strip().lower() in s.systemic_routes
    if cm.systemic is not None:
        return cm.systemic
    return s.count_unknown_route


def _counted(cms: Iterable[ConMed], s: GlucocorticoidSettings) -> list[tuple[ConMed, Glucocorticoid]]:
    out = []
    for cm in cms:
        if (cm.status or "") in s.excluded_statuses or cm.source_kind not in s.source_kinds:
            continue
        drug = s.lookup(cm)
        if drug is None or not _systemic(cm, s):
            continue
        out.append((cm, drug))
    return out


def _dose_mg(cm: ConMed) -> float | None:
    if cm.dose is None or cm.dose_unit is None:
        return None
    factor = _MG_PER_UNIT.get(cm.dose_unit.strip())
    return cm.dose * factor if factor is not None else None


def _daily_mg(cm: ConMed) -> tuple[float | None, str | None]:
    """Daily mg of the drug itself and, when unknown, why."""
    if cm.daily_dose_mg is not None:
        return cm.daily_dose_mg, None
    if cm.dose is None:
        return None, "no dose that can be read (the record is in the quarantine with the reason)"
    mg = _dose_mg(cm)
    if mg is None:
        return None, f"dose {cm.dose!r} {cm.dose_unit!r} is not a mass in mg/g/ug"
    if cm.source_kind == "administration":
        return mg, None
    if cm.frequency_per_day is None:
        return None, "no frequency_per_day"
    return mg * cm.frequency_per_day, None


def active_on(cm: ConMed, day: dt.date) -> bool:
    """Whether a record covers ``day``: an administration on its date(s), an order or statement from start
    through end inclusive (no end = ongoing); a record without a start date never does."""
    if cm.start_date is None:
        return False
    if cm.source_kind == "administration":
        return cm.start_date <= day <= (cm.end_date or cm.start_date)
    return cm.start_date <= day and (cm.end_date is None or day <= cm.end_date)


def _edges(cm: ConMed) -> tuple[dt.date, ...]:
    """The days on which :func:`active_on` of ``cm`` may change, and the day after its end (when a stopped
    statement starts to show a zero dose): its start, the day after it and the day after its end."""
    if cm.start_date is None:
        return ()
    one = dt.timedelta(days=1)
    return (cm.start_date, cm.start_date + one, *((cm.end_date + one,) if cm.end_date is not None else ()))


def _zero_evidence(cms: Iterable[ConMed], s: GlucocorticoidSettings) -> list[ConMed]:
    """Systemic glucocorticoid statements that can show a zero dose: not taken, or stopped/completed with an
    end. A record by another route is no evidence: a finished hydrocortisone cream does not show that no
    systemic steroid is taken."""
    out = []
    for cm in cms:
        if cm.source_kind != "statement" or s.lookup(cm) is None or cm.start_date is None or not _systemic(cm, s):
            continue
        if (cm.status or "") in s.not_taken_statuses or \
                ((cm.status or "") in s.stopped_statuses and cm.end_date is not None):
            out.append(cm)
    return out


def _showing_zero(evidence: Sequence[ConMed], day: dt.date, s: GlucocorticoidSettings) -> list[str]:
    """The statements that show a zero dose on ``day``: not taken and covering it, or stopped before it."""
    return [cm.source.reference for cm in evidence
            if ((cm.status or "") in s.not_taken_statuses and active_on(cm, day))
            or ((cm.status or "") in s.stopped_statuses and cm.end_date is not None and cm.end_date < day)]


def _zero_on(evidence: Sequence[ConMed], read: Sequence[str], day: dt.date,
             s: GlucocorticoidSettings) -> PredEqDose:
    """The dose on a day with no counted record active (cases a-c of the module docstring)."""
    shown = _showing_zero(evidence, day, s)
    if shown:
        return PredEqDose(date=day, mg_per_day=0.0, sources=sorted(set(shown)), basis="record")
    if s.medication_list_complete:
        return PredEqDose(date=day, mg_per_day=0.0, sources=sorted(set(read)), basis="medication-list-complete")
    return PredEqDose(date=day, mg_per_day=None, basis=None,
                      reason=f"no glucocorticoid record by a counted route ({', '.join(s.systemic_routes)}) covers "
                             "the date: the dose is missing, not 0 (a record of the drug stopped or not taken, or "
                             "a site declaring its medication list complete, would make it 0)")


def _dose_on(
    counted: Sequence[tuple[ConMed, Glucocorticoid]], day: dt.date, s: GlucocorticoidSettings,
    evidence: Sequence[ConMed] = (), read: Sequence[str] = (),
) -> PredEqDose:
    active = [(cm, g) for cm, g in counted if active_on(cm, day)]
    if not active:
        return _zero_on(evidence, read, day, s)
    if s.administrations_replace_orders:
        administered = {g.name for cm, g in active if cm.source_kind == "administration"}
        active = [(cm, g) for cm, g in active
                  if cm.source_kind == "administration" or g.name not in administered]
    if s.statements_replace_orders:
        stated = {g.name for cm, g in active if cm.source_kind == "statement"}
        active = [(cm, g) for cm, g in active if cm.source_kind != "request" or g.name not in stated]
    total = 0.0
    sources = []
    for cm, g in active:
        mg, why = _daily_mg(cm)
        if mg is None:
            return PredEqDose(date=day, mg_per_day=None, sources=[cm.source.reference],
                              reason=f"{cm.drug} ({cm.source.reference}): {why}")
        total += mg * g.factor
        sources.append(cm.source.reference)
    return PredEqDose(date=day, mg_per_day=round_half_up(total, s.decimals), sources=sorted(set(sources)),
                      basis="doses")


def pred_eq_on(cms: Iterable[ConMed], day: dt.date, settings: GlucocorticoidSettings) -> PredEqDose:
    """Prednisolone-equivalent mg/day on ``day`` (cases of the module docstring)."""
    cms = list(cms)
    return _dose_on(_counted(cms, settings), day, settings, _zero_evidence(cms, settings),
                    [cm.source.reference for cm in cms])


def record_pred_eq(cms: Iterable[ConMed], settings: GlucocorticoidSettings) -> list[ConMed]:
    """Copies of ``cms`` with ``pred_eq_daily_mg``: the prednisolone-equivalent mg/day a record adds to the
    dose on a day it is active — its daily mg (:func:`_daily_mg`) × the table's factor, rounded to
    ``decimals`` — for each record the dose counts (steps 1-3 of the module docstring: status, source kind,
    in the table, systemic route); None for any other record (not a glucocorticoid of the table, topical,
    a dispense, entered-in-error...) and for a counted record whose daily dose cannot be computed.
    Methylprednisolone 16 mg daily → 20; prednisone 20 mg every other day → 10."""
    cms = list(cms)
    factor = {id(cm): g.factor for cm, g in _counted(cms, settings)}
    out = []
    for cm in cms:
        mg = _daily_mg(cm)[0] if id(cm) in factor else None
        value = round_half_up(mg * factor[id(cm)], settings.decimals) if mg is not None else None
        out.append(cm.model_copy(update={"pred_eq_daily_mg": value}))
    return out


def derive_pred_eq(crf: SubjectCRF, settings: GlucocorticoidSettings) -> list[PredEqVisit]:
    """Prednisolone-equivalent mg/day on the date of every dated scheduled visit of ``crf`` — the visits of
    ``results/study.json``: an unscheduled visit (``UNS<day>``, made by a result outside every window) is kept
    off the results, and so off the write-back."""
    counted = _counted(crf.cm, settings)
    evidence, read = _zero_evidence(crf.cm, settings), [cm.source.reference for cm in crf.cm]
    out = []
    for v in crf.visits:
        if v.date is None or v.unscheduled:
            continue
        dose = _dose_on(counted, v.date, settings, evidence, read)
        out.append(PredEqVisit(visit=v.visit, date=v.date, study_day=v.study_day, mg_per_day=dose.mg_per_day,
                               sources=dose.sources, reason=dose.reason, basis=dose.basis))
    return out


def glucocorticoid_series(
    crf: SubjectCRF,
    settings: GlucocorticoidSettings,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> GlucocorticoidSeries:
    """Daily dose from ``start`` (default: the first visit date, else Day 1) through ``end`` (default: the
    last visit date), as change points for a step plot."""
    dated = [v.date for v in crf.visits if v.date is not None]
    start = start or (min(dated) if dated else crf.day1)
    end = end or (max(dated) if dated else crf.day1)
    counted = _counted(crf.cm, settings)
    evidence, read = _zero_evidence(crf.cm, settings), [cm.source.reference for cm in crf.cm]
    series = GlucocorticoidSeries(
        undated=sorted(cm.source.reference for cm, _ in counted if cm.start_date is None),
        unrecognised=sorted(cm.source.reference for cm in crf.cm
                            if cm.drug_class == "glucocorticoid" and settings.lookup(cm) is None),
    )
    if start is None or end is None:
        return series
    last: float | str | None = "start"
    # the dose is a function of which counted records are active (and, with none, of whether a statement
    # shows a zero dose), which changes only on a record's edges: worked out on those days and once per state
    records = [cm for cm, _ in counted] + evidence
    edges = {day for cm in records for day in _edges(cm) if start < day <= end}
    days = sorted({start} | edges) if start <= end else []
    doses: dict[tuple[object, ...], float | None] = {}
    for day in days:
        active = tuple(i for i, (cm, _) in enumerate(counted) if active_on(cm, day))
        state = active or ((), bool(_showing_zero(evidence, day, settings)))
        if state in doses:
            mg = doses[state]
        else:
            mg = doses[state] = _dose_on(counted, day, settings, evidence, read).mg_per_day
        if mg != last:
            sd = study_day(day, crf.day1) if crf.day1 else None
            series.points.append(SeriesPoint(date=day, study_day=sd, mg_per_day=mg))
            last = mg
    return series
