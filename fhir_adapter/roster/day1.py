"""Day 1 of each subject: the date of the study product's infusion or first dose (docs/clinical-rules.md#day-1),
from what the EHR records.

In order of preference:

1. a completed ``Procedure`` with an infusion code (``study.yaml`` ``infusion_codes``, plus the site's own
   under ``infusion_codes`` in its overlay);
2. a completed ``MedicationAdministration`` of the study product (``study.yaml`` ``infusion_medication_codes``,
   on ``medicationCodeableConcept`` or the referenced/contained ``Medication``);
3. the ``infusion_date`` column of the site roster CSV, for sites whose infusion lives in another system.

The earliest record of the first kind found wins; where each subject's Day 1 came from is reported
(``run-report.json`` → ``day1_sources``). Several records are warned about unless the study gives its product
more than once (``study.yaml`` ``repeated_doses: true``: Day 1 is the first dose), and so is an infusion record
that is not completed (it dates nothing) or a dose of the product on another date than the infusion Procedure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from fhir_adapter.crf.models import SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.common import codings
from fhir_adapter.mapping.medication_codes import medication_codings
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import DateError, parse_fhir_date, site_date
from fhir_adapter.terminology.codes import R4_MEDICATION_STATUSES

#: the one status of a Procedure or MedicationAdministration that says the product was given (R4 ``completed``);
#: another is warned of (an infusion planned, started, interrupted, or in a status no R4 code names), except an
#: entry in error
_GIVEN = "completed"
_SILENT = {"entered-in-error"}


@dataclass(frozen=True)
class RosterInfusion:
    """An infusion date(-time) from the site roster CSV and the line it came from."""

    date: dt.date
    where: str
    at: dt.datetime | None = None  # when the column gives a time of day


def _date(value: Any, study: Study) -> dt.date | None:
    return site_date(value, study.info.timezone)


def _datetime(value: Any, study: Study) -> dt.datetime | None:
    """The date-time of a FHIR dateTime with a time of day, in the site time zone (None for a date)."""
    if not isinstance(value, str):
        return None
    try:
        return parse_fhir_date(value, study.info.timezone).datetime
    except DateError:
        return None


def _ref(r: dict[str, Any]) -> SourceRef:
    return SourceRef(resource_type=str(r.get("resourceType")), id=str(r.get("id")),
                     version=(r.get("meta") or {}).get("versionId"))


def _records(resources: list[dict[str, Any]], study: Study,
             not_given: list[dict[str, Any]] | None = None) -> list[tuple[dict[str, Any], str | None]]:
    """The infusion records of the subject (completed): (resource, its performed/effective time); ``not_given``
    collects the infusion records in another status (an entry in error aside)."""
    out: list[tuple[dict[str, Any], str | None]] = []
    for r in resources:
        rtype = r.get("resourceType")
        if rtype == "Procedure" and set(codings(r.get("code"))) & study.infusion_codes:
            when = r.get("performedDateTime") or (r.get("performedPeriod") or {}).get("start")
        elif rtype == "MedicationAdministration" and study.infusion_medication_codes and \
                r.get("status") in R4_MEDICATION_STATUSES[rtype] and \
                set(medication_codings(r, resources)) & study.infusion_medication_codes:  # else quarantined (EX)
            when = r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start")
        else:
            continue
        if r.get("status") == _GIVEN:
            out.append((r, when))
        elif not_given is not None and r.get("status") not in _SILENT:
            not_given.append(r)
    return out


def with_day1(e: Enrollee, resources: list[dict[str, Any]], study: Study, log: RunLog,
              roster_infusion: RosterInfusion | None = None) -> Enrollee:
    """``e`` with Day 1 and the record it came from (``infusion``, ``day1_source``)."""
    found: list[tuple[int, dt.date, dict[str, Any]]] = []
    times: dict[int, dt.datetime | None] = {}
    for r in resources:  # a dose of the product whose status is no R4 code cannot say it was given
        if r.get("resourceType") == "MedicationAdministration" and study.infusion_medication_codes and \
                r.get("status") not in R4_MEDICATION_STATUSES["MedicationAdministration"] and \
                set(medication_codings(r, resources)) & study.infusion_medication_codes:
            log.reject("MedicationAdministration", r.get("id"), "unknown-status",
                       f"status '{r.get('status')}' is not an R4 MedicationAdministration status code: the dose of "
                       f"{study.info.product_name} it records dates nothing",
                       f"send one of {sorted(R4_MEDICATION_STATUSES['MedicationAdministration'])}",
                       subject_id=e.subject_id, raw=r)
    not_given: list[dict[str, Any]] = []
    for r, when in _records(resources, study, not_given):
        d = _date(when, study)
        if d is None:
            log.warn(f"infusion {r.get('resourceType')} without a full date: not used for Day 1",
                     resource=f"{r.get('resourceType')}/{r.get('id')}", subject_id=e.subject_id, rule="day1")
            continue
        found.append((0 if r.get("resourceType") == "Procedure" else 1, d, r))
        times[id(r)] = _datetime(when, study)
    for r in not_given:  # said, never a Day 1: a planned, started or interrupted infusion is not the infusion
        log.warn(f"infusion {r.get('resourceType')} with status '{r.get('status')}': not taken as the infusion "
                 "(Day 1 needs a completed one)", resource=f"{r.get('resourceType')}/{r.get('id')}",
                 subject_id=e.subject_id, rule="day1",
                 fix="record the infusion as completed once it is given (or entered-in-error if it was not)")
    if found:
        kind = min(k for k, _, _ in found)
        first = sorted((d, str(r.get("id"))) for k, d, r in found if k == kind)
        day1 = first[0][0]
        r = next(r for k, d, r in found if k == kind and d == day1 and str(r.get("id")) == first[0][1])
        if len(first) > 1 and not study.info.repeated_doses:
            log.warn(f"{len(first)} infusion {r['resourceType']}s; Day 1 = the first ({day1})",
                     subject_id=e.subject_id, rule="day1")
        other = sorted({(d, f"{x['resourceType']}/{x.get('id')}") for k, d, x in found if k != kind and d != day1})
        if other and not study.info.repeated_doses:  # a dose of the product on another date than the infusion
            log.warn(f"the infusion {r['resourceType']}/{r.get('id')} dates Day 1 {day1}, but "
                     + ", ".join(f"{ref} records the {study.info.product_name} given on {d}" for d, ref in other)
                     + "; Day 1 = the Procedure's", subject_id=e.subject_id, rule="day1",
                     fix="correct the record whose date is wrong (or mark it entered-in-error)")
        if roster_infusion is not None and roster_infusion.date != day1:
            log.warn(f"the roster CSV gives infusion date {roster_infusion.date} ({roster_infusion.where}) but the "
                     f"EHR records {day1} ({r['resourceType']}/{r.get('id')}); Day 1 = the EHR's",
                     subject_id=e.subject_id, rule="day1")
        ref = _ref(r)
        return replace(e, day1=day1, infusion=ref, infusion_time=times.get(id(r)),
                       day1_source=f"{ref.resource_type}/{ref.id}")
    if roster_infusion is not None:
        return replace(e, day1=roster_infusion.date, infusion=None, infusion_time=roster_infusion.at,
                       day1_source=f"roster CSV {roster_infusion.where}")
    log.warn(f"no completed infusion or dose of {study.info.product_name} (Procedure, MedicationAdministration "
             "of the study product, or infusion_date in the roster CSV): Day 1 unknown, visits cannot be placed",
             subject_id=e.subject_id, rule="day1")
    return e
