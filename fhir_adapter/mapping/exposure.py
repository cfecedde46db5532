"""EX: the lymphodepleting agents and the LCAR-AIO infusion.

Lymphodepletion = MedicationAdministration (else MedicationStatement/MedicationRequest) whose medication
carries one of ``study.lymphodepletion_codes``; its first date is the *lymphodepletion start* used by the
SLEDAI-2K cytopenia exclusion and the pre-infusion AE rule. The infusion is the roster's Day-1 Procedure.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fhir_adapter.crf.models import Exposure, SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.medication_codes import medication_codings, medication_name
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import DateError, parse_fhir_date, study_day

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


def map_exposure(e: Enrollee, resources: list[dict[str, Any]], study: Study, log: RunLog) -> list[Exposure]:
    out: list[Exposure] = []
    tz = study.info.timezone
    for r in resources:
        if r.get("resourceType") not in LD_TYPES:
            continue
        if not set(medication_codings(r, resources)) & study.lymphodepletion_codes:
            continue
        if r.get("status") in ("entered-in-error", "not-done", "cancelled", "not-taken"):
            continue
        start, end = _when(r)
        try:
            s = parse_fhir_date(start, tz) if start else None
            en = parse_fhir_date(end, tz) if end else None
        except DateError as exc:
            log.reject(r["resourceType"], r.get("id"), "bad-date", str(exc), "send ISO 8601 dates",
                       subject_id=e.subject_id, raw=r)
            continue
        dose = (r.get("dosage") or {}).get("dose") if r["resourceType"] == "MedicationAdministration" else None
        out.append(Exposure(
            treatment=medication_name(r, resources) or "lymphodepleting agent", kind="lymphodepletion",
            code=next((f"{s_}|{c}" for s_, c in medication_codings(r, resources)
                       if (s_, c) in study.lymphodepletion_codes), None),
            dose=(dose or {}).get("value"), dose_unit=(dose or {}).get("unit") or (dose or {}).get("code"),
            route=None, start=s.datetime if s else None, start_date=s.date if s else None,
            end_date=en.date if en else (s.date if s else None), partial_date=s.partial if s else None,
            study_day=study_day(s.date, e.day1) if s and s.date and e.day1 else None,
            source=SourceRef(resource_type=r["resourceType"], id=str(r.get("id")),
                             version=(r.get("meta") or {}).get("versionId")),
        ))
    if e.day1 and e.infusion:
        out.append(Exposure(
            treatment=study.info.product_name, kind="infusion", dose_level=e.arm, start_date=e.day1,
            end_date=e.day1, study_day=1, source=e.infusion,
        ))
    out.sort(key=lambda x: (x.start_date or dt.date.max, x.treatment))
    return out


def lymphodepletion_start(ex: list[Exposure]) -> dt.date | None:
    dates = [x.start_date for x in ex if x.kind == "lymphodepletion" and x.start_date]
    return min(dates) if dates else None
