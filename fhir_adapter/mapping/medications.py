"""Medication resources → CM (:class:`~fhir_adapter.crf.models.ConMed`), driven by ``medications.yaml``.

Reads the four R4 medication resources a server may offer (Vulcan RWD IG: at least one of them):
MedicationStatement, MedicationRequest, MedicationAdministration and MedicationDispense
(FHIR R4 Dosage/Timing; docs/clinical-rules.md#glucocorticoid-orders, docs/clinical-rules.md#dosage-arithmetic).
For each resource, in order:

1. **versions** — the latest version of each id wins (``meta.versionId``, then ``meta.lastUpdated``).
2. **status** — statuses listed under ``used_statuses`` feed CM; a MedicationStatement with a status of
   ``evidence_statuses`` (``not-taken``) is kept in CM with its drug and dates only (no dose needed: it is the
   evidence that makes a glucocorticoid dose 0); any other (``entered-in-error``, ``cancelled``, ``draft``,
   ``not-done``…) is counted (``medications.not-used.<status>``). A MedicationRequest counts only with an
   ``intent`` of ``request_intents`` (orders; a ``plan`` or ``proposal`` is counted ``not-used.intent-<x>``).
3. **drug** — every coding of ``medicationCodeableConcept``, or of the code and the ingredients of a contained
   or referenced Medication, is looked up among the drugs' ingredient RxCUIs, SCD codes and site codes; else
   the medication text is searched for a drug's ``names``. Unknown drugs are kept with class ``other``.
   Drugs of class ``lymphodepletion`` are study treatment (EX) and are counted, not mapped to CM.
   A resource naming no medication at all is quarantined (``no-medication``).
4. **dosage lines** — ``dosage`` / ``dosageInstruction``: lines with the same ``sequence`` (or none) are
   concurrent, one record each; increasing ``sequence`` values are consecutive taper steps, one record each,
   step *n+1* starting the day after step *n* ends. A MedicationAdministration is one record on its date
   with the dose given that day (``frequency_per_day`` None, ``daily_dose_mg`` = the dose).
5. **dose** — ``doseQuantity``; ``doseRange`` reduced to one number by ``range_choice`` (default ``high``);
   ``rateQuantity``/``rateRatio``/``rateRange`` (mass per time: a continuous infusion gives its mg/day; with
   ``Timing.repeat.duration`` the rate × duration is the dose of one administration). Mass units convert to
   mg by UCUM; tablet units (``tablet_units``) — and a dose with no unit (or ``1``), which is a count of units
   of presentation — convert by the strength of the matched SCD/site code, else the Medication's
   ``ingredient.strength``, else the strength in the RxNorm clinical drug name of the coding display or text
   (``predniSONE 5 MG Oral Tablet`` → 5 mg per tablet; :mod:`clinical_drug`) when its dose form is listed
   under ``dose_forms`` with ``unit_dose: true``.
6. **frequency per day** — ``Timing.repeat``: frequency (``frequencyMax`` by ``range_choice``; else the number
   of ``timeOfDay`` or ``when`` entries; else 1) / (period × ``period_days[periodUnit]``), times *k*/7 when
   ``dayOfWeek`` lists *k* days of a daily schedule; else ``Timing.code`` via ``timing_codes``.
   ``daily_dose_mg`` = dose in mg × frequency per day (20 mg QOD = 10 mg/day).
7. **dates** — a line's ``Timing.repeat.boundsPeriod``; else ``boundsDuration`` (or ``count`` ÷ frequency)
   counted from the resource's start; else the resource's own dates: ``effectivePeriod``/``effectiveDateTime``
   (Statement), ``dispenseRequest.validityPeriod`` or ``authoredOn`` + ``expectedSupplyDuration`` (Request),
   ``whenHandedOver`` + ``daysSupply`` (Dispense). Partial dates stay partial (never imputed).
8. **route** — SNOMED route codes and route text via ``route_codes``/``route_text``; else the route of the
   matched SCD code; else the route of the clinical drug name's dose form (``dose_forms``: oral tablet →
   oral). ``systemic`` is True for the systemic routes of ``glucocorticoids.yaml`` (the one list; the study
   loader fills it in as ``systemic_routes``), False for any other known route, None when the route is unknown.
9. **quarantine** — no start date at all, an unreadable date, a taper step without a start; and, for the
   ``dose_required_classes`` (glucocorticoids) on a systemic or unknown route, a dose that cannot be read in
   mg/day. Other classes keep such records with ``daily_dose_mg`` None (counted ``medications.dose-not-mg``).

Examples (tests/mapping/test_medications.py): prednisone 20 mg ``{frequency 1, period 2, periodUnit d}`` →
frequency 0.5, 10 mg/day; 2 ``{tbl}`` of RxNorm 312617 (prednisone 5 mg tablet) BID → 10 mg, 20 mg/day;
``doseRange`` 10–20 mg daily → 20 mg/day (``high``); four sequenced lines with ``boundsDuration`` 7 d →
four records of 7 days each, the second starting on day 8.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fhir_adapter.crf.models import ConMed, SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.cdisc_details import medication_details
from fhir_adapter.mapping.clinical_drug import ClinicalDrug, parse_clinical_drug
from fhir_adapter.mapping.common import (
    Unusable,
    check_code_refs,
    codings,
    latest,
    parse_date_or_reject,
    quantity_unit,
    resolve_code,
    texts,
)
from fhir_adapter.mapping.medication_codes import medication_concept, medication_resource
from fhir_adapter.study.timeline import FhirDate
from fhir_adapter.terminology import units

if TYPE_CHECKING:
    from fhir_adapter.study.load import Study

DrugClass = Literal[
    "glucocorticoid", "immunosuppressant", "antimalarial", "crs_treatment", "lymphodepletion", "other"
]
CmClass = Literal["glucocorticoid", "immunosuppressant", "antimalarial", "crs_treatment", "other"]
SourceKind = Literal["statement", "request", "administration", "dispense"]

KINDS: dict[str, SourceKind] = {
    "MedicationStatement": "statement",
    "MedicationRequest": "request",
    "MedicationAdministration": "administration",
    "MedicationDispense": "dispense",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DrugCode(_Strict):
    """One code of a drug: an RxNorm SCD or a site-local code, with the strength of one unit of presentation."""

    code: str = Field(description="alias|code, the alias declared under code_systems")
    strength_mg: float | None = Field(None, gt=0, description="mg per tablet/unit of presentation")
    route: str | None = Field(None, description="route implied by the dose form (oral tablet → oral)")
    label: str = ""


class DoseForm(_Strict):
    """An RxNorm dose form (lower case, as in the clinical drug name): the route it implies, and whether one
    unit of it (a tablet, a capsule) holds the strength the name gives."""

    route: str | None = None
    unit_dose: bool = False


class Drug(_Strict):
    """A drug of medications.yaml; for glucocorticoids the class and ``rxnorm`` come from glucocorticoids.yaml."""

    rxnorm: str = Field(description="RxNorm ingredient RxCUI")
    drug_class: DrugClass = Field(alias="class")
    names: tuple[str, ...] = Field(default=(), description="lower-case words that name the drug in free text")
    codes: tuple[DrugCode, ...] = ()


class MedicationSettings(_Strict):
    """``mappings/<study>/medications.yaml``."""

    code_systems: dict[str, str]
    drugs: dict[str, Drug]
    used_statuses: tuple[str, ...] = ("active", "completed", "stopped", "on-hold", "in-progress")
    evidence_statuses: tuple[str, ...] = Field(
        ("not-taken",), description="statuses kept in CM with their dates only (evidence that a drug was not taken)")
    range_choice: Literal["high", "mid", "low"] = "high"
    tablet_units: tuple[str, ...] = ("{tbl}", "TAB")
    period_days: dict[str, float]
    timing_codes: dict[str, float]
    route_codes: dict[str, str] = Field(default_factory=dict)
    route_text: dict[str, str] = Field(default_factory=dict)
    systemic_routes: tuple[str, ...] = Field(
        description="routes that count as systemic; owned by glucocorticoids.yaml, filled in by the study loader")
    dose_required_classes: tuple[DrugClass, ...] = ("glucocorticoid",)
    default_frequency_per_day: float | None = Field(None, gt=0)
    dose_forms: dict[str, DoseForm] = Field(default_factory=dict)
    request_intents: tuple[str, ...] = ("order", "original-order", "reflex-order", "filler-order", "instance-order")

    @field_validator("period_days")
    @classmethod
    def _has_day(cls, v: dict[str, float]) -> dict[str, float]:
        if v.get("d") != 1:
            raise ValueError("period_days must give d: 1 (the day is the unit of frequency_per_day)")
        return v

    @model_validator(mode="after")
    def _aliases_declared(self) -> MedicationSettings:
        if "rxnorm" not in self.code_systems:
            raise ValueError("code_systems must declare the alias 'rxnorm' (ingredient RxCUIs use it)")
        refs = [c.code for d in self.drugs.values() for c in d.codes] + list(self.route_codes)
        check_code_refs(refs, self.code_systems)
        known = set(self.route_codes.values()) | set(self.route_text.values())
        unknown = [r for r in self.systemic_routes if r not in known]
        unknown += [f"{f.route} (dose_forms: {name})" for name, f in self.dose_forms.items()
                    if f.route is not None and f.route not in known]
        if unknown:
            raise ValueError(f"routes {unknown} are not route names of route_codes/route_text")
        return self

    def resolve(self, ref: str) -> tuple[str, str]:
        return resolve_code(ref, self.code_systems)


@dataclass(frozen=True)
class _Drug:
    name: str
    rxnorm: str | None
    drug_class: DrugClass
    strength_mg: float | None
    code_route: str | None


@dataclass
class _Step:
    """The dates of one dosage line (or taper step)."""

    start: FhirDate | None
    end: FhirDate | None


def _add_days(d: FhirDate | None, days: int) -> FhirDate | None:
    if d is None or d.date is None:
        return None
    return FhirDate(date=d.date + dt.timedelta(days=days))


def _label(clinical: ClinicalDrug | None, words: list[str], keys: list[tuple[str, str]]) -> str:
    """Name of a drug the mapping does not list: the clinical drug's ingredient, else its text or code."""
    if clinical is not None:
        return clinical.ingredient
    return words[0].lower() if words else f"{keys[0][0]}|{keys[0][1]}"


