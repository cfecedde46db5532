"""One subject's medication resources → CM records: which resources count, one record per dosage line or
taper step, and what is quarantined (the steps are described in :mod:`fhir_adapter.mapping.medications`)."""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any, Literal

from fhir_adapter.crf.models import ConMed, SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.cdisc_details import medication_details
from fhir_adapter.mapping.common import Unusable, latest, quantity_unit, ucum_unit
from fhir_adapter.mapping.exposure import LD_TYPES
from fhir_adapter.mapping.medication_codes import medication_codings
from fhir_adapter.mapping.medications.dates import MedicationDates, Step
from fhir_adapter.mapping.medications.dose import Problem, dose_mg, line_dose, rate_daily
from fhir_adapter.mapping.medications.identify import DrugIdentifier, IdentifiedDrug
from fhir_adapter.mapping.medications.routes import RouteReader
from fhir_adapter.mapping.medications.settings import CmClass, MedicationSettings
from fhir_adapter.mapping.medications.timing import frequency_per_day, interval_hours
from fhir_adapter.mapping.references import mitigated_by
from fhir_adapter.study.timeline import elapsed
from fhir_adapter.terminology.codes import R4_MEDICATION_STATUSES

if TYPE_CHECKING:
    from fhir_adapter.study.load import Study

SourceKind = Literal["statement", "request", "administration", "dispense"]

KINDS: dict[str, SourceKind] = {
    "MedicationStatement": "statement",
    "MedicationRequest": "request",
    "MedicationAdministration": "administration",
    "MedicationDispense": "dispense",
}



#: where each medication record type says when it stopped (what :meth:`MedicationMapper._flag_assumptions` asks for:
#: the elements the mapping reads, mapping/medications/dates.py)
END_ELEMENT = {
    "MedicationStatement": "effectivePeriod.end",
    "MedicationAdministration": "effectivePeriod.end",
    "MedicationRequest": "dispenseRequest.validityPeriod.end, or the dosageInstruction's "
                         "timing.repeat.boundsPeriod.end",
    "MedicationDispense": "daysSupply",
}

