"""EX: the lymphodepleting agents and the study product (``study.yaml`` ``product_name``).

Lymphodepletion = MedicationAdministration (else MedicationStatement/MedicationRequest) whose medication
carries one of ``study.lymphodepletion_codes``; its first date is the *lymphodepletion start* used by the
SLEDAI-2K cytopenia exclusion and the pre-infusion AE rule. The infusion is the roster's Day-1 record; a Day 1
known only from the roster CSV's ``infusion_date`` gives the same EX row — the product on Day 1, dose, route and
time unknown (left empty, never invented) — sourced to the subject's ResearchSubject, ``day1_source`` naming
the CSV line. Dose and route come from the record's dosage (:func:`dosage`: the dose quantity with its UCUM
code, the route code and text) — a MedicationAdministration of the product that dates Day 1 gives them to the
infusion row too; a Procedure carries no dosage, so the infusion row then has the subject's dose level
(``dose_level``, the arm) and no dose. A
product given more than once (``repeated_doses: true``) has one EX record per completed MedicationAdministration
of ``infusion_medication_codes``, Day 1 being the first. Administrations of the product are study treatment,
never concomitant medication: :func:`without_study_product` keeps them out of CM.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from fhir_adapter.crf.models import Exposure, SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.common import codings, first_text
from fhir_adapter.mapping.medication_codes import medication_codings, medication_name
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import DateError, parse_fhir_date, study_day
from fhir_adapter.terminology.codes import R4_MEDICATION_STATUSES

LD_TYPES = ("MedicationAdministration", "MedicationStatement", "MedicationRequest")


def _when(r: dict[str, Any]) -> tuple[str | None, str | None]:
    """(start, end) as written in the resource."""
    rtype = r["resourceType"]
    if rtype == "MedicationRequest":
        period = ((r.get("dispenseRequest") or {}).get("validityPeriod") or {})
        return r.get("authoredOn") or period.get("start"), period.get("end")
    period = r.get("effectivePeriod") or {}
    start = r.get("effectiveDateTime") or period.get("start")
    return start, period.get("end")


def _first_dosage(r: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the first dosage line, its dose quantity) of a medication record: the MedicationAdministration's
    ``dosage.dose`` or the first ``doseAndRate.doseQuantity`` of a statement or order; None without a dosage."""
    lines = r.get("dosage") if r.get("resourceType") != "MedicationRequest" else r.get("dosageInstruction")
    line = (lines[0] if lines else None) if isinstance(lines, list) else lines
    if not isinstance(line, dict):
        return None
    qty = line.get("dose")
    if qty is None:
        rates = line.get("doseAndRate") or [{}]
        qty = rates[0].get("doseQuantity") if isinstance(rates[0], dict) else None
    return line, qty if isinstance(qty, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def dosage(r: dict[str, Any]) -> dict[str, Any]:
    """Dose, dose unit and route of a medication record's (first) dosage (:func:`_first_dosage`) — the UCUM
    ``code`` before the display ``unit`` (the export maps it to CDISC UNIT), a dose that is not a dose
    (:func:`implausible_dose`) left out — and ``route`` (text or display) with ``route_code`` (the first coding's
    code, SNOMED CT in the feeds) of its route."""
    found = _first_dosage(r)
    if found is None:
        return {}
    line, qty = found
    route = line.get("route")
    dose = _number(qty.get("value"))
    return {"dose": dose if dose is not None and math.isfinite(dose) and dose >= 0 else None,
            "dose_unit": qty.get("code") or qty.get("unit"),
            "route": first_text(route), "route_code": next((c for _, c in codings(route) if c), None)}


def implausible_dose(r: dict[str, Any]) -> str | None:
    """Why the dose of a medication record's (first) dosage is not a dose (negative, or not a finite number):
    :func:`dosage` leaves such a dose out, and :func:`_unusable` warns of it."""
    found = _first_dosage(r)
    dose = _number(found[1].get("value")) if found is not None else None
    if found is None or dose is None or (math.isfinite(dose) and dose >= 0):
        return None
    return f"a dose of {dose:g} {found[1].get('code') or found[1].get('unit') or ''}".rstrip() + " is not a dose"


def _unusable(r: dict[str, Any], e: Enrollee, log: RunLog) -> bool:
    """An EX record that cannot say it was given (a status outside the R4 codes, e.g. 'given') is quarantined
    (``unknown-status``), so neither its row nor its date (lymphodepletion start) is used. One whose dose is not
    a dose (:func:`implausible_dose`) keeps its row and date without the dose, with a warning
    ``implausible-dose`` (docs/clinical-rules.md#dose-plausibility)."""
    rtype, status = str(r["resourceType"]), r.get("status")
    if rtype in R4_MEDICATION_STATUSES and status not in R4_MEDICATION_STATUSES[rtype]:
        log.reject(rtype, r.get("id"), "unknown-status", f"status '{status}' is not an R4 {rtype} status code",
                   f"send one of {sorted(R4_MEDICATION_STATUSES[rtype])}", subject_id=e.subject_id, raw=r)
        return True
    problem = implausible_dose(r)
    if problem is not None:
        log.warn(f"{problem}: the record is kept without its dose", resource=f"{rtype}/{r.get('id')}",
                 subject_id=e.subject_id, rule="implausible-dose",
                 fix="correct the dose in the EHR (a positive number, with its unit)")
    return False


def map_exposure(e: Enrollee, resources: list[dict[str, Any]], study: Study, log: RunLog) -> list[Exposure]:
    out: list[Exposure] = []
    tz = study.info.timezone
    for r in resources:
        if r.get("resourceType") not in LD_TYPES:
            continue
        if not set(medication_codings(r, resources)) & study.lymphodepletion_codes:
            continue
        if r.get("status") in ("entered-in-error", "not-done", "cancelled", "not-taken") or _unusable(r, e, log):
            continue
        start, end = _when(r)
        try:
            s = parse_fhir_date(start, tz) if start else None
            en = parse_fhir_date(end, tz) if end else None
        except DateError as exc:
            log.reject(r["resourceType"], r.get("id"), "bad-date", str(exc), "send ISO 8601 dates",
                       subject_id=e.subject_id, raw=r)
            continue
        out.append(Exposure(
            treatment=medication_name(r, resources) or "lymphodepleting agent", kind="lymphodepletion",
            code=next((f"{s_}|{c}" for s_, c in medication_codings(r, resources)
                       if (s_, c) in study.lymphodepletion_codes), None),
            **dosage(r), start=s.datetime if s else None, start_date=s.date if s else None,
            end_date=en.date if en else (s.date if s else None), partial_date=s.partial if s else None,
            study_day=study_day(s.date, e.day1) if s and s.date and e.day1 else None,
            source=SourceRef(resource_type=r["resourceType"], id=str(r.get("id")),
                             version=(r.get("meta") or {}).get("versionId")),
        ))
    doses = _product_doses(e, resources, study, log) if study.info.repeated_doses else []
    out += doses
    if e.day1 and e.infusion and not any(d.source.id == e.infusion.id for d in doses):
        record = next((r for r in resources if r.get("resourceType") == e.infusion.resource_type
                       and str(r.get("id")) == e.infusion.id), {}) if e.infusion.resource_type in LD_TYPES else {}
        if record:
            _unusable(record, e, log)  # the infusion dates Day 1 whatever its dose: a dose not a dose is warned of
        out.append(Exposure(
            treatment=study.info.product_name, kind="infusion", dose_level=e.actual_arm or e.arm, **dosage(record),
            start=e.infusion_time, start_date=e.day1, end_date=e.day1, study_day=1, source=e.infusion,
        ))
    elif e.day1 and e.infusion is None and not doses:   # Day 1 from the roster CSV: no FHIR infusion record
        out.append(Exposure(
            treatment=study.info.product_name, kind="infusion", dose_level=e.actual_arm or e.arm, start=e.infusion_time,
            start_date=e.day1, end_date=e.day1, study_day=1, source=e.research_subject, day1_source=e.day1_source,
        ))
    out.sort(key=lambda x: (x.start_date or dt.date.max, x.treatment))
    return out


def infusion_record(ex: list[Exposure]) -> SourceRef | None:
    """The FHIR record of the (first) infusion among the EX rows; None when only the roster CSV dates it."""
    return next((x.source for x in ex if x.kind == "infusion" and x.day1_source is None), None)


def lymphodepletion_start(ex: list[Exposure]) -> dt.date | None:
    dates = [x.start_date for x in ex if x.kind == "lymphodepletion" and x.start_date]
    return min(dates) if dates else None


_NOT_GIVEN = ("entered-in-error", "not-done", "stopped", "on-hold", "cancelled", "unknown", "in-progress")


def is_study_product(r: dict[str, Any], resources: list[dict[str, Any]], study: Study) -> bool:
    """A MedicationAdministration of the study product (``infusion_medication_codes``)."""
    return (r.get("resourceType") == "MedicationAdministration" and bool(study.infusion_medication_codes)
            and bool(set(medication_codings(r, resources)) & study.infusion_medication_codes))


def without_study_product(resources: list[dict[str, Any]], study: Study) -> list[dict[str, Any]]:
    """``resources`` without the administrations of the study product (EX, not CM)."""
    if not study.infusion_medication_codes:
        return resources
    return [r for r in resources if not is_study_product(r, resources, study)]


def _product_doses(e: Enrollee, resources: list[dict[str, Any]], study: Study, log: RunLog) -> list[Exposure]:
    out: list[Exposure] = []
    for r in resources:
        if not is_study_product(r, resources, study) or r.get("status") in _NOT_GIVEN \
                or r.get("status") not in R4_MEDICATION_STATUSES["MedicationAdministration"] \
                or _unusable(r, e, log):  # a status that is no R4 code: quarantined by roster/day1.py
            continue
        start, end = _when(r)
        try:
            s = parse_fhir_date(start, study.info.timezone) if start else None
            en = parse_fhir_date(end, study.info.timezone) if end else None
        except DateError as exc:
            log.reject(r["resourceType"], r.get("id"), "bad-date", str(exc), "send ISO 8601 dates",
                       subject_id=e.subject_id, raw=r)
            continue
        out.append(Exposure(
            treatment=study.info.product_name, kind="infusion", dose_level=e.actual_arm or e.arm,
            code=next((f"{s_}|{c}" for s_, c in medication_codings(r, resources)
                       if (s_, c) in study.infusion_medication_codes), None),
            **dosage(r),
            start=s.datetime if s else None, start_date=s.date if s else None,
            end_date=en.date if en else (s.date if s else None), partial_date=s.partial if s else None,
            study_day=study_day(s.date, e.day1) if s and s.date and e.day1 else None,
            source=SourceRef(resource_type=r["resourceType"], id=str(r.get("id")),
                             version=(r.get("meta") or {}).get("versionId")),
        ))
    return out
