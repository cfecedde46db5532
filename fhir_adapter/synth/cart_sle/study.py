"""The LCAR-AIO ResearchStudy, ResearchSubjects (enrolled and screen failures) and the study Procedures
(leukapheresis and the single LCAR-AIO infusion)."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta
from random import Random

from fhir_adapter.terminology.codes import SNOMED

from ..enrolment import SID_RESEARCH_STUDY
from ..enrolment import research_subject as enrolment_record
from ..ids import new_id, ref
from ..sink import Resource
from ..timeline import DATA_CUT, fmt_local, fmt_utc
from .plan import ARM_DOSE, ScreenFailurePlan, SubjectPlan

SID_SUBJECT = "https://fhir-adapter.org/fhir/sid/lcar-aio-subject"
STUDY_IDENTIFIER = "LCAR-AIO-SLE"
STUDY_TITLE = ("LCAR-AIO autologous anti-CD19/BCMA CAR-T cells in relapsed/refractory systemic lupus "
               "erythematosus: phase 1/2 dose escalation (3+3) and expansion")
ARM_DESCRIPTIONS: dict[str, str] = {
    "DL1": "Dose escalation, dose level 1: 1 x 10^6 CAR+ T cells/kg",
    "DL2": "Dose escalation, dose level 2: 2 x 10^6 CAR+ T cells/kg",
    "DL3": "Dose escalation, dose level 3: 4 x 10^6 CAR+ T cells/kg",
    "EXP": "Expansion at the recommended phase 2 dose (RP2D = DL2): 2 x 10^6 CAR+ T cells/kg",
}
CART_PROCEDURE = {"coding": [{"system": SNOMED, "code": "1156961008",
                              "display": "Chimeric antigen receptor T-cell immunotherapy"}],
                  "text": "LCAR-AIO CAR-T cell infusion"}
APHERESIS_PROCEDURE = {"coding": [{"system": "https://hospital.example.org/procedure-code", "code": "APH-TC",
                                   "display": "Leukapheresis, T-cell collection"}],
                       "text": "Leukapheresis for CAR-T manufacturing"}
#: days after Day 1 on which a subject's status last changed, by current status
STATUS_CHANGED_DAYS_AFTER_DAY1: dict[str, int] = {"on-study-intervention": 0, "on-study-observation": 1,
                                                  "follow-up": 29}
SLE = [{"coding": [{"system": SNOMED, "code": "55464009", "display": "Systemic lupus erythematosus"}]}]


def research_study(study_id: str) -> Resource:
    return {
        "resourceType": "ResearchStudy", "id": study_id,
        "meta": {"versionId": "3", "lastUpdated": "2024-10-28T09:00:00Z"},
        "identifier": [{"system": SID_RESEARCH_STUDY, "value": STUDY_IDENTIFIER}],
        "title": STUDY_TITLE,
        "status": "active",
        "primaryPurposeType": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/research-study-prim-purp-type", "code": "treatment",
            "display": "Treatment"}]},
        "phase": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-study-phase",
                              "code": "phase-1-phase-2", "display": "Phase 1/Phase 2"}]},
        "condition": SLE,
        "period": {"start": "2024-01-08"},
        "arm": [{"name": arm, "type": {"text": "Experimental"}, "description": ARM_DESCRIPTIONS[arm]}
                for arm in ARM_DOSE],
    }


#: the made-up principal investigator of each site (given, family): synthetic names, no real person
SITE_INVESTIGATORS: dict[int, tuple[str, str]] = {
    101: ("Ysolde", "Marrowick"), 102: ("Teodor", "Vanclere"), 103: ("Ilse", "Brackenfold"),
}
SID_INVESTIGATOR = "https://hospital.example.org/sid/investigator"


def site_study_id(study_id: str, site: int) -> str:
    """The id of a site's ResearchStudy: derived from the protocol study's id (no draw from the plan's random
    stream, so adding site studies moved no other value of the feed)."""
    h = hashlib.sha256(f"{study_id}/site/{site}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def site_research_study(study_id: str, site: int) -> Resource:
    """The site-level ResearchStudy ``partOf`` the protocol study (the FHIR-to-CDISC IG's SITEID): its
    identifier is the site number, its principalInvestigator a Practitioner contained in it (INVID, INVNAM)."""
    given, family = SITE_INVESTIGATORS[site]
    return {
        "resourceType": "ResearchStudy", "id": site_study_id(study_id, site),
        "meta": {"versionId": "1", "lastUpdated": "2024-01-08T09:00:00Z"},
        "contained": [{"resourceType": "Practitioner", "id": "pi",
                       "identifier": [{"system": SID_INVESTIGATOR, "value": f"INV-{site}"}],
                       "name": [{"family": family, "given": [given], "prefix": ["Dr."]}]}],
        "identifier": [{"system": f"{SID_RESEARCH_STUDY}/site", "value": f"{STUDY_IDENTIFIER}-{site}"}],
        "title": f"{STUDY_IDENTIFIER} at site {site}",
        "partOf": [ref("ResearchStudy", study_id)],
        "status": "active",
        "period": {"start": "2024-01-08"},
        "principalInvestigator": {"reference": "#pi", "display": f"Dr. {given} {family}"},
    }


def research_subject(rs_id: str, subject_id: str, study_id: str, patient_id: str, status: str,
                     consent: date, arm: str | None, updated: date, end: date | None = None) -> Resource:
    return enrolment_record(rs_id, SID_SUBJECT, subject_id, study_id, patient_id, status, consent, arm, updated,
                            end)


def enrolled_subject(sp: SubjectPlan, study_id: str) -> Resource:
    """Status last changed after the infusion (to on-study-observation, then follow-up after Day 29)."""
    changed = sp.day1 + timedelta(days=STATUS_CHANGED_DAYS_AFTER_DAY1[sp.status])
    return research_subject(sp.research_subject_id, sp.subject_id, site_study_id(study_id, sp.site), sp.patient_id,
                            sp.status, sp.consent_date, sp.arm, min(changed, DATA_CUT))


def screen_failure_subject(sf: ScreenFailurePlan, study_id: str, failed_on: date) -> Resource:
    return research_subject(sf.research_subject_id, sf.subject_id, site_study_id(study_id, sf.site), sf.patient_id,
                            "ineligible",
                            sf.consent_date, None, failed_on, end=failed_on)


def infusion(sp: SubjectPlan, when: datetime, total_cells: float) -> Resource:
    return {
        "resourceType": "Procedure", "id": sp.infusion_procedure_id,
        "meta": {"versionId": "1", "lastUpdated": fmt_utc(when)},
        "status": "completed",
        "code": CART_PROCEDURE,
        "subject": ref("Patient", sp.patient_id),
        "performedDateTime": fmt_local(when),
        "reasonCode": SLE,
        "note": [{"text": f"LCAR-AIO {sp.dose_per_kg:g} x 10^6 CAR+ T cells/kg, total {total_cells:.2f} x 10^8 "
                          "CAR+ T cells, single IV infusion"}],
    }


def apheresis(rng: Random, patient_id: str, when: datetime) -> Resource:
    return {
        "resourceType": "Procedure", "id": new_id(rng),
        "meta": {"versionId": "1", "lastUpdated": fmt_utc(when)},
        "status": "completed",
        "code": APHERESIS_PROCEDURE,
        "subject": ref("Patient", patient_id),
        "performedDateTime": fmt_local(when),
    }
