"""Code systems and identifier systems used across the adapter.

The adapter's own canonical base is ``https://fhir-adapter.org/fhir``; its CodeSystems are published as FHIR R4
JSON in ``profiles/`` (see ``profiles/README.md``). External systems are the HL7-registered URIs
(https://terminology.hl7.org/external_terminologies.html).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

CANONICAL = "https://fhir-adapter.org/fhir"
#: the adapter's published conformance resources (``profiles/`` at the top of the project)
PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"

# --- the adapter's own CodeSystems (profiles/CodeSystem-*.json) -----------------------------------
#: the 24 SLEDAI-2K descriptors as clinicians record them (valueBoolean Observations)
CS_SLEDAI2K_DESCRIPTOR = f"{CANONICAL}/CodeSystem/sledai-2k-descriptor"
#: clinical inputs with no LOINC code: SLE PGA, CAR transgene copies, CAR+ cells, anti-CAR antibodies
CS_CLINICAL_INPUT = f"{CANONICAL}/CodeSystem/clinical-input"
#: the results the adapter derives and writes back (sledai-2k, lldas, dlt, cart-cmax, ...)
CS_RESULTS = f"{CANONICAL}/CodeSystem/results"
#: meta.tag on every resource the adapter writes to a server (code ``fhir-adapter``)
CS_TAGS = f"{CANONICAL}/CodeSystem/tags"
#: meta.tag on each Provenance the adapter writes: its code is the key of that write (a hash of the entries it
#: records), so a Provenance is a conditional create (``If-None-Exist: _tag=<system>|<key>``) and posting the
#: same write twice never duplicates it
CS_WRITE_KEY = f"{CANONICAL}/CodeSystem/write-key"

# --- identifier systems ---------------------------------------------------------------------------
#: business identifier of every resource the adapter creates; the adapter never updates a resource
#: that does not carry an identifier in this system.
SID_RESULT = f"{CANONICAL}/sid/result"
#: identifier of the adapter's Provenance / Device resources
SID_DEVICE = f"{CANONICAL}/sid/device"

# --- profiles (profiles/StructureDefinition-*.json) -----------------------------------------------
SD_RESULT_OBSERVATION = f"{CANONICAL}/StructureDefinition/result-observation"
SD_RESEARCH_SUBJECT = f"{CANONICAL}/StructureDefinition/research-subject"
SD_PROVENANCE = f"{CANONICAL}/StructureDefinition/result-provenance"
#: the adapter itself as a Device (the agent of its Provenance)
SD_ADAPTER_DEVICE = f"{CANONICAL}/StructureDefinition/adapter-device"
#: the ResearchStudy the adapter writes for an EHR that holds none (from study.yaml)
SD_RESEARCH_STUDY = f"{CANONICAL}/StructureDefinition/research-study"
#: extension naming the ResearchSubject on a result Observation (besides Observation.focus)
EXT_RESEARCH_SUBJECT = f"{CANONICAL}/StructureDefinition/research-subject-ref"
#: extension naming an EHR resource a result was derived from whose type R4 does not allow in
#: Observation.derivedFrom (MedicationStatement, AdverseEvent, Procedure...); also a Provenance entity
EXT_RESULT_SOURCE = f"{CANONICAL}/StructureDefinition/result-source"

# --- external terminologies -----------------------------------------------------------------------
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
MEDDRA = "http://terminology.hl7.org/CodeSystem/mdr"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
OBS_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
AE_SERIOUSNESS = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
AE_SEVERITY = "http://terminology.hl7.org/CodeSystem/adverse-event-severity"
AE_CAUSALITY_ASSESS = "http://terminology.hl7.org/CodeSystem/adverse-event-causality-assess"
PROVENANCE_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
ROUTE_SNOMED = SNOMED
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"
OPS = "http://fhir.de/CodeSystem/bfarm/ops"
#: procedure dictionaries, in the order PRDECOD takes them: the display of a Procedure.code coding in one of these
#: is the standardized procedure name; a hospital's own catalogue is none
PROCEDURE_DICTIONARIES = (SNOMED, ICD10PCS, CPT, OPS)

# --- US Core race and ethnicity (us-core-race, us-core-ethnicity: ombCategory) ----------------------
#: CDC Race & Ethnicity code system
CDC_RACE_ETHNICITY = "urn:oid:2.16.840.1.113883.6.238"
V3_NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
#: the OMB categories of the US Core value sets omb-race-category and omb-ethnicity-category, with the code
#: systems' own displays: the code, not the EHR's display text, says which category is meant (an EHR may send
#: 1002-5 with a local display such as "native"); the CDISC export maps these displays to RACE and ETHNIC terms
#: (mappings/cdisc/ct.yaml)
OMB_CATEGORY_DISPLAYS = {
    (CDC_RACE_ETHNICITY, "1002-5"): "American Indian or Alaska Native",
    (CDC_RACE_ETHNICITY, "2028-9"): "Asian",
    (CDC_RACE_ETHNICITY, "2054-5"): "Black or African American",
    (CDC_RACE_ETHNICITY, "2076-8"): "Native Hawaiian or Other Pacific Islander",
    (CDC_RACE_ETHNICITY, "2106-3"): "White",
    (CDC_RACE_ETHNICITY, "2131-1"): "Other Race",
    (CDC_RACE_ETHNICITY, "2135-2"): "Hispanic or Latino",
    (CDC_RACE_ETHNICITY, "2186-5"): "Not Hispanic or Latino",
    (V3_NULL_FLAVOR, "UNK"): "Unknown",
    (V3_NULL_FLAVOR, "ASKU"): "Asked but unknown",
}

# --- AE Clinical Research R4 backport IG (hl7.fhir.uv.ae-research-backport-ig 1.0.1) ---------------
AE_BACKPORT = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition"
EXT_AE_GRADE = f"{AE_BACKPORT}/ae-grade"
EXT_AE_SERIOUSNESS_CRITERIA = f"{AE_BACKPORT}/seriousness-criteria"
EXT_AE_SUSPECT_ENTITY = f"{AE_BACKPORT}/suspect-entity"
EXT_AE_RESOLVE_DATE = f"{AE_BACKPORT}/resolve-date"
EXT_AE_STATUS = f"{AE_BACKPORT}/status"
PROFILE_AE_CLINICAL_RESEARCH = f"{AE_BACKPORT}/AdverseEvent-clinical-research"

AE_OUTCOME = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
#: codes of a fatal AdverseEvent.outcome: HL7 adverse-event-outcome ``fatal``; CDISC OUT ``FATAL`` (NCIt C48275)
FATAL_OUTCOMES = frozenset({"fatal", "C48275"})
#: NCIt CTCAE grade concepts used by the backport IG examples (C41338 grade 1 ... C48275 grade 5)
NCIT_CTCAE_GRADE = {"C41338": 1, "C41339": 2, "C41340": 3, "C41337": 4, "C48275": 5}

#: The 24 SLEDAI-2K descriptor codes of CS_SLEDAI2K_DESCRIPTOR, in the order of Gladman 2002.
SLEDAI2K_DESCRIPTOR_CODES: tuple[str, ...] = (
    "seizure", "psychosis", "organic-brain-syndrome", "visual-disturbance", "cranial-nerve-disorder",
    "lupus-headache", "cva", "vasculitis", "arthritis", "myositis", "urinary-casts", "hematuria",
    "proteinuria", "pyuria", "rash", "alopecia", "mucosal-ulcers", "pleurisy", "pericarditis",
    "low-complement", "increased-dna-binding", "fever", "thrombocytopenia", "leukopenia",
)


@cache
def codesystem_displays(name: str) -> dict[str, str]:
    """code → display of the adapter's CodeSystem ``profiles/CodeSystem-<name>.json``: the one place its
    display names are written (code reads them from there, never repeats them)."""
    path = PROFILES_DIR / f"CodeSystem-{name}.json"
    try:
        concepts = json.loads(path.read_text(encoding="utf-8"))["concept"]
    except (OSError, ValueError, KeyError) as exc:
        raise RuntimeError(f"cannot read the CodeSystem {path}: {exc}; run from the project checkout, "
                           "which ships profiles/") from exc
    return {str(c["code"]): str(c["display"]) for c in concepts}


#: the status codes of each medication resource (FHIR R4 required bindings: medication-statement-status,
#: medicationrequest-status, medication-admin-status, medicationdispense-status)
R4_MEDICATION_STATUSES: dict[str, frozenset[str]] = {
    "MedicationStatement": frozenset({"active", "completed", "entered-in-error", "intended", "stopped", "on-hold",
                                      "unknown", "not-taken"}),
    "MedicationRequest": frozenset({"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped",
                                    "draft", "unknown"}),
    "MedicationAdministration": frozenset({"in-progress", "not-done", "on-hold", "completed", "entered-in-error",
                                           "stopped", "unknown"}),
    "MedicationDispense": frozenset({"preparation", "in-progress", "cancelled", "on-hold", "completed",
                                     "entered-in-error", "stopped", "declined", "unknown"}),
}