class MedicationMapper:
    """Maps the medication resources of one subject; holds no state between subjects but the settings."""

    def __init__(self, study: Study, log: RunLog, settings: MedicationSettings | None = None) -> None:
        self.s = settings or study.rule("medications", MedicationSettings)
        self.log = log
        self.tz = study.info.timezone
        self._index: dict[tuple[str, str], tuple[str, DrugCode | None]] = {}
        rx = self.s.code_systems["rxnorm"]
        for name, drug in self.s.drugs.items():
            self._index[(rx, drug.rxnorm)] = (name, None)
            for c in drug.codes:
                self._index[self.s.resolve(c.code)] = (name, c)
        words = sorted(
            ((w.lower(), n) for n, d in self.s.drugs.items() for w in (n, *d.names)), key=lambda x: -len(x[0])
        )
        self._names = [(re.compile(rf"(?<![\w-]){re.escape(w)}(?![\w-])"), n) for w, n in words]
        self._routes = {self.s.resolve(k): v for k, v in self.s.route_codes.items()}
        self._route_words = sorted(
            ((k.lower(), v) for k, v in self.s.route_text.items()), key=lambda x: -len(x[0])
        )
        self._tablets = set(self.s.tablet_units)

    # -- public ------------------------------------------------------------------------------------
    def map(self, resources: list[dict[str, Any]], subject_id: str) -> list[ConMed]:
        out: list[ConMed] = []
        meds = latest(r for r in resources if r.get("resourceType") in KINDS)
        for r in meds:
            rtype = str(r["resourceType"])
            status = str(r.get("status"))
            if status in self.s.evidence_statuses and rtype == "MedicationStatement":
                try:
                    drug = self._identify(r, resources)
                    start, end = self._resource_dates(r)
                    out.append(self._record(r, drug, _Step(start, end), None, None, None, None, None))
                    self.log.count(f"medications.evidence.{status}")
                except Unusable as rej:
                    self.log.reject(rtype, r.get("id"), rej.rule, rej.reason, rej.fix, subject_id=subject_id, raw=r)
                continue
            if status not in self.s.used_statuses:
                self.log.count(f"medications.not-used.{status}")
                continue
            if rtype == "MedicationRequest" and r.get("intent") not in self.s.request_intents:
                self.log.count(f"medications.not-used.intent-{r.get('intent')}")
                continue
            try:
                drug = self._identify(r, resources)
                if drug.drug_class == "lymphodepletion":
                    self.log.count("medications.study-treatment")
                    continue
                records = self._records(r, drug, subject_id)
                details = medication_details(r, resources)
                records = [c.model_copy(update=details) for c in records]
            except Unusable as rej:
                self.log.reject(
                    rtype, r.get("id"), rej.rule, rej.reason, rej.fix, subject_id=subject_id, raw=r
                )
                continue
            out.extend(records)
        out.sort(key=lambda c: (c.start_date or dt.date.max, c.drug, c.source.id))
        self.log.count("crf.cm", len(out))
        return out

    # -- the drug ----------------------------------------------------------------------------------
    def _identify(self, r: dict[str, Any], siblings: list[dict[str, Any]]) -> _Drug:
        cc = medication_concept(r, siblings)
        med = medication_resource(r, siblings)
        ingredients = [i for i in (med or {}).get("ingredient") or [] if isinstance(i, dict)]
        keys = codings(cc) + [k for i in ingredients for k in codings(i.get("itemCodeableConcept"))]
        words = texts(cc) + [t for i in ingredients for t in texts(i.get("itemCodeableConcept"))]
        name: str | None = None
        code: DrugCode | None = None
        for key in keys:
            if key in self._index:
                name, code = self._index[key]
                if code is not None:
                    break
        if name is None:
            text = " ".join(words).lower()
            name = next((n for pattern, n in self._names if pattern.search(text)), None)
        clinical = next((c for c in map(parse_clinical_drug, texts(cc)) if c is not None), None)
        form = self.s.dose_forms.get(clinical.form) if clinical else None
        strength = code.strength_mg if code else None
        if strength is None:
            strength = self._ingredient_strength(ingredients)
        if strength is None and clinical is not None and form is not None and form.unit_dose:
            strength = clinical.strength_mg
            self.log.count("medications.strength-from-rxnorm-name")
        route = (code.route if code else None) or (form.route if form else None)
        if name is not None:
            d = self.s.drugs[name]
            return _Drug(name, d.rxnorm, d.drug_class, strength, route)
        if not keys and not words:
            raise Unusable(
                "no-medication",
                "the resource names no medication (no code, no text)",
                "send medicationCodeableConcept or a medicationReference the source also holds",
            )
        self.log.count("medications.other-drug")
        rx = self.s.code_systems["rxnorm"]
        rxnorm = next((c for s, c in keys if s == rx), None)
        label = _label(clinical, words, keys)
        return _Drug(label, rxnorm, "other", strength, route)

    def _ingredient_strength(self, ingredients: list[dict[str, Any]]) -> float | None:
        """mg per tablet of a single-ingredient Medication (``ingredient.strength`` numerator/denominator)."""
        strengths = [i["strength"] for i in ingredients if isinstance(i.get("strength"), dict)]
        if len(strengths) != 1:
            return None
        num, den = strengths[0].get("numerator") or {}, strengths[0].get("denominator") or {}
        if num.get("value") is None:
            return None
        den_unit = quantity_unit(den) if den else None
        if den_unit not in (None, "1", *self._tablets):
            return None
        mg = self._mass_mg(float(num["value"]), quantity_unit(num))
        den_value = float(den.get("value") or 1)
        return mg / den_value if mg is not None and den_value > 0 else None

    # -- records -----------------------------------------------------------------------------------
    def _records(self, r: dict[str, Any], drug: _Drug, subject_id: str) -> list[ConMed]:
        if r["resourceType"] == "MedicationAdministration":
            return [self._administration(r, drug)]
        lines = r.get("dosage") if r["resourceType"] == "MedicationStatement" else r.get("dosageInstruction")
        lines = [x for x in lines or [] if isinstance(x, dict)]
        start, end = self._resource_dates(r)
        if not lines:
            self._require_dose(drug, None, "the resource has no dosage", "send Dosage with dose and timing")
            self.log.count("medications.dose-not-mg")
            return [self._record(r, drug, _Step(start, end), None, None, None, None, None)]
        steps = self._steps(lines, start, end)
        out = []
        for line, step in zip(lines, steps, strict=True):
            out.append(self._line_record(r, drug, line, step))
        if len({x.get("sequence") for x in lines if isinstance(x.get("sequence"), int)}) > 1:
            self.log.count("medications.taper-steps", len(lines))
        return out

    def _line_record(self, r: dict[str, Any], drug: _Drug, line: dict[str, Any], step: _Step) -> ConMed:
        timing = line.get("timing") or {}
        route = self._route(line.get("route")) or drug.code_route
        dose, unit, is_rate = self._dose(line)
        per_day = self.frequency_per_day(timing)
        if per_day is None and self.s.default_frequency_per_day and dose is not None and not timing:
            per_day = self.s.default_frequency_per_day
        dose_mg: float | None = None
        daily: float | None = None
        freq: float | None = per_day
        problem: tuple[str, str] | None = None
        if dose is None:
            problem = ("the dosage line has no dose", "send doseAndRate.doseQuantity (or doseRange/rate)")
        elif is_rate:
            daily, freq, problem = self._rate_daily(dose, unit, timing, per_day)
        else:
            dose_mg, problem = self._dose_mg(dose, unit, drug)
            if dose_mg is not None and per_day is None:
                problem = (
                    "the dosage line has no timing (frequency per day unknown)",
                    "send Dosage.timing with repeat.frequency/period or a Timing.code such as QD, BID",
                )
            elif dose_mg is not None and per_day is not None:
                daily = float(f"{dose_mg * per_day:.10g}")
        if daily is None:
            assert problem is not None
            self._require_dose(drug, self._systemic(route), *problem)
            self.log.count("medications.dose-not-mg")
        shown_dose = dose_mg if dose_mg is not None else dose
        shown_unit = "mg" if dose_mg is not None else unit
        return self._record(r, drug, step, route, shown_dose, shown_unit, freq, daily)

    def _administration(self, r: dict[str, Any], drug: _Drug) -> ConMed:
        when = r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start")
        if not when:
            raise Unusable(
                "missing-date",
                "the MedicationAdministration has no effective[x]",
                "send effectiveDateTime (the time the dose was given)",
            )
        day = self._parse(when)
        dosage = r.get("dosage") or {}
        route = self._route(dosage.get("route")) or drug.code_route
        dose: float | None = None
        unit: str | None = None
        daily: float | None = None
        problem: tuple[str, str] | None = None
        if isinstance(dosage.get("dose"), dict) and dosage["dose"].get("value") is not None:
            dose, unit = float(dosage["dose"]["value"]), quantity_unit(dosage["dose"])
            daily, problem = self._dose_mg(dose, unit, drug)
            if daily is not None:
                dose, unit = daily, "mg"
        elif any(k in dosage for k in ("rateQuantity", "rateRatio")):
            dose, unit, _ = self._dose({"doseAndRate": [dosage]})
            daily, problem = self._administered_by_rate(r, dose, unit)
        else:
            problem = ("the administration has no dosage.dose", "send dosage.dose with a mass unit (mg)")
        if daily is None:
            assert problem is not None
            self._require_dose(drug, self._systemic(route), *problem)
            self.log.count("medications.dose-not-mg")
        return self._record(r, drug, _Step(day, day), route, dose, unit, None, daily)

    def _administered_by_rate(
        self, r: dict[str, Any], rate: float | None, unit: str | None
    ) -> tuple[float | None, tuple[str, str] | None]:
        """mg given by an infusion rate: rate × the effectivePeriod's length, else a whole day at that rate."""
        if rate is None:
            return None, ("the administration rate has no value", "send dosage.rateQuantity with a value")
        mg_day, _, problem = self._rate_daily(rate, unit, {}, None)
        period = r.get("effectivePeriod") or {}
        if mg_day is not None and period.get("start") and period.get("end"):
            a, b = self._parse(period["start"]).datetime, self._parse(period["end"]).datetime
            if a is not None and b is not None and b > a:
                return float(f"{mg_day * (b - a).total_seconds() / 86400:.10g}"), None
        return mg_day, problem

    def _record(
        self,
        r: dict[str, Any],
        drug: _Drug,
        step: _Step,
        route: str | None,
        dose: float | None,
        unit: str | None,
        freq: float | None,
        daily: float | None,
    ) -> ConMed:
        if step.start is None:
            raise Unusable(
                "missing-date",
                "no start date: no boundsPeriod, effective[x], authoredOn, validityPeriod or whenHandedOver",
                "send the date the medication started",
            )
        if route is None:
            self.log.count("medications.unknown-route")
        cls: CmClass = "other" if drug.drug_class == "lymphodepletion" else drug.drug_class
        return ConMed(
            drug=drug.name,
            rxnorm=drug.rxnorm,
            drug_class=cls,
            dose=dose,
            dose_unit=unit,
            frequency_per_day=None if freq is None else float(f"{freq:.10g}"),
            daily_dose_mg=daily,
            route=route,
            systemic=self._systemic(route),
            start_date=step.start.date,
            partial_start=step.start.partial,
            end_date=step.end.date if step.end else None,
            partial_end=step.end.partial if step.end else None,
            source_kind=KINDS[r["resourceType"]],
            status=str(r.get("status")),
            source=SourceRef(
                resource_type=str(r["resourceType"]),
                id=str(r.get("id")),
                version=(r.get("meta") or {}).get("versionId"),
            ),
        )

    def _require_dose(self, drug: _Drug, systemic: bool | None, reason: str, fix: str) -> None:
        if drug.drug_class in self.s.dose_required_classes and systemic is not False:
            raise Unusable(
                "dose-not-mg", f"{drug.name}: {reason}; the daily dose in mg cannot be computed", fix
            )

    # -- dates -------------------------------------------------------------------------------------
    def _parse(self, value: Any) -> FhirDate:
        return parse_date_or_reject(value, self.tz)

    def _days(self, duration: Any) -> float | None:
        if not isinstance(duration, dict) or duration.get("value") is None:
            return None
        unit = str(duration.get("code") or duration.get("unit") or "d")
        unit = {"day": "d", "days": "d", "week": "wk", "weeks": "wk", "month": "mo", "months": "mo"}.get(
            unit, unit
        )
        factor = self.s.period_days.get(unit)
        return float(duration["value"]) * factor if factor is not None else None

    def _span_end(self, start: FhirDate | None, days: float | None) -> FhirDate | None:
        if days is None or days <= 0:
            return None
        return _add_days(start, max(math.ceil(days - 1e-9), 1) - 1)

    def _resource_dates(self, r: dict[str, Any]) -> tuple[FhirDate | None, FhirDate | None]:
        rtype = r["resourceType"]
        start_s: Any = None
        end_s: Any = None
        days: float | None = None
        if rtype == "MedicationStatement":
            period = r.get("effectivePeriod") or {}
            start_s, end_s = r.get("effectiveDateTime") or period.get("start"), period.get("end")
        elif rtype == "MedicationRequest":
            dr = r.get("dispenseRequest") or {}
            validity = dr.get("validityPeriod") or {}
            start_s, end_s = validity.get("start") or r.get("authoredOn"), validity.get("end")
            days = self._days(dr.get("expectedSupplyDuration"))
        elif rtype == "MedicationDispense":
            start_s = r.get("whenHandedOver") or r.get("whenPrepared")
            days = self._days(r.get("daysSupply"))
        start = self._parse(start_s) if start_s else None
        end = self._parse(end_s) if end_s else self._span_end(start, days)
        return start, end

    def _bounds(
        self, line: dict[str, Any], start: FhirDate | None
    ) -> tuple[FhirDate | None, FhirDate | None, bool]:
        """(start, end, has_own_start) of a line from Timing.repeat bounds[x] / count."""
        rep = (line.get("timing") or {}).get("repeat") or {}
        bp = rep.get("boundsPeriod") or {}
        own = bool(bp.get("start"))
        s = self._parse(bp["start"]) if own else start
        if bp.get("end"):
            return s, self._parse(bp["end"]), own
        days = self._days(rep.get("boundsDuration"))
        if days is None and isinstance(rep.get("count"), int):
            per_day = self.frequency_per_day(line.get("timing") or {})
            days = rep["count"] / per_day if per_day else None
        return s, self._span_end(s, days), own

    def _steps(
        self, lines: list[dict[str, Any]], start: FhirDate | None, end: FhirDate | None
    ) -> list[_Step]:
        """Dates of each line: unsequenced lines span the resource; sequenced ones are consecutive steps."""
        steps: list[_Step | None] = [None] * len(lines)
        seqs = sorted({x["sequence"] for x in lines if isinstance(x.get("sequence"), int)})
        for i, line in enumerate(lines):
            if not isinstance(line.get("sequence"), int) or len(seqs) == 1:
                s, e, _ = self._bounds(line, start)
                steps[i] = _Step(s, e or end)
        if len(seqs) > 1:
            cursor: FhirDate | None = start
            groups: list[tuple[list[int], _Step]] = []
            for seq in seqs:
                idx = [i for i, x in enumerate(lines) if x.get("sequence") == seq]
                bounds = [self._bounds(lines[i], cursor) for i in idx]
                own = [b for b in bounds if b[2]]
                s = own[0][0] if own else cursor
                e = next((b[1] for b in bounds if b[1] is not None), None)
                if s is None:
                    raise Unusable(
                        "taper-without-dates",
                        f"dosage sequence {seq} has no start date (the step before it has no end)",
                        "give each step a boundsDuration or boundsPeriod",
                    )
                groups.append((idx, _Step(s, e)))
                cursor = _add_days(e, 1) if e else None
            for k, (_, step) in enumerate(groups):
                if step.end is None:
                    nxt = groups[k + 1][1].start if k + 1 < len(groups) else None
                    step.end = (
                        _add_days(nxt, -1) if nxt is not None else (end if k + 1 == len(groups) else None)
                    )
            for idx, step in groups:
                for i in idx:
                    steps[i] = _Step(step.start, step.end)
        return [s if s is not None else _Step(start, end) for s in steps]

    # -- dose and timing ---------------------------------------------------------------------------
    def _pick(self, low: float | None, high: float | None) -> float | None:
        if low is None or high is None:
            return high if low is None else low
        return {"high": high, "low": low, "mid": (low + high) / 2}[self.s.range_choice]

    def _dose(self, line: dict[str, Any]) -> tuple[float | None, str | None, bool]:
        """(value, unit, is_rate) of the first doseAndRate entry that carries a dose or a rate."""
        for dar in line.get("doseAndRate") or []:
            if not isinstance(dar, dict):
                continue
            if isinstance(dar.get("doseQuantity"), dict) and dar["doseQuantity"].get("value") is not None:
                q = dar["doseQuantity"]
                return float(q["value"]), quantity_unit(q), False
            if isinstance(dar.get("doseRange"), dict):
                lo, hi = dar["doseRange"].get("low") or {}, dar["doseRange"].get("high") or {}
                value = self._pick(lo.get("value"), hi.get("value"))
                if value is not None:
                    return float(value), quantity_unit(hi) or quantity_unit(lo), False
            if isinstance(dar.get("rateQuantity"), dict) and dar["rateQuantity"].get("value") is not None:
                q = dar["rateQuantity"]
                return float(q["value"]), quantity_unit(q), True
            if isinstance(dar.get("rateRatio"), dict):
                num, den = dar["rateRatio"].get("numerator") or {}, dar["rateRatio"].get("denominator") or {}
                if num.get("value") is not None and den.get("value"):
                    unit = (
                        f"{quantity_unit(num)}/{quantity_unit(den)}"
                        if float(den["value"]) == 1
                        else f"{quantity_unit(num)}/({den['value']}.{quantity_unit(den)})"
                    )
                    return float(num["value"]), unit, True
            if isinstance(dar.get("rateRange"), dict):
                lo, hi = dar["rateRange"].get("low") or {}, dar["rateRange"].get("high") or {}
                value = self._pick(lo.get("value"), hi.get("value"))
                if value is not None:
                    return float(value), quantity_unit(hi) or quantity_unit(lo), True
        return None, None, False

    def _mass_mg(self, value: float, unit: str | None) -> float | None:
        if unit is None:
            return None
        try:
            return units.convert(value, unit, "mg")
        except units.UnitError:
            return None

    def _dose_mg(
        self, value: float, unit: str | None, drug: _Drug
    ) -> tuple[float | None, tuple[str, str] | None]:
        if unit in self._tablets or (unit in (None, "1") and drug.strength_mg is not None):
            if drug.strength_mg is None:
                return None, (
                    f"dose {value} {unit} in tablets, and the tablet strength is unknown",
                    "send the SCD code, a Medication with ingredient.strength, or add strength_mg to "
                    "the drug's code in medications.yaml",
                )
            return float(f"{value * drug.strength_mg:.10g}"), None
        mg = self._mass_mg(value, unit)
        if mg is None:
            return None, (
                f"dose {value} {unit or '(no unit)'} is not a mass",
                "send the dose in mg (UCUM), or in tablets with a known strength",
            )
        return mg, None

    def _rate_daily(
        self, rate: float, unit: str | None, timing: dict[str, Any], per_day: float | None
    ) -> tuple[float | None, float | None, tuple[str, str] | None]:
        """(mg/day, administrations/day, problem) of a rate; continuous unless repeat.duration is given."""
        try:
            mg_day = units.convert(rate, unit or "", "mg/d")
        except units.UnitError:
            return (
                None,
                per_day,
                (
                    f"rate {rate} {unit or '(no unit)'} is not a mass per time",
                    "send rateQuantity in a mass per time unit such as mg/h",
                ),
            )
        rep = timing.get("repeat") or {}
        length = self._days({"value": rep.get("duration"), "code": rep.get("durationUnit") or "h"})
        if length is not None and per_day is not None:
            return float(f"{mg_day * length * per_day:.10g}"), per_day, None
        return float(f"{mg_day:.10g}"), None, None

    def frequency_per_day(self, timing: dict[str, Any]) -> float | None:
        """Administrations per day of a FHIR ``Timing`` (None when it says nothing about frequency)."""
        rep = timing.get("repeat") or {}
        if any(rep.get(k) for k in ("frequency", "period", "timeOfDay", "when", "dayOfWeek")):
            unit = str(rep.get("periodUnit") or "d")
            unit_days = self.s.period_days.get(unit)
            if unit_days is None:
                return None
            dow = set(rep.get("dayOfWeek") or [])
            if rep.get("frequency"):
                freq = self._pick(rep["frequency"], rep.get("frequencyMax")) or rep["frequency"]
            elif rep.get("timeOfDay"):
                freq = len(rep["timeOfDay"])
            elif rep.get("when"):
                freq = len(rep["when"])
            elif dow and unit_days >= 7:
                freq = len(dow)
            else:
                freq = 1
            period = rep.get("period") or 1
            if rep.get("periodMax"):
                # a longer period is the less frequent schedule: "high" takes the shorter one
                lo, hi = sorted((float(period), float(rep["periodMax"])))
                period = {"high": lo, "low": hi, "mid": (lo + hi) / 2}[self.s.range_choice]
            per_day = float(freq) / (float(period) * unit_days)
            if dow and unit_days < 7:
                per_day *= len(dow) / 7
            return per_day
        cc = timing.get("code")
        if not isinstance(cc, dict):
            return None
        for _, code in codings(cc):
            if code.upper() in self.s.timing_codes:
                return self.s.timing_codes[code.upper()]
        text = str(cc.get("text") or "").strip().upper()
        return self.s.timing_codes.get(text)

    # -- route -------------------------------------------------------------------------------------
    def _route(self, cc: Any) -> str | None:
        for key in codings(cc):
            if key in self._routes:
                return self._routes[key]
        for text in texts(cc):
            low = text.strip().lower()
            for word, name in self._route_words:
                if low == word or re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", low):
                    return name
        return None

    def _systemic(self, route: str | None) -> bool | None:
        if route is None:
            return None
        return route in self.s.systemic_routes
