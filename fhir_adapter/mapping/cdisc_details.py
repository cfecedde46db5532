"""The elements the FHIR-to-CDISC Joint Mapping IG reads beyond what the derivations need: Observation category,
LOINC code, method, Specimen (type, fasting status, collection time), identifiers, the original-unit reference
range; NOT DONE results; medication verbatim name, indication, dose form; Immunization into CM; US Core race and
ethnicity. Each function reads one resource and returns plain values (docs/cdisc-mapping.md says which IG row
each one serves)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from fhir_adapter.crf.models import ConMed, NotDone
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.common import (
    codings,
    first_code,
    first_text,
    identifier_value,
    latest,
    normal_range,
    system_code,
)
from fhir_adapter.mapping.history import source_ref
from fhir_adapter.mapping.medication_codes import medication_concept, medication_resource
from fhir_adapter.mapping.references import referenced_identifier, site_qualifiers
from fhir_adapter.source.base import ref_id
from fhir_adapter.study.timeline import DateError, parse_fhir_date, study_day
from fhir_adapter.terminology.codes import NCIT, NCIT_CTCAE_GRADE, OMB_CATEGORY_DISPLAYS

if TYPE_CHECKING:
    from fhir_adapter.study.load import Study

LOINC = "http://loinc.org"
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
ATC = "http://www.whocc.no/atc"
CVX = "http://hl7.org/fhir/sid/cvx"
BODY_POSITION = "http://hl7.org/fhir/StructureDefinition/observation-bodyPosition"
RELATIVE_TIME = "http://hl7.org/fhir/StructureDefinition/cqf-relativeDateTime"
#: UCUM time units of a Duration → ISO 8601 designators (time part when ``T``)
_ISO_UNITS = {"min": ("T", "M"), "h": ("T", "H"), "s": ("T", "S"), "d": ("", "D"), "wk": ("", "W")}
_UNIT_WORDS = {"min": "min", "h": "h", "s": "s", "d": "day", "wk": "week"}
#: fasting status codes (HL7 v2 table 0916 as used by Specimen.collection.fastingStatusCodeableConcept)
FASTING = {"F": True, "NF": False, "NG": None}


def _moment(value: Any, tz: str) -> dt.datetime | None:
    """A full dateTime in the study time zone; None for a date, a partial or an unreadable value."""
    if not isinstance(value, str):
        return None
    try:
        return parse_fhir_date(value, tz).datetime
    except DateError:
        return None


def finding_details(obs: dict[str, Any], part: dict[str, Any], specimen: dict[str, Any] | None,
                    tz: str, timed: bool = False) -> dict[str, Any]:
    """Category, LOINC, method, specimen, identifier and the as-sent reference range of one Observation;
    ``specimen``: :func:`specimen_details` of the Specimen it names (:func:`specimen_id`), if the subject has it.
    A timed collection (a 24-h urine) is dated by the Specimen's collectedPeriod; when no Specimen dates it, by
    the Observation's own ``effectivePeriod`` (start and end: LBDTC, LBENDTC, LBDUR) — ``timed``: a lab result
    (LB); a period whose end is before its start (R4 per-1) dates nothing."""
    cat = (obs.get("category") or [None])[0]
    details: dict[str, Any] = {
        "category": first_code(cat) or first_text(cat),
        "loinc": system_code(part.get("code") or obs.get("code"), LOINC),
        "method": first_text(obs.get("method")),
        "spid": identifier_value(obs),
        "body_site": first_text(obs.get("bodySite")),
        "qualifiers": site_qualifiers(obs),
        **_toxicity(obs),
        "position": _position(obs),
        "performer": next((str(p["display"]) for p in obs.get("performer") or []
                           if isinstance(p, dict) and p.get("display")
                           and str(p.get("reference", "")).startswith("Organization/")), None),
    }
    ranges = part.get("referenceRange") or []
    if (rr := normal_range(ranges)) is not None:  # the same range the CRF's ref_low/ref_high come from
        low, high = rr.get("low") or {}, rr.get("high") or {}
        details["orig_ref_low"] = float(low["value"]) if low.get("value") is not None else None
        details["orig_ref_high"] = float(high["value"]) if high.get("value") is not None else None
    details["ref_text"] = next((rr["text"] for rr in ranges if isinstance(rr, dict) and rr.get("text")), None)
    if specimen is not None:
        position = details["position"]
        details |= specimen
        details["position"] = position or specimen["position"]
    if "timepoint" not in details:  # vital signs have no Specimen: the Observation's own extension
        details |= relative_time(obs)
    period = obs.get("effectivePeriod")
    if timed and isinstance(period, dict) and period.get("end") and details.get("collected") is None:
        start, end = _moment(period.get("start"), tz), _moment(period.get("end"), tz)
        if start is not None and end is not None and end >= start:
            details["collected"], details["collected_end"] = start, end
    return details


def specimen_id(obs: dict[str, Any]) -> str:
    """The id of the Specimen an Observation names ("" when none)."""
    return ref_id((obs.get("specimen") or {}).get("reference"), "Specimen") or ""


def specimen_details(spec: dict[str, Any], tz: str) -> dict[str, Any]:
    """What :func:`finding_details` reads of the Specimen an Observation names (the same for every Observation
    naming it): type, fasting status, collection time, accession, condition, site, whether unsatisfactory,
    its planned time point; ``position``: that of its collection (used when the Observation has none)."""
    coll = spec.get("collection") or {}
    fasting = coll.get("fastingStatusCodeableConcept")
    codes = [c for _, c in codings(fasting)]
    return {
        "specimen": first_text(spec.get("type")),
        "fasting": next((FASTING[c] for c in codes if c in FASTING), None),
        "collected": _moment(coll.get("collectedDateTime") or (coll.get("collectedPeriod") or {}).get("start"), tz),
        "collected_end": _moment((coll.get("collectedPeriod") or {}).get("end"), tz),
        "accession": (spec.get("accessionIdentifier") or {}).get("value"),
        "specimen_condition": first_text((spec.get("condition") or [None])[0]),
        "specimen_site": first_text(coll.get("bodySite")),
        "specimen_unusable": spec.get("status") == "unsatisfactory",
        "position": _position(coll),
        **relative_time(spec),
    }


def relative_time(element: dict[str, Any]) -> dict[str, str]:
    """The planned time point of a cqf-relativeDateTime extension (on a Specimen, the IG's LBTPT/LBELTM path,
    or on the Observation itself): ``timepoint_ref`` = the display of the event it is relative to (sub-extension
    ``target``, the IG's ``reference``), ``elapsed`` = the ``offset`` Duration as signed ISO 8601 (negative
    ``before…``), ``timepoint`` = e.g. ``1 h before LCAR-AIO infusion``. Empty without a readable offset."""
    for ext in element.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") != RELATIVE_TIME:
            continue
        parts = {e.get("url"): e for e in ext.get("extension") or [] if isinstance(e, dict)}
        target = (parts.get("target") or parts.get("reference") or {}).get("valueReference") or {}
        relation = str((parts.get("relationship") or {}).get("valueCode") or "after")
        offset = (parts.get("offset") or {}).get("valueDuration") or {}
        unit, value = offset.get("code") or offset.get("unit"), offset.get("value")
        if unit not in _ISO_UNITS or not isinstance(value, int | float):
            continue
        before = relation.startswith("before")
        part, designator = _ISO_UNITS[unit]
        amount = int(value) if float(value).is_integer() else value
        name = str(target.get("display") or "")
        words = f"{amount} {_UNIT_WORDS[unit]}{'s' if amount != 1 and unit in ('d', 'wk') else ''}"
        return {"elapsed": f"{'-' if before and amount else ''}P{part}{amount}{designator}",
                "timepoint": f"{words} {'before' if before else 'after'} {name}".strip(),
                "timepoint_ref": name}
    return {}


def _toxicity(obs: dict[str, Any]) -> dict[str, Any]:
    """A CTCAE grade sent among Observation.interpretation (an NCIt grade code; ``version`` the CTCAE version)."""
    for cc in obs.get("interpretation") or []:
        for c in (cc or {}).get("coding") or []:
            if c.get("system") == NCIT and c.get("code") in NCIT_CTCAE_GRADE:
                version = f" v{c['version']}" if c.get("version") else ""
                return {"tox_grade": NCIT_CTCAE_GRADE[c["code"]], "tox_scale": f"NCI CTCAE{version}"}
    return {}


def _position(element: dict[str, Any]) -> str | None:
    """The code (else text) of an observation-bodyPosition extension on an Observation or a Specimen.collection."""
    for ext in element.get("extension") or []:
        if ext.get("url") == BODY_POSITION:
            cc = ext.get("valueCodeableConcept")
            return first_code(cc) or first_text(cc)
    return None


def not_done(obs: dict[str, Any], item: str, domain: str, study: Study, day1: dt.date | None,
             specimens: dict[str, dict[str, Any]] | None = None) -> NotDone:
    """A cancelled Observation, or one with a dataAbsentReason and no value, as a NOT DONE record (with the
    Specimen it names: accession, condition, and whether the lab found it unsatisfactory)."""
    reason_cc = obs.get("dataAbsentReason")
    reason = first_text(reason_cc) or next((c for _, c in codings(reason_cc)), None) or str(obs.get("status"))
    when = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start") or obs.get("issued")
    date: dt.date | None = None
    moment: dt.datetime | None = None
    if isinstance(when, str):
        try:
            fd = parse_fhir_date(when, study.info.timezone)
            date, moment = fd.date, fd.datetime
        except DateError:
            pass
    d = study_day(date, day1) if date and day1 else None
    visit = next((v.id for v in study.schedule.visits if d is not None and v.window[0] <= d <= v.window[1]), None)
    cat = (obs.get("category") or [None])[0]
    spec = (specimens or {}).get(ref_id((obs.get("specimen") or {}).get("reference"), "Specimen") or "") or {}
    return NotDone(
        domain=domain,  # type: ignore[arg-type,unused-ignore]
        item=item, reason=reason, datetime=moment, date=date, study_day=d, visit=visit,
        category=first_code(cat),
        loinc=system_code(obs.get("code"), LOINC),
        accession=(spec.get("accessionIdentifier") or {}).get("value"),
        specimen_condition=first_text((spec.get("condition") or [None])[0]),
        specimen_unusable=spec.get("status") == "unsatisfactory",
        status=str(obs.get("status")), source=source_ref(obs),
    )


def medication_details(r: dict[str, Any], siblings: list[dict[str, Any]],
                       mitigated: dict[str, str] | None = None) -> dict[str, Any]:
    """Verbatim name, identifier, indication, dose form, ATC class code and related records of a medication
    resource (CMTRT, CMSPID, CMINDC, CMDOSFRM, CMCLASCD; CMAENO from reasonReference or from the AdverseEvent
    whose mitigatingAction names it — ``mitigated``, see :func:`~fhir_adapter.mapping.references.mitigated_by`;
    CMMHNO from reasonReference)."""
    cc = medication_concept(r, siblings)
    med = medication_resource(r, siblings) or {}
    reasons = r.get("reasonCode") or []
    form = med.get("form")
    cat = r.get("category")
    cat = cat[0] if isinstance(cat, list) and cat else cat
    dosage = r.get("dosage") or r.get("dosageInstruction")
    dosage = dosage[0] if isinstance(dosage, list) and dosage else dosage
    return {
        "category": first_code(cat) or first_text(cat),
        "dose_text": (dosage or {}).get("text") if isinstance(dosage, dict) else None,
        "verbatim": first_text(cc),
        "spid": identifier_value(r),
        "indication": first_text(reasons[0]) if reasons else None,
        "dose_form": first_code(form) or first_text(form),
        "atc": system_code(cc, ATC),
        "ae_spid": referenced_identifier(r, "reasonReference", "AdverseEvent", siblings)
        or (mitigated or {}).get(f"{r.get('resourceType')}/{r.get('id')}"),
        "mh_spid": referenced_identifier(r, "reasonReference", "Condition", siblings),
        "ingredients": active_ingredients(med),
    }


def active_ingredients(medication: dict[str, Any]) -> str | None:
    """CMINGRD: the active ingredients of the Medication a record references (``ingredient.where(isActive)``;
    an ingredient without ``isActive`` counts as active — R4 leaves it optional), names joined by ``; ``."""
    names = []
    for ing in medication.get("ingredient") or []:
        if not isinstance(ing, dict) or ing.get("isActive") is False:
            continue
        item = ing.get("itemCodeableConcept") or ing.get("itemReference") or {}
        name = first_text(item) or item.get("display")
        if name:
            names.append(str(name))
    return "; ".join(names) or None


#: CMINDC of an Immunization that sends no reasonCode: a vaccine is given to prevent the disease
PROPHYLAXIS = "Prophylaxis"


def immunizations(resources: list[dict[str, Any]], subject_id: str, study: Study, log: RunLog) -> list[ConMed]:
    """Immunization (status completed) → CM records of class other, source kind ``immunization``: CMTRT the
    vaccineCode text, CMDECOD the display of its CVX coding (the IG reads CMDECOD from vaccineCode; without a CVX
    coding CMDECOD stays empty) and CMCODE its CVX code; CMINDC the reasonCode, else Prophylaxis."""
    out: list[ConMed] = []
    for r in latest(x for x in resources if x.get("resourceType") == "Immunization"):
        status = str(r.get("status"))
        if status != "completed":
            log.count(f"immunizations.not-used.{status}")
            continue
        vaccine = r.get("vaccineCode")
        name = first_text(vaccine)
        when = r.get("occurrenceDateTime")
        if not name or not isinstance(when, str):
            log.reject("Immunization", r.get("id"), "unreadable", "no vaccineCode text or no occurrenceDateTime",
                       "send vaccineCode with a display and occurrenceDateTime", subject_id=subject_id, raw=r)
            continue
        try:
            fd = parse_fhir_date(when, study.info.timezone)
        except DateError as exc:
            log.reject("Immunization", r.get("id"), "bad-date", str(exc), "send an ISO 8601 occurrenceDateTime",
                       subject_id=subject_id, raw=r)
            continue
        dose = r.get("doseQuantity") or {}
        reasons = r.get("reasonCode") or []
        route = r.get("route")
        cvx = next((c for c in (vaccine or {}).get("coding") or []
                    if isinstance(c, dict) and c.get("system") == CVX and c.get("code")), None)
        out.append(ConMed(
            drug=str((cvx or {}).get("display") or name).lower(), verbatim=name, spid=identifier_value(r),
            indication=first_text(reasons[0]) if reasons else PROPHYLAXIS,
            rxnorm=None, cvx=str(cvx["code"]) if cvx else None, drug_class="other",
            dose=float(dose["value"]) if dose.get("value") is not None else None,
            dose_unit=dose.get("code") or dose.get("unit"),
            route=first_text(route), route_code=next((c for _, c in codings(route)), None),
            start_date=fd.date, partial_start=fd.partial, end_date=fd.date, partial_end=fd.partial,
            source_kind="immunization", status=status, source=source_ref(r),
        ))
    log.count("crf.cm.immunizations", len(out))
    return out


def race_ethnicity(patient: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """US Core race and ethnicity: the ``ombCategory`` code's own display (:data:`OMB_CATEGORY_DISPLAYS`: the
    code decides, whatever display the EHR sent with it), else the coding's display, else the ``text``
    sub-extension; more than one ``ombCategory`` is MULTIPLE."""
    def read(url: str) -> str | None:
        for ext in (patient or {}).get("extension") or []:
            if ext.get("url") != url:
                continue
            subs = ext.get("extension") or []
            omb = [s.get("valueCoding") or {} for s in subs if s.get("url") == "ombCategory"]
            if len(omb) > 1:
                return "MULTIPLE"
            if omb:
                official = OMB_CATEGORY_DISPLAYS.get((str(omb[0].get("system")), str(omb[0].get("code"))))
                if official or omb[0].get("display"):
                    return official or str(omb[0]["display"])
            text = next((s.get("valueString") for s in subs if s.get("url") == "text"), None)
            return str(text) if text else None
        return None
    return read(US_CORE_RACE), read(US_CORE_ETHNICITY)