class MedicationMapper:
    """Maps the medication resources of one subject; holds no state between subjects but the settings."""

    def __init__(self, study: Study, log: RunLog, settings: MedicationSettings | None = None) -> None:
        self.s = settings or study.rule("medications", MedicationSettings)
        self.log = log
        self.drugs = DrugIdentifier(self.s, log)
        self.dates = MedicationDates(self.s, study.info.timezone)
        self.routes = RouteReader(self.s)
        self._tablets = set(self.s.tablet_units)
        self.study = study

    def _dose_unit(self, sent: str | None) -> str | None:
        return ucum_unit(self.study, sent, self.log)  # mcg -> ug: the unit synonyms the results use

    def map(self, resources: list[dict[str, Any]], subject_id: str) -> list[ConMed]:
        out: list[ConMed] = []
        meds = latest((r for r in resources if r.get("resourceType") in KINDS), self.log, subject_id)
        mitigated = mitigated_by(resources)
        for r in meds:
            rtype = str(r["resourceType"])
            status = str(r.get("status"))
            if status in self.s.evidence_statuses and rtype == "MedicationStatement":
                try:
                    drug = self.drugs.identify(r, resources)
                    start, end = self.dates.resource_dates(r)
                    out.append(self._record(r, drug, Step(start, end), None, None, None, None, None))
                    self.log.count(f"medications.evidence.{status}")
                except Unusable as rej:
                    self.log.reject(rtype, r.get("id"), rej.rule, rej.reason, rej.fix, subject_id=subject_id, raw=r)
                continue
            if status not in R4_MEDICATION_STATUSES.get(rtype, (status,)):
                self._unknown_status(r, resources, subject_id, out)
                continue
            if status not in self.s.used_statuses:
                self.log.count(f"medications.not-used.{status}")
                continue
            if rtype == "MedicationRequest" and r.get("intent") not in self.s.request_intents:
                self.log.count(f"medications.not-used.intent-{r.get('intent')}")
                continue
            named: IdentifiedDrug | None = None
            try:
                drug = named = self.drugs.identify(r, resources)
                if drug.drug_class == "lymphodepletion":
                    self.log.count("medications.study-treatment")
                    continue
                records = self._records(r, drug)
                details = medication_details(r, resources, mitigated)
                records = [c.model_copy(update=details) for c in records]
            except Unusable as rej:
                self.log.reject(rtype, r.get("id"), rej.rule, rej.reason, rej.fix, subject_id=subject_id, raw=r)
                if named is not None and named.drug_class in self.s.dose_required_classes \
                        and rej.rule != "missing-date":
                    out.extend(self._undosed(r, named))
                continue
            if drug.drug_class in self.s.dose_required_classes:
                self._flag_assumptions(r, records, subject_id)
            out.extend(records)
        out.sort(key=lambda c: (c.start_date or dt.date.max, c.drug, c.source.id))
        self.log.count("crf.cm", len(out))
        return out

    def _unknown_status(self, r: dict[str, Any], resources: list[dict[str, Any]], subject_id: str,
                        out: list[ConMed]) -> None:
        """A status outside the R4 codes ("taking") cannot say whether the drug was taken: quarantined
        (``unknown-status``); a glucocorticoid stays on record without a dose, so the dose on its dates is not
        evaluable rather than the sum of the other records (:meth:`_undosed`)."""
        rtype, status = str(r["resourceType"]), r.get("status")
        if rtype in LD_TYPES and set(medication_codings(r, resources)) & self.study.lymphodepletion_codes:
            return  # EX reads it, and quarantines it (mapping/exposure.py)
        try:
            drug = self.drugs.identify(r, resources)
        except Unusable:
            drug = None
        self.log.reject(rtype, r.get("id"), "unknown-status", f"status '{status}' is not an R4 {rtype} status code",
                        f"send one of {sorted(R4_MEDICATION_STATUSES[rtype])}", subject_id=subject_id, raw=r)
        if drug is not None and drug.drug_class in self.s.dose_required_classes:
            out.extend(self._undosed(r, drug))

    def _flag_assumptions(self, r: dict[str, Any], records: list[ConMed], subject_id: str) -> None:
        """Say where a counted dose rests on a reading the record does not state: a statement completed or
        stopped with no end date counts as ongoing, and an as-needed dose counts as taken every day in full —
        both the side that does not understate the dose (docs/clinical-rules.md#glucocorticoid-daily-dose)."""
        ref = f"{r['resourceType']}/{r.get('id')}"
        if r.get("status") in ("completed", "stopped") and any(c.end_date is None and c.start_date for c in records):
            self.log.warn(f"{ref}: status {r.get('status')} with no end date: counted as ongoing from its start",
                          resource=ref, subject_id=subject_id, rule="medication-no-end-date",
                          fix=f"send the date the medication stopped ({END_ELEMENT[r['resourceType']]})")
        lines = r.get("dosage") if r["resourceType"] != "MedicationRequest" else r.get("dosageInstruction")
        lines = [lines] if isinstance(lines, dict) else lines or []
        if any(isinstance(x, dict) and (x.get("asNeededBoolean") or x.get("asNeededCodeableConcept"))
               for x in lines):
            self.log.warn(f"{ref}: an as-needed dose, counted as taken every day in full", resource=ref,
                          subject_id=subject_id, rule="medication-as-needed",
                          fix="record the doses taken (MedicationAdministration or a statement per course)")

    def _records(self, r: dict[str, Any], drug: IdentifiedDrug) -> list[ConMed]:
        if r["resourceType"] == "MedicationAdministration":
            return [self._administration(r, drug)]
        lines = r.get("dosage") if r["resourceType"] == "MedicationStatement" else r.get("dosageInstruction")
        lines = [x for x in lines or [] if isinstance(x, dict)]
        start, end = self.dates.resource_dates(r)
        if not lines:
            self._require_dose(drug, None, "the resource has no dosage", "send Dosage with dose and timing")
            self.log.count("medications.dose-not-mg")
            return [self._record(r, drug, Step(start, end), None, None, None, None, None)]
        steps = self.dates.steps(lines, start, end)
        out = []
        for line, step in zip(lines, steps, strict=True):
            out.append(self._line_record(r, drug, line, step))
        if len({x.get("sequence") for x in lines if isinstance(x.get("sequence"), int)}) > 1:
            self.log.count("medications.taper-steps", len(lines))
        return out

    def _undosed(self, r: dict[str, Any], drug: IdentifiedDrug) -> list[ConMed]:
        """A record whose dose was quarantined (no dose in mg, no timing, unsequenced taper lines) still says the
        drug was taken over its dates: kept with no dose, so the prednisolone-equivalent dose on those dates is
        not evaluable instead of 0 from an older record (docs/clinical-rules.md#glucocorticoid-daily-dose). Its
        dates and route are read as for a dosed record: each dosage line's own period (boundsDuration,
        boundsPeriod, count) when the lines can be placed, else the resource's dates."""
        try:
            if r["resourceType"] == "MedicationAdministration":
                dosage: dict[str, Any] = r["dosage"] if isinstance(r.get("dosage"), dict) else {}
                when = r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start")
                day = self.dates.parse(when) if when else None
                route = self.routes.route(dosage.get("route")) or drug.code_route
                return [self._record(r, drug, Step(day, day), route, None, None, None, None)]
            key = "dosage" if r["resourceType"] == "MedicationStatement" else "dosageInstruction"
            lines = [x for x in r.get(key) or [] if isinstance(x, dict)]
            start, end = self.dates.resource_dates(r)
            try:
                steps = self.dates.steps(lines, start, end) if lines else [Step(start, end)]
            except Unusable:  # taper lines that cannot be placed: the resource's own dates
                lines, steps = [], [Step(start, end)]
            return [self._record(r, drug, step, self.routes.route(line.get("route")) or drug.code_route,
                                 None, None, None, None)
                    for line, step in zip(lines or [{}], steps, strict=True)]
        except Unusable:
            return []  # no date to place it: quarantined only

    def _line_record(self, r: dict[str, Any], drug: IdentifiedDrug, line: dict[str, Any], step: Step) -> ConMed:
        timing = line.get("timing") or {}
        route = self.routes.route(line.get("route")) or drug.code_route
        dose, unit, is_rate = line_dose(line, self.s.range_choice)
        unit = self._dose_unit(unit)
        self._plausible(drug, dose, unit)
        _check_period(timing)
        per_day = frequency_per_day(timing, self.s)
        if per_day is None and self.s.default_frequency_per_day and dose is not None and not timing:
            per_day = self.s.default_frequency_per_day
        mg: float | None = None
        daily: float | None = None
        freq: float | None = per_day
        problem: Problem | None = None
        if dose is None:
            problem = ("the dosage line has no dose", "send doseAndRate.doseQuantity (or doseRange/rate)")
        elif is_rate:
            daily, freq, problem = rate_daily(dose, unit, timing, per_day, self.s.period_days)
        else:
            mg, problem = dose_mg(dose, unit, drug.strength_mg, self._tablets)
            if mg is not None and per_day is None:
                problem = (
                    "the dosage line has no timing (frequency per day unknown)",
                    "send Dosage.timing with repeat.frequency/period or a Timing.code such as QD, BID",
                )
            elif mg is not None and per_day is not None:
                daily = float(f"{mg * per_day:.10g}")
        if daily is None:
            assert problem is not None
            self._require_dose(drug, self.routes.systemic(route), *problem)
            self.log.count("medications.dose-not-mg")
        else:
            self._plausible(drug, daily, "mg/d")
        shown_dose = mg if mg is not None else dose
        shown_unit = "mg" if mg is not None else unit
        record = self._record(r, drug, step, route, shown_dose, shown_unit, freq, daily)
        record.interval_hours = interval_hours(timing)
        if line.get("asNeededBoolean") or line.get("asNeededCodeableConcept"):
            record.as_needed = True  # CMDOSFRQ PRN; its daily dose still counts in full (_flag_assumptions)
        return record

    def _administration(self, r: dict[str, Any], drug: IdentifiedDrug) -> ConMed:
        """A MedicationAdministration: one record on its date with the dose given that day."""
        when = r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start")
        if not when:
            raise Unusable(
                "missing-date",
                "the MedicationAdministration has no effective[x]",
                "send effectiveDateTime (the time the dose was given)",
            )
        day = self.dates.parse(when)
        dosage = r.get("dosage") or {}
        route = self.routes.route(dosage.get("route")) or drug.code_route
        dose: float | None = None
        unit: str | None = None
        daily: float | None = None
        problem: Problem | None = None
        if isinstance(dosage.get("dose"), dict) and dosage["dose"].get("value") is not None:
            dose, unit = float(dosage["dose"]["value"]), self._dose_unit(quantity_unit(dosage["dose"]))
            self._plausible(drug, dose, unit)
            daily, problem = dose_mg(dose, unit, drug.strength_mg, self._tablets)
            if daily is not None:
                dose, unit = daily, "mg"
        elif any(k in dosage for k in ("rateQuantity", "rateRatio")):
            dose, unit, _ = line_dose({"doseAndRate": [dosage]}, self.s.range_choice)
            unit = self._dose_unit(unit)
            self._plausible(drug, dose, unit)
            daily, problem = self._administered_by_rate(r, dose, unit)
        else:
            problem = ("the administration has no dosage.dose", "send dosage.dose with a mass unit (mg)")
        if daily is None:
            assert problem is not None
            self._require_dose(drug, self.routes.systemic(route), *problem)
            self.log.count("medications.dose-not-mg")
        else:
            self._plausible(drug, daily, "mg/d")
        return self._record(r, drug, Step(day, day), route, dose, unit, None, daily)

    def _administered_by_rate(
        self, r: dict[str, Any], rate: float | None, unit: str | None
    ) -> tuple[float | None, Problem | None]:
        """mg given by an infusion rate: rate × the effectivePeriod's length, else a whole day at that rate."""
        if rate is None:
            return None, ("the administration rate has no value", "send dosage.rateQuantity with a value")
        mg_day, _, problem = rate_daily(rate, unit, {}, None, self.s.period_days)
        period = r.get("effectivePeriod") or {}
        if mg_day is not None and period.get("start") and period.get("end"):
            a, b = self.dates.parse(period["start"]).datetime, self.dates.parse(period["end"]).datetime
            if a is not None and b is not None and b > a:
                return float(f"{mg_day * elapsed(a, b).total_seconds() / 86400:.10g}"), None
        return mg_day, problem

    def _record(
        self,
        r: dict[str, Any],
        drug: IdentifiedDrug,
        step: Step,
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
            systemic=self.routes.systemic(route),
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

    def _plausible(self, drug: IdentifiedDrug, value: float | None, unit: str | None) -> None:
        """Quarantine a dose or rate that is negative or not a finite number, and a daily dose above the class's
        ``max_daily_dose_mg`` (``unit`` ``mg/d``): read as it came, it would lower or swamp the day's sum
        (docs/clinical-rules.md#dose-plausibility)."""
        if value is None:
            return
        shown = f"{value:g} {unit or '(no unit)'}"
        if not math.isfinite(value) or value < 0:
            raise Unusable("implausible-dose", f"{drug.name}: a dose of {shown} is not a dose",
                           "correct the dose in the EHR (a positive number, with its unit)")
        ceiling = self.s.max_daily_dose_mg.get(drug.drug_class)
        if unit == "mg/d" and ceiling is not None and value > ceiling:
            raise Unusable("implausible-dose",
                           f"{drug.name}: {shown} is above the {ceiling:g} mg/day a {drug.drug_class} record may "
                           "give (max_daily_dose_mg in medications.yaml): a unit error, e.g. micrograms sent as mg?",
                           "check the dose and its unit in the EHR")

    def _require_dose(self, drug: IdentifiedDrug, systemic: bool | None, reason: str, fix: str) -> None:
        """Quarantine a dose that cannot be read in mg/day when its class needs one (on a systemic or unknown
        route); other classes keep the record with ``daily_dose_mg`` None."""
        if drug.drug_class in self.s.dose_required_classes and systemic is not False:
            raise Unusable("dose-not-mg", f"{drug.name}: {reason}; the daily dose in mg cannot be computed", fix)


def _check_period(timing: dict[str, Any]) -> None:
    """A ``Timing.repeat`` whose period or frequency is zero or negative says no schedule (a dose every 0 days):
    quarantined rather than read as once a day."""
    rep = timing.get("repeat") if isinstance(timing, dict) else None
    if not isinstance(rep, dict):
        return
    for key in ("period", "periodMax", "frequency", "frequencyMax"):
        value = rep.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            raise Unusable("implausible-dose", f"timing.repeat.{key} is {value}: no schedule can be read from it",
                           f"send a positive timing.repeat.{key} (e.g. frequency 1, period 1, periodUnit d)")
