"""Adverse events as the sites record them (R4 AdverseEvent + the AE Clinical Research R4 backport
extensions): background CAR-T toxicities, the plan's DLT / look-alike scenarios, and their FHIR form."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from random import Random
from typing import Any

from fhir_adapter.terminology.codes import (
    AE_CAUSALITY_ASSESS,
    AE_SERIOUSNESS,
    AE_SEVERITY,
    EXT_AE_GRADE,
    EXT_AE_RESOLVE_DATE,
    EXT_AE_SERIOUSNESS_CRITERIA,
    EXT_AE_SUSPECT_ENTITY,
    ICD10CM,
    MEDDRA,
    NCIT,
    NCIT_CTCAE_GRADE,
    SNOMED,
)

from ..ids import new_id, ref
from ..timeline import DATA_CUT, LAST_INSTANT, at, fmt_local, fmt_utc
from .context import Resource, SubjectContext


@dataclass(frozen=True, slots=True)
class AETerm:
    text: str
    meddra: str | None
    icd10: str            # "{g}" is replaced by the grade (9 / 0 when unknown)
    icd10_display: str
    haematological: bool = False


AE_TERMS: dict[str, AETerm] = {
    "crs": AETerm("Cytokine release syndrome", "10052015", "D89.83{g}", "Cytokine release syndrome"),
    "icans": AETerm("Immune effector cell-associated neurotoxicity syndrome", None, "G92.0{g}",
                    "Immune effector cell-associated neurotoxicity syndrome"),
    "neutropenia": AETerm("Neutropenia", "10029354", "D70.2", "Other drug-induced agranulocytosis", True),
    "thrombocytopenia": AETerm("Thrombocytopenia", "10043554", "D69.59", "Other secondary thrombocytopenia",
                               True),
    "nausea": AETerm("Nausea", "10028813", "R11.0", "Nausea"),
    "alt": AETerm("Alanine aminotransferase increased", "10001551", "R74.01",
                  "Elevation of levels of liver transaminase levels"),
    "ast": AETerm("Aspartate aminotransferase increased", "10003481", "R74.01",
                  "Elevation of levels of liver transaminase levels"),
    "fatigue": AETerm("Fatigue", "10016256", "R53.83", "Other fatigue"),
    "headache": AETerm("Headache", "10019211", "R51.9", "Headache, unspecified"),
    "diarrhoea": AETerm("Diarrhoea", "10012735", "R19.7", "Diarrhea, unspecified"),
    "urti": AETerm("Upper respiratory tract infection", "10046306", "J06.9",
                   "Acute upper respiratory infection, unspecified"),
    "uti": AETerm("Urinary tract infection", "10046571", "N39.0", "Urinary tract infection, site not specified"),
    "covid": AETerm("COVID-19", "10084268", "U07.1", "COVID-19"),
    "zoster": AETerm("Herpes zoster", "10019974", "B02.9", "Zoster without complications"),
    "pneumonia": AETerm("Pneumonia", "10035664", "J18.9", "Pneumonia, unspecified organism"),
    "hypogammaglobulinaemia": AETerm("Hypogammaglobulinaemia", None, "D80.1",
                                     "Nonfamilial hypogammaglobulinemia"),
}
GRADE_CODE: dict[int, str] = {grade: code for code, grade in NCIT_CTCAE_GRADE.items()}
GRADE_DISPLAY: dict[int, str] = {
    1: "Grade 1 Mild Adverse Event", 2: "Grade 2 Moderate Adverse Event", 3: "Grade 3 Severe Adverse Event",
    4: "Grade 4 Life Threatening or Disabling Adverse Event", 5: "Grade 5 Death Related to Adverse Event",
}
SEVERITY: dict[int, tuple[str, str]] = {1: ("mild", "Mild"), 2: ("moderate", "Moderate"), 3: ("severe", "Severe"),
                                        4: ("severe", "Severe"), 5: ("severe", "Severe")}
#: causality: (R4 core assessment code, productRelatedness, NCIt relatedness code, NCIt display)
CAUSALITY: dict[str, tuple[str, str, str, str]] = {
    "certain": ("Certain", "related", "C53260", "Related"),
    "probable": ("Probably-Likely", "related", "C53260", "Related"),
    "possible": ("Possible", "related", "C53258", "Possibly Related"),
    "unlikely": ("Unlikely", "not related", "C53257", "Unlikely Related"),
    "unrelated": ("Unlikely", "not related", "C53256", "Not Related"),
}
#: seriousness criteria (NCIt)
HOSPITALISATION = ("C83052", "Requires Inpatient Hospitalization")
LIFE_THREATENING = ("C84266", "Is Life Threatening")
OUTCOME_SYSTEM = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
#: R5 AdverseEvent.mitigatingAction as an R4 cross-version extension (the element the FHIR-to-CDISC IG maps AEACN to)
EXT_AE_MITIGATING_ACTION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-AdverseEvent.mitigatingAction"


@dataclass(slots=True)
class AEvent:
    term: str
    grade: int | None
    onset: datetime
    resolved: datetime | None
    causality: str
    criteria: tuple[tuple[str, str], ...] = ()   # seriousness criteria; empty: non-serious
    rid: str | None = None
    treatments: list[str] = field(default_factory=list)   # references of what was given for it (mitigatingAction)


def _codeable(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _event_code(ev: AEvent) -> dict[str, Any]:
    term = AE_TERMS[ev.term]
    codings: list[dict[str, str]] = []
    if term.meddra:
        codings.append({"system": MEDDRA, "code": term.meddra, "display": term.text})
    unknown = "9" if ev.term == "crs" else "0"
    icd = term.icd10.replace("{g}", str(ev.grade) if ev.grade else unknown)
    display = f"{term.icd10_display}, grade {ev.grade}" if "{g}" in term.icd10 and ev.grade else term.icd10_display
    codings.append({"system": ICD10CM, "code": icd, "display": display})
    return {"coding": codings, "text": term.text}


def _causality_core(ctx: SubjectContext, causality: str) -> list[dict[str, Any]]:
    code, related, _, _ = CAUSALITY[causality]
    assert ctx.procedure_id is not None
    return [{"instance": ref("Procedure", ctx.procedure_id),
             "causality": [{"assessment": _codeable(AE_CAUSALITY_ASSESS, code, code.replace("-", "/")),
                            "productRelatedness": related}]}]


def _causality_backport(ctx: SubjectContext, causality: str) -> dict[str, Any]:
    _, _, code, display = CAUSALITY[causality]
    assert ctx.procedure_id is not None
    return {"url": EXT_AE_SUSPECT_ENTITY, "extension": [
        {"url": "instance", "valueReference": ref("Procedure", ctx.procedure_id)},
        {"url": "causality", "extension": [
            {"url": "entityRelatedness", "valueCodeableConcept": _codeable(NCIT, code, display)}]},
    ]}


#: where an event sits, for events the ward charts as a diagnosis with a body site: (site, qualifiers)
EVENT_SITES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "zoster": ("Thoracic dermatome", ()),
    "pneumonia": ("Lung", (("261122009", "Lower"),)),
}
LATERALITY = (("419161000", "Unilateral left"), ("419465000", "Unilateral right"))
BODY_SITE_EXT = "http://hl7.org/fhir/StructureDefinition/bodySite"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"


def resulting_condition(ctx: SubjectContext, ev: AEvent) -> Resource | None:
    """The encounter diagnosis an event was charted as (zoster, pneumonia): a Condition with its body site and
    a contained BodyStructure holding laterality and direction, named by AdverseEvent.resultingCondition. Drawn
    from its own stream, so the subject's main stream stays as it was."""
    if ev.term not in EVENT_SITES:
        return None
    rng = Random(f"{ctx.patient_id}-{ev.term}-{ev.onset.isoformat()}")
    site, qualifiers = EVENT_SITES[ev.term]
    term = AE_TERMS[ev.term]
    qualifiers = (rng.choice(LATERALITY), *qualifiers)
    rid = new_id(rng)
    return {
        "resourceType": "Condition", "id": rid,
        "meta": {"versionId": "1", "lastUpdated": fmt_utc(min(ev.onset + timedelta(hours=2), LAST_INSTANT))},
        "identifier": [{"system": f"https://hospital.example.org/site-{ctx.site.site}/condition", "value": rid[:13]}],
        "contained": [{"resourceType": "BodyStructure", "id": "site", "patient": ctx.patient_ref(),
                       "location": {"text": site},
                       "locationQualifier": [_codeable(SNOMED, c, d) for c, d in qualifiers]}],
        "extension": [{"url": BODY_SITE_EXT, "valueReference": {"reference": "#site"}}],
        "clinicalStatus": _codeable("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                    *(("resolved", "Resolved") if ev.resolved else ("active", "Active"))),
        "category": [_codeable(CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
        "code": {**_codeable(ICD10CM, term.icd10, term.icd10_display), "text": term.text},
        "bodySite": [{"text": site}], "subject": ctx.patient_ref(), "onsetDateTime": fmt_local(ev.onset),
        "recordedDate": fmt_local(min(ev.onset + timedelta(hours=2), LAST_INSTANT)),
    }


def adverse_event_resource(ctx: SubjectContext, ev: AEvent, number: int, id_prefix: str) -> Resource:
    rng = ctx.rng
    recorded = at(ev.onset.date() + timedelta(days=rng.randint(0, 3)), rng.randint(480, 1080))
    recorded = min(max(recorded, ev.onset + timedelta(minutes=30)), LAST_INSTANT)
    updated = max(recorded, ev.resolved or recorded)
    ext: list[dict[str, Any]] = []
    if ev.grade is not None:
        ext.append({"url": EXT_AE_GRADE, "valueCodeableConcept": {
            **_codeable(NCIT, GRADE_CODE[ev.grade], GRADE_DISPLAY[ev.grade]), "text": f"Grade {ev.grade}"}})
    if ev.resolved is not None:
        ext.append({"url": EXT_AE_RESOLVE_DATE, "valueDateTime": fmt_local(ev.resolved)})
    for code, display in ev.criteria:
        ext.append({"url": EXT_AE_SERIOUSNESS_CRITERIA, "extension": [
            {"url": "criterionCode", "valueCodeableConcept": _codeable(NCIT, code, display)},
            {"url": "criterionPresent", "valueBoolean": True}]})
    study = ctx.study_id is not None and ctx.procedure_id is not None
    if study and ctx.site.site == 102:  # this site's AE form asks for the action taken (one infusion: none possible)
        ext.append({"url": EXT_AE_MITIGATING_ACTION, "extension": [
            {"url": "item", "valueCodeableConcept": _codeable(NCIT, "C48660", "Not Applicable")}]})
    for treatment in ev.treatments:  # what was given for the event (tocilizumab, dexamethasone, transfusions)
        ext.append({"url": EXT_AE_MITIGATING_ACTION, "extension": [
            {"url": "item", "valueReference": {"reference": treatment}}]})
    if ev.term == "icans" and (ev.grade or 0) >= 2:
        ext.append({"url": EXT_AE_MITIGATING_ACTION, "extension": [
            {"url": "item", "valueCodeableConcept": {"text": "Neurology consultation; ICE score every 8 hours"}}]})
    if study and ctx.site.ae_causality == "backport":
        ext.append(_causality_backport(ctx, ev.causality))
    res: Resource = {
        "resourceType": "AdverseEvent", "id": ev.rid or new_id(rng),
        "meta": {"versionId": "1", "lastUpdated": fmt_utc(min(updated, LAST_INSTANT))},
    }
    if ext:
        res["extension"] = ext
    res |= {
        "identifier": {"system": f"https://hospital.example.org/site-{ctx.site.site}/adverse-event",
                       "value": f"{id_prefix}-AE{number:03d}"},
        "actuality": "actual",
        "event": _event_code(ev),
        "subject": ctx.patient_ref(),
        "date": fmt_local(ev.onset),
        "detected": fmt_local(ev.onset),
        "recordedDate": fmt_local(recorded),
        "seriousness": _codeable(AE_SERIOUSNESS, *(("serious", "Serious") if ev.criteria
                                                  else ("non-serious", "Non-serious"))),
    }
    if ctx.site.ae_severity and ev.grade is not None:
        res["severity"] = _codeable(AE_SEVERITY, *SEVERITY[ev.grade])
    res["outcome"] = _codeable(OUTCOME_SYSTEM, *(("resolved", "Resolved") if ev.resolved else ("ongoing", "Ongoing")))
    if study and ctx.site.ae_causality == "core":
        res["suspectEntity"] = _causality_core(ctx, ev.causality)
    condition = resulting_condition(ctx, ev)
    if condition is not None:
        ctx.emit(condition)
        res["resultingCondition"] = [ref("Condition", condition["id"])]
    if ctx.study_id is not None:
        res["study"] = [ref("ResearchStudy", ctx.study_id)]
    return res


def clip_to_cut(events: list[AEvent]) -> list[AEvent]:
    """Drop events that start after the data cut; events not resolved by then are ongoing."""
    out = []
    for ev in events:
        if ev.onset.date() >= DATA_CUT:
            continue
        if ev.resolved is not None and ev.resolved.date() >= DATA_CUT:
            ev.resolved = None
        out.append(ev)
    return sorted(out, key=lambda e: e.onset)
