"""What else a hospital export holds about a study subject, for the MH, PR and CM exports and the CDISC columns:
past and current conditions, allergies, immunizations, procedures other than the infusion, US Core race and
ethnicity, and the occasional cancelled laboratory order.

Drawn from the subject's own second random stream (``Random(seed ^ HISTORY_SALT)``), so the resources of the
main stream — and every count the end-to-end tests pin against the plan — are unchanged. Shares are rough
prevalences of an adult SLE clinic; codes are ICD-10-CM, CVX, US Core OMB categories, or the hospital's own
procedure catalogue (a local code system, as EHRs send)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from random import Random
from typing import Any

from fhir_adapter.terminology.codes import DATA_ABSENT_REASON, ICD10CM, LOINC, MEDDRA, SNOMED

from ..ids import new_id
from ..timeline import DATA_CUT, at, fmt_local, fmt_utc
from .context import Resource, SubjectContext
from .plan import SubjectPlan

HISTORY_SALT = 0x5EED_C015
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CLINICAL_STATUS = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
CVX = "http://hl7.org/fhir/sid/cvx"
OMB = "urn:oid:2.16.840.1.113883.6.238"
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
ROUTE_IM = ("78421000", "Intramuscular route")
PROCEDURE_CATALOGUE = "https://hospital.example.org/fhir/CodeSystem/procedure-catalogue"
DIAGNOSTIC = ("103693007", "Diagnostic procedure")
SURGICAL = ("387713003", "Surgical procedure")
THERAPEUTIC = ("277132007", "Therapeutic procedure")
OXYGEN_THERAPY = ("57485005", "Oxygen therapy")
TARGET_BODY_STRUCTURE = "http://hl7.org/fhir/StructureDefinition/procedure-targetBodyStructure"
#: SNOMED CT location qualifiers (FHIR value set bodystructure-relative-location)
LEFT, RIGHT = ("419161000", "Unilateral left"), ("419465000", "Unilateral right")
LOWER, POSTERIOR = ("261122009", "Lower"), ("255551008", "Posterior")
#: ICD-10-CM → MedDRA LLT of the comorbidities the problem list codes in both
MEDDRA_CODED = {"B02.9": "10019974"}
#: salt of the stream for the procedure details added after the history stream was fixed
DETAIL_SALT = 0x15A
EXCHANGE_SALT = 0x7E5
#: R5 Procedure.occurrence[x] (a Timing) pre-adopted in R4 through the cross-version extension (PRDOSFRQ)
R5_PROCEDURE_OCCURRENCE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Procedure.occurrence"

#: (ICD-10-CM, display, share of subjects, resolved share)
COMORBIDITIES: tuple[tuple[str, str, float, float], ...] = (
    ("I10", "Essential (primary) hypertension", 0.35, 0.0),
    ("E78.5", "Hyperlipidemia, unspecified", 0.15, 0.0),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis", 0.10, 0.3),
    ("E03.9", "Hypothyroidism, unspecified", 0.08, 0.0),
    ("M81.0", "Age-related osteoporosis without current pathological fracture", 0.10, 0.0),
    ("F32.9", "Major depressive disorder, single episode, unspecified", 0.12, 0.5),
    ("B02.9", "Zoster without complications", 0.10, 1.0),
)
#: (text, categories, share): a hypersensitivity to rituximab (given for refractory lupus before CAR-T) is a
#: medication and a biologic (AllergyIntolerance.category repeats: MHCAT, MHSCAT)
ALLERGIES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("Penicillin", ("medication",), 0.12), ("Sulfonamide antibiotics", ("medication",), 0.10),
    ("Peanut", ("food",), 0.03), ("House dust mite", ("environment",), 0.05),
    ("Rituximab", ("medication", "biologic"), 0.08),
)
#: (CVX, display)
VACCINES: tuple[tuple[str, str], ...] = (
    ("141", "Influenza, seasonal, injectable"),
    ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose"),
    ("216", "Pneumococcal conjugate PCV 20, polysaccharide CRM197, preservative free"),
)
RACES: tuple[tuple[str, str, float], ...] = (
    ("2106-3", "White", 0.55), ("2054-5", "Black or African American", 0.20), ("2028-9", "Asian", 0.17),
    ("1002-5", "American Indian or Alaska Native", 0.04), ("2076-8", "Native Hawaiian or Other Pacific Islander", 0.04),
)
def _cc(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        out["text"] = text
    return out


def _meta(when: date) -> dict[str, str]:
    return {"versionId": "1", "lastUpdated": fmt_utc(at(min(when, DATA_CUT - timedelta(days=1)), 600))}


def _ident(ctx: SubjectContext, kind: str, value: str) -> list[dict[str, str]]:
    return [{"system": f"https://hospital.example.org/site-{ctx.site.site}/{kind}", "value": value}]


def _condition(ctx: SubjectContext, rng: Random, code: str, display: str, onset: date, *, resolved: date | None,
               category: str = "problem-list-item", refuted: bool = False, body_site: str | None = None) -> Resource:
    rid = new_id(rng)
    res: Resource = {
        "resourceType": "Condition", "id": rid, "meta": _meta(max(onset, resolved or onset)),
        "identifier": _ident(ctx, "condition", rid[:13]),
        "clinicalStatus": _cc(CLINICAL_STATUS, *(("resolved", "Resolved") if resolved else ("active", "Active"))),
        "verificationStatus": _cc(VERIFICATION, *(("refuted", "Refuted") if refuted else ("confirmed", "Confirmed"))),
        "category": [_cc(CONDITION_CATEGORY, category, "Problem List Item" if category == "problem-list-item"
                         else "Encounter Diagnosis")],
        "code": _cc(ICD10CM, code, display, display),
        "subject": ctx.patient_ref(),
        "onsetDateTime": onset.isoformat() if rng.random() < 0.8 else onset.isoformat()[:7],
        "recordedDate": onset.isoformat(),
    }
    if body_site:
        res["bodySite"] = [{"text": body_site}]
    if resolved:
        res["abatementDateTime"] = resolved.isoformat()
    return res


def emit_clinical_history(ctx: SubjectContext, sp: SubjectPlan) -> None:
    """Conditions, allergies, immunizations, non-infusion procedures and cancelled orders of one subject."""
    rng = Random(sp.seed ^ HISTORY_SALT)
    consent = sp.consent_date
    sle_onset = consent - timedelta(days=rng.randint(3 * 365, 15 * 365))
    sle = _condition(ctx, rng, "M32.9", "Systemic lupus erythematosus, unspecified", sle_onset, resolved=None)
    sle["identifier"] = _ident(ctx, "condition", f"SLE-{ctx.patient_id[:8]}")  # lupus medications name it
    ctx.emit(sle)
    detail = Random(sp.seed ^ HISTORY_SALT ^ DETAIL_SALT)
    if sp.ln_at_baseline:
        ln_onset = sle_onset + timedelta(days=rng.randint(200, max(201, (consent - sle_onset).days - 60)))
        ctx.emit(_condition(ctx, rng, "M32.14", "Glomerular disease in systemic lupus erythematosus", ln_onset,
                            resolved=None, body_site="Kidney"))
        ctx.emit(_procedure(ctx, rng, "RBX", "Percutaneous renal biopsy", DIAGNOSTIC, ln_onset + timedelta(days=5),
                            reason="Lupus nephritis", body_site="Kidney", qualifiers=(LEFT, LOWER)))
    for code, display, share, resolved_share in COMORBIDITIES:
        if rng.random() >= share:
            continue
        onset = consent - timedelta(days=rng.randint(180, 12 * 365))
        resolved = onset + timedelta(days=rng.randint(20, 150)) if rng.random() < resolved_share else None
        condition = _condition(ctx, rng, code, display, onset, resolved=resolved)
        if code in MEDDRA_CODED:  # the problem list codes it in MedDRA too
            condition["code"]["coding"].append({"system": MEDDRA, "code": MEDDRA_CODED[code], "display": display})
        ctx.emit(condition)
    if rng.random() < 0.04:  # suspected at referral, ruled out by the antibody panel
        ctx.emit(_condition(ctx, rng, "D68.61", "Antiphospholipid syndrome", consent - timedelta(days=90),
                            resolved=None, category="encounter-diagnosis", refuted=True))
    for text, category, share in ALLERGIES:
        if rng.random() < share:
            ctx.emit(_allergy(ctx, rng, text, category, consent))
    for cvx, display in VACCINES:
        if rng.random() < 0.45:
            ctx.emit(_immunization(ctx, rng, cvx, display, consent - timedelta(days=rng.randint(30, 330))))
    revaccination = sp.day1 + timedelta(days=rng.randint(190, 240))
    if revaccination < min(sp.followup_end, DATA_CUT) and rng.random() < 0.5:
        ctx.emit(_immunization(ctx, rng, "141", VACCINES[0][1], revaccination))
    apheresis_access = sp.day1 - timedelta(days=rng.randint(34, 40))
    if rng.random() < 0.7 and apheresis_access > consent:
        if detail.random() < 0.1:  # a first attempt abandoned the day before
            ctx.emit(_procedure(ctx, detail, "CVC", "Insertion of central venous catheter", SURGICAL,
                                apheresis_access - timedelta(days=1), reason="Vascular access for leukapheresis",
                                body_site="Internal jugular vein", qualifiers=(RIGHT,),
                                stopped="Arterial puncture; attempt abandoned"))
        ctx.emit(_procedure(ctx, rng, "CVC", "Insertion of central venous catheter", SURGICAL, apheresis_access,
                            reason="Vascular access for leukapheresis", body_site="Internal jugular vein",
                            qualifiers=(RIGHT,)))
    if rng.random() < 0.06 and sp.day1 + timedelta(days=30) < DATA_CUT:
        ctx.emit(_procedure(ctx, rng, "BMB", "Bone marrow biopsy", DIAGNOSTIC, sp.day1 + timedelta(days=28),
                            reason="Prolonged cytopenia", body_site="Iliac crest", qualifiers=(POSTERIOR, RIGHT),
                            not_done="Patient declined"))
    if rng.random() < 0.25:
        _cancelled_order(ctx, rng, sp, detail)
    weigh_day = sp.day1 + timedelta(days=28)
    if detail.random() < 0.12 and weigh_day < min(sp.followup_end, DATA_CUT):
        ctx.emit(_weight_not_measured(ctx, detail, weigh_day))
    exchange = Random(sp.seed ^ HISTORY_SALT ^ EXCHANGE_SALT)  # its own stream: nothing above moves
    if exchange.random() < 0.12:
        ctx.emit(_plasma_exchange(ctx, exchange, consent - timedelta(days=exchange.randint(120, 900))))


def _plasma_exchange(ctx: SubjectContext, rng: Random, first: date) -> Resource:
    """A course of therapeutic plasma exchange for a severe flare before referral: five sessions every other day,
    recorded as one Procedure whose R5 occurrence Timing says how often (PRDOSFRQ = QOD)."""
    res = _procedure(ctx, rng, "TPE", "Therapeutic plasma exchange", THERAPEUTIC, first,
                     reason="Severe lupus flare refractory to pulse glucocorticoids", body_site=None)
    start = at(first, rng.randint(480, 720))
    res["performedPeriod"] = {"start": fmt_local(start), "end": fmt_local(start + timedelta(days=8, hours=3))}
    res["extension"] = [{"url": R5_PROCEDURE_OCCURRENCE, "valueTiming": {
        "repeat": {"count": 5, "frequency": 1, "period": 2, "periodUnit": "d"}}}]
    return res


def _allergy(ctx: SubjectContext, rng: Random, text: str, category: tuple[str, ...], consent: date) -> Resource:
    rid = new_id(rng)
    onset = consent - timedelta(days=rng.randint(2 * 365, 20 * 365))
    return {
        "resourceType": "AllergyIntolerance", "id": rid, "meta": _meta(consent),
        "identifier": _ident(ctx, "allergy", rid[:13]),
        "clinicalStatus": _cc(ALLERGY_CLINICAL, "active", "Active"),
        "verificationStatus": _cc(ALLERGY_VERIFICATION, "confirmed", "Confirmed"),
        "category": list(category), "code": {"text": text}, "patient": ctx.patient_ref(),
        "onsetDateTime": str(onset.year), "recordedDate": (consent - timedelta(days=rng.randint(0, 400))).isoformat(),
    }


def _immunization(ctx: SubjectContext, rng: Random, cvx: str, display: str, when: date) -> Resource:
    rid = new_id(rng)
    return {
        "resourceType": "Immunization", "id": rid, "meta": _meta(when),
        "identifier": _ident(ctx, "immunization", rid[:13]),
        "status": "completed", "vaccineCode": _cc(CVX, cvx, display, display), "patient": ctx.patient_ref(),
        "occurrenceDateTime": fmt_local(at(when, rng.randint(480, 960))),
        "route": _cc(SNOMED, *ROUTE_IM), "doseQuantity": {"value": 0.5, "unit": "mL",
                                                        "system": "http://unitsofmeasure.org", "code": "mL"},
    }


def _procedure(ctx: SubjectContext, rng: Random, code: str, display: str, category: tuple[str, str], when: date,
               *, reason: str, body_site: str | None, not_done: str | None = None, stopped: str | None = None,
               qualifiers: tuple[tuple[str, str], ...] = ()) -> Resource:
    rid = new_id(rng)
    res: Resource = {
        "resourceType": "Procedure", "id": rid, "meta": _meta(when),
        "identifier": _ident(ctx, "procedure", rid[:13]),
        "status": "not-done" if not_done else ("stopped" if stopped else "completed"),
        "category": _cc(SNOMED, *category), "code": _cc(PROCEDURE_CATALOGUE, code, display, display),
        "subject": ctx.patient_ref(), "reasonCode": [{"text": reason}],
    }
    if body_site:
        res["bodySite"] = [{"text": body_site}]
    if qualifiers:  # laterality / directionality: the target BodyStructure, contained
        res["contained"] = [{"resourceType": "BodyStructure", "id": "site", "patient": ctx.patient_ref(),
                             "location": {"text": body_site},
                             "locationQualifier": [_cc(SNOMED, c, d) for c, d in qualifiers]}]
        res["extension"] = [{"url": TARGET_BODY_STRUCTURE, "valueReference": {"reference": "#site"}}]
    if not_done or stopped:
        res["statusReason"] = {"text": not_done or stopped}
    if not not_done:
        start = at(when, rng.randint(480, 900))
        res["performedPeriod"] = {"start": fmt_local(start), "end": fmt_local(start + timedelta(minutes=45))}
    return res


def _cancelled_order(ctx: SubjectContext, rng: Random, sp: SubjectPlan, detail: Random) -> None:
    """A 24-h urine collection ordered at a follow-up visit and cancelled: a NOT DONE row in LB. About half
    came back incomplete: the lab marks the Specimen unsatisfactory (LBSPCUFL = N) with its condition."""
    when = sp.day1 + timedelta(days=rng.choice((28, 56, 84)))
    if when >= DATA_CUT:
        return
    rid = new_id(rng)
    taken = at(when, rng.randint(480, 720))
    obs: Resource = {
        "resourceType": "Observation", "id": rid, "meta": _meta(when), "status": "cancelled",
        "identifier": _ident(ctx, "lab-result", rid[:13]),
        "category": [_cc("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")],
        "code": _cc(LOINC, "2889-4", "Protein [Mass/time] in 24 hour Urine", "24-h urine protein"),
        "subject": ctx.patient_ref(), "effectiveDateTime": fmt_local(taken),
        "dataAbsentReason": {"coding": [{"system": DATA_ABSENT_REASON, "code": "not-performed",
                                         "display": "Not Performed"}], "text": "Collection not returned"},
    }
    if detail.random() < 0.5:
        sid = new_id(detail)
        ctx.emit({
            "resourceType": "Specimen", "id": sid, "meta": _meta(when), "status": "unsatisfactory",
            "accessionIdentifier": {"system": f"https://hospital.example.org/site-{ctx.site.site}/accession",
                                    "value": sid[:13]},
            "type": _cc(SNOMED, "122575003", "Urine", "Urine"), "subject": ctx.patient_ref(),
            "collection": {"collectedPeriod": {"start": fmt_local(taken - timedelta(hours=24)),
                                               "end": fmt_local(taken)}},
            "condition": [{"text": "Incomplete collection"}],
        })
        obs["specimen"] = {"reference": f"Specimen/{sid}"}
        obs["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT_REASON, "code": "error", "display": "Error"}],
                                   "text": "Specimen unsatisfactory: incomplete collection"}
    ctx.emit(obs)


def _weight_not_measured(ctx: SubjectContext, rng: Random, when: date) -> Resource:
    """A body weight the ward could not take (patient unable to stand): a NOT DONE row in VS."""
    rid = new_id(rng)
    return {
        "resourceType": "Observation", "id": rid, "meta": _meta(when), "status": "cancelled",
        "identifier": _ident(ctx, "vital-sign", rid[:13]),
        "category": [_cc("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")],
        "code": _cc(LOINC, "29463-7", "Body weight", "Body weight"),
        "subject": ctx.patient_ref(), "effectiveDateTime": fmt_local(at(when, rng.randint(480, 720))),
        "dataAbsentReason": {"coding": [{"system": DATA_ABSENT_REASON, "code": "not-performed",
                                         "display": "Not Performed"}], "text": "Patient unable to stand"},
    }


def race_ethnicity_extensions(seed: int) -> list[dict[str, Any]]:
    """US Core race and ethnicity of a patient (about 85 % of records carry them)."""
    rng = Random(seed ^ HISTORY_SALT ^ 0xACE)
    if rng.random() >= 0.85:
        return []
    x, acc = rng.random(), 0.0
    race = RACES[-1]
    for r in RACES:
        acc += r[2]
        if x < acc:
            race = r
            break
    hispanic = rng.random() < 0.18
    eth = ("2135-2", "Hispanic or Latino") if hispanic else ("2186-5", "Not Hispanic or Latino")
    return [
        {"url": US_CORE_RACE, "extension": [
            {"url": "ombCategory", "valueCoding": {"system": OMB, "code": race[0], "display": race[1]}},
            {"url": "text", "valueString": race[1]}]},
        {"url": US_CORE_ETHNICITY, "extension": [
            {"url": "ombCategory", "valueCoding": {"system": OMB, "code": eth[0], "display": eth[1]}},
            {"url": "text", "valueString": eth[1]}]},
    ]


def oxygen_therapy(ctx: SubjectContext, start: datetime, reason: str) -> Resource:
    """Supplemental oxygen given for an adverse event (CRS with hypoxia): a therapeutic Procedure the event's
    mitigatingAction names. Its id comes from its own stream (the subject's main stream stays as it was). The
    ward codes it in the hospital catalogue and in SNOMED CT (PRDECOD from the SNOMED CT display)."""
    rng = Random(f"{ctx.patient_id}-oxygen-{start.isoformat()}")
    res = _procedure(ctx, rng, "O2", "Oxygen therapy", THERAPEUTIC, start.date(), reason=reason, body_site=None)
    res["code"]["coding"].append({"system": SNOMED, "code": OXYGEN_THERAPY[0], "display": OXYGEN_THERAPY[1]})
    res["performedPeriod"] = {"start": fmt_local(start), "end": fmt_local(start + timedelta(hours=30))}
    return res
