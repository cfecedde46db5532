"""CRF domain models (pydantic), CDASH-aligned where CDASH has a name.

One :class:`SubjectCRF` per enrolled subject holds every domain. Each value keeps a :class:`SourceRef` to the
FHIR resource (type/id/version) it came from, so any number in a CRF or a result can be traced to the EHR.

Domains (CDASH v2.x naming in the exports, see ``fhir_adapter/export``):

* DM  :class:`Demographics` — pseudonymised: subject ID, sex, age at consent. No name, MRN, address, birth date.
* EX  :class:`Exposure` — lymphodepleting agents and the LCAR-AIO infusion with dose level.
* LB, VS, PC, QS, IS  :class:`Finding` — one row per result: labs, vital signs, cellular kinetics (PC),
  SLEDAI-2K descriptors and PGA (QS), immunogenicity (IS: anti-drug antibodies).
* CM  :class:`ConMed` — concomitant medications with the daily prednisolone-equivalent dose
  (``pred_eq_daily_mg``, from the glucocorticoids endpoint).
* AE  :class:`AdverseEvent` — term, code, CTCAE/ASTCT grade, seriousness, relatedness, dates, TEAE flag
  (``teae``, from the safety endpoint), CRS/ICANS flags.

Per-record values an endpoint derives (``teae``, ``pre_infusion``, ``pred_eq_daily_mg``) are set in the CRF file
(``OUT/crf``) and the exports by the endpoint's ``annotate`` (one owner of each rule: fhir_adapter/derive); the
CRF the derivations read is the mapping's output.

Dates: ``date`` is the calendar date in the study's site time zone; ``partial_date`` keeps a partial date
("2024" or "2024-03") as it came, never imputed (docs/clinical-rules.md#dates).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceRef(_Model):
    """The FHIR resource a CRF value came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resource_type: str
    id: str
    version: str | None = None

    @property
    def reference(self) -> str:
        """Relative literal reference, versioned when the version is known (``Observation/1/_history/2``)."""
        base = f"{self.resource_type}/{self.id}"
        return f"{base}/_history/{self.version}" if self.version else base


_NO_TIME = dt.datetime.min.replace(tzinfo=dt.UTC)


class Finding(_Model):
    """One result in a findings domain (LB, VS, PC, QS, IS), in the item's CRF unit."""

    domain: Literal["LB", "VS", "PC", "QS", "IS"]
    item: str = Field(description="CRF item id from mappings/<study>/items.yaml")
    value: float | None = Field(None, description="numeric value in `unit` (quantities)")
    value_bool: bool | None = Field(None, description="boolean items, and coded positive/negative results")
    value_text: str | None = Field(None, description="text or code as reported, for coded/text items")
    comparator: Literal["<", "<=", ">", ">="] | None = Field(None, description="e.g. '<' for below LLOQ")
    unit: str | None = None
    orig_value: str | None = Field(None, description="the value as the EHR sent it")
    orig_unit: str | None = None
    datetime: dt.datetime | None = Field(None, description="effective time in the study time zone")
    date: dt.date | None = None
    partial_date: str | None = Field(None, description="year or year-month when the EHR sent no full date")
    study_day: int | None = None
    visit: str | None = Field(None, description="scheduled visit id, UNS-<day> for unscheduled, None if outside")
    ref_low: float | None = None
    ref_high: float | None = None
    interpretation: tuple[str, ...] = ()
    status: str = "final"
    preliminary: bool = False
    category: str | None = Field(None, description="Observation.category code (laboratory, vital-signs, ...)")
    loinc: str | None = Field(None, description="the LOINC code of Observation.code, when it has one")
    method: str | None = Field(None, description="Observation.method text or display")
    specimen: str | None = Field(None, description="Specimen.type display of Observation.specimen")
    fasting: bool | None = Field(None, description="Specimen.collection.fastingStatus: fasting (True) or not")
    collected: dt.datetime | None = Field(
        None, description="Specimen.collection.collected[x] in the study time zone (else the start of the "
                          "Observation's effectivePeriod when it has an end: a timed collection)")
    spid: str | None = Field(None, description="Observation.identifier value")
    accession: str | None = Field(None, description="Specimen.accessionIdentifier value")
    specimen_condition: str | None = Field(None, description="Specimen.condition text or display")
    specimen_site: str | None = Field(None, description="Specimen.collection.bodySite text or display")
    timepoint: str | None = Field(None, description="planned time point (cqf-relativeDateTime), e.g. 1 h before …")
    timepoint_ref: str | None = Field(None, description="the event the time point is relative to (its display)")
    elapsed: str | None = Field(None, description="planned elapsed time from that event, ISO 8601 (-PT1H, PT6H)")
    collected_end: dt.datetime | None = Field(
        None, description="end of a timed collection: Specimen.collection.collectedPeriod.end, else the "
                          "Observation's effectivePeriod.end when no Specimen dates the collection")
    body_site: str | None = Field(None, description="Observation.bodySite text or display")
    qualifiers: tuple[str, ...] = Field((), description="locationQualifier codes of the body site's BodyStructure")
    position: str | None = Field(None, description="observation-bodyPosition code (Observation, else Specimen)")
    specimen_unusable: bool = Field(False, description="the Specimen's status is unsatisfactory (--SPCUFL = N)")
    tox_grade: int | None = Field(None, description="toxicity grade among Observation.interpretation (NCIt CTCAE)")
    tox_scale: str | None = Field(None, description="the grading scale and its version (NCI CTCAE v5.0)")
    performer: str | None = Field(None, description="display of the Organization among Observation.performer")
    ref_text: str | None = Field(None, description="Observation.referenceRange.text")
    orig_ref_low: float | None = Field(None, description="reference range low as sent, in orig_unit")
    orig_ref_high: float | None = Field(None, description="reference range high as sent, in orig_unit")
    source: SourceRef

    @property
    def time_order(self) -> tuple[bool, dt.datetime]:
        """Its place among the results of its date: a date-only result at 00:00 of the date, before a timed
        one — a missing time is never compared with a time (the one order visits, baselines and the review
        list use)."""
        return (self.datetime is not None, self.datetime or _NO_TIME)


class NotDone(_Model):
    """A result that was ordered or expected but not obtained: a cancelled Observation, or one with a
    dataAbsentReason and no value. Exported as a ``--STAT`` = NOT DONE row; never used by a derivation."""

    domain: Literal["LB", "VS", "PC", "QS", "IS"]
    item: str
    reason: str = Field(description="why: dataAbsentReason text/display, or the Observation status")
    datetime: dt.datetime | None = None
    date: dt.date | None = None
    study_day: int | None = None
    visit: str | None = None
    category: str | None = None
    loinc: str | None = None
    accession: str | None = Field(None, description="accessionIdentifier of the Specimen it names")
    specimen_condition: str | None = Field(None, description="Specimen.condition text or display")
    specimen_unusable: bool = Field(False, description="the Specimen's status is unsatisfactory (--SPCUFL = N)")
    status: str
    source: SourceRef


class VisitRecord(_Model):
    """A visit of one subject: its actual date and the value selected per item by the item's rule."""

    visit: str
    label: str = ""
    target_day: int | None = None
    date: dt.date | None = Field(None, description="clinician's assessment date, else the earliest result")
    study_day: int | None = None
    unscheduled: bool = False
    values: dict[str, Finding] = Field(default_factory=dict)
    #: the items a reviewer changed at this visit (chose another candidate, or declared not available:
    #: fhir_adapter/review/apply.py; an accepted pick changes nothing); not in the CRF file. See
    #: :meth:`settled_results`.
    settled: frozenset[str] = Field(frozenset(), exclude=True)

    def settled_results(self, item: str) -> list[Finding] | None:
        """The results of ``item`` this visit's derivations use when a reviewer settled it: the adjudicated
        value in :attr:`values` (``[]``: declared not available) — whatever the derivation's own look-back
        would take (other results of the window, a result the reviewer set aside). None: not settled, the
        derivation takes its results by its own rule."""
        if item not in self.settled:
            return None
        value = self.values.get(item)
        return [value] if value is not None else []


class Demographics(_Model):
    subject_id: str
    site: str | None = None
    sex: Literal["M", "F", "U"] = "U"
    age: int | None = Field(None, description="age in completed years at consent")
    arm: str | None = None
    status: str
    consent_date: dt.date | None = None
    race: str | None = Field(None, description="US Core race ombCategory display (CDISC RACE term in the export)")
    ethnicity: str | None = Field(None, description="US Core ethnicity ombCategory display")
    investigator_id: str | None = Field(None, description="principalInvestigator identifier of the study enrolled in")
    investigator_name: str | None = Field(None, description="that investigator's name")
    death_date: dt.date | None = Field(None, description="Patient.deceasedDateTime (site time zone)")
    deceased: bool | None = Field(None, description="Patient.deceased[x] (None: not sent)")
    actual_arm: str | None = Field(None, description="ResearchSubject.actualArm: the arm actually received")
    end_of_participation: dt.date | None = Field(
        None, description="ResearchSubject.period.end: the end of the subject's participation (None: ongoing)")
    country: str | None = Field(None, description="ISO 3166-1 alpha-3 code of the site's country (site overlay)")
    source: tuple[SourceRef, ...] = ()


class Exposure(_Model):
    treatment: str = Field(description="e.g. fludarabine, cyclophosphamide, LCAR-AIO")
    kind: Literal["lymphodepletion", "infusion"]
    code: str | None = None
    dose: float | None = None
    dose_unit: str | None = Field(None, description="UCUM code of the dose, else its unit as sent")
    dose_level: str | None = Field(None, description="the subject's dose level (arm) for the study product")
    route: str | None = Field(None, description="route text or display as sent")
    route_code: str | None = Field(None, description="route code as sent (SNOMED CT)")
    start: dt.datetime | None = None
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    partial_date: str | None = None
    study_day: int | None = None
    source: SourceRef
    day1_source: str | None = Field(
        None, description="an infusion no FHIR record holds: where its date came from (the roster CSV line); "
                          "``source`` is then the subject's ResearchSubject")


class ConMed(_Model):
    drug: str = Field(description="ingredient name, lower case")
    verbatim: str | None = Field(None, description="the medication as the EHR names it (text or display)")
    spid: str | None = Field(None, description="identifier value of the source resource")
    indication: str | None = Field(None, description="reasonCode text or display")
    dose_form: str | None = Field(None, description="Medication.form code or text")
    ingredients: str | None = Field(None, description="active Medication.ingredient names, '; '-joined (CMINGRD)")
    route_code: str | None = Field(None, description="route code as sent (SNOMED CT)")
    category: str | None = Field(None, description="category code or text of the source resource")
    dose_text: str | None = Field(None, description="dosage text as sent")
    rxnorm: str | None = None
    cvx: str | None = Field(None, description="CVX code of an Immunization's vaccineCode (CMCODE)")
    drug_class: Literal["glucocorticoid", "immunosuppressant", "antimalarial", "crs_treatment", "other"] = "other"
    dose: float | None = Field(None, description="dose per administration")
    dose_unit: str | None = None
    frequency_per_day: float | None = Field(None, description="administrations per day (0.5 = every other day)")
    interval_hours: float | None = Field(
        None, description="hours between administrations when the timing is a fixed interval (Timing.repeat "
                          "frequency 1 per period N h, or Timing.code Q<N>H): CMDOSFRQ Q<N>H rather than a count")
    as_needed: bool = Field(False, description="the dosage line is taken as needed (asNeeded[x]): CMDOSFRQ PRN; "
                                               "frequency_per_day is then its most")
    daily_dose_mg: float | None = Field(None, description="mg/day of the drug itself")
    pred_eq_daily_mg: float | None = Field(
        None, description="prednisolone-equivalent mg/day of a glucocorticoid record the dose counts (systemic, "
                          "in glucocorticoids.yaml); set by the glucocorticoids endpoint, None for any other record "
                          "or an unknown dose")
    route: str | None = None
    systemic: bool | None = None
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    partial_start: str | None = None
    partial_end: str | None = None
    atc: str | None = Field(None, description="ATC code among the medication codings (CMCLASCD)")
    ae_spid: str | None = Field(None, description="identifier of the AdverseEvent in reasonReference (CMAENO)")
    mh_spid: str | None = Field(None, description="identifier of the Condition in reasonReference (CMMHNO)")
    source_kind: Literal["statement", "request", "administration", "dispense", "immunization"] = "statement"
    status: str | None = None
    source: SourceRef


class AdverseEvent(_Model):
    term: str
    spid: str | None = Field(None, description="AdverseEvent.identifier value")
    meddra_code: str | None = Field(None, description="code of the MedDRA coding (an LLT code)")
    meddra_term: str | None = Field(None, description="display of the MedDRA coding")
    severity: str | None = Field(None, description="AdverseEvent.severity code (mild, moderate, severe)")
    action_taken: str | None = Field(None, description="action taken with the study treatment, code as sent")
    mitigation_recorded: bool = Field(False, description="the event carries mitigatingAction at all")
    body_site: str | None = Field(None, description="bodySite of the resultingCondition (text or display)")
    qualifiers: tuple[str, ...] = Field((), description="locationQualifier codes of that body site's BodyStructure")
    treatments: tuple[str, ...] = Field((), description="references of treatments given for it (mitigatingAction)")
    other_actions: tuple[str, ...] = Field((), description="other actions taken, as text (mitigatingAction)")
    codes: tuple[str, ...] = Field(default=(), description="system|code of the event coding")
    grade: int | None = Field(None, ge=1, le=5)
    grade_approximate: bool = Field(False, description="grade mapped from mild/moderate/severe")
    serious: bool | None = None
    serious_criteria: tuple[str, ...] = ()
    related: bool | None = Field(None, description="related to LCAR-AIO (possibly, probably, definitely)")
    relatedness: str | None = Field(None, description="relatedness as recorded")
    onset_date: dt.date | None = None
    onset_partial: str | None = None
    onset_datetime: dt.datetime | None = Field(
        None, description="onset time in the study time zone, when the EHR sent a dateTime (else only onset_date)")
    resolution_date: dt.date | None = None
    resolution_partial: str | None = None
    resolution_datetime: dt.datetime | None = Field(
        None, description="resolution time in the study time zone, when the EHR sent a dateTime")
    outcome: str | None = None
    study_day: int | None = None
    end_study_day: int | None = None
    #: the TEAE flag of the safety endpoint (derive/safety.py teae_flag), as in the CRF file, the exports' AE
    #: domain (AETRTEM) and the safety results; None in the CRF the mapping gives the derivations, and when the
    #: study derives no safety endpoint
    teae: bool | None = None
    #: onset from lymphodepletion start to before Day 1; the safety endpoint's flag (AEPREINF) when it is derived
    pre_infusion: bool = False
    crs: bool = False
    icans: bool = False
    hematologic: bool = False
    baseline_grade: int | None = Field(
        None, ge=1, le=5,
        description="grade on Day 1 before the infusion of an event already present then (TEAE by worsening)",
    )
    source: SourceRef


class MedicalHistory(_Model):
    """MH: a Condition or an AllergyIntolerance of the subject that began before the study treatment."""

    term: str
    kind: Literal["condition", "allergy"]
    category: str | None = None
    subcategory: str | None = Field(None, description="the second category sent (MHSCAT)")
    spid: str | None = None
    code: str | None = Field(None, description="system|code of the first coding")
    meddra_code: str | None = None
    meddra_term: str | None = None
    occurred: bool = Field(True, description="False for a refuted condition/allergy")
    ongoing: bool | None = None
    recorded_date: dt.date | None = None
    start_date: dt.date | None = None
    start_partial: str | None = None
    end_date: dt.date | None = None
    end_partial: str | None = None
    body_site: str | None = None
    source: SourceRef


class ProcedureRecord(_Model):
    """PR: a Procedure other than the study infusion (the infusion is in EX)."""

    term: str
    frequency_per_day: float | None = Field(None, description="sessions per day of an R5 occurrence Timing (PRDOSFRQ)")
    code: str | None = Field(None, description="system|code of the first coding")
    codes: tuple[str, ...] = Field((), description="system|code of every coding of Procedure.code (PRCODE)")
    dictionary_term: str | None = Field(
        None, description="display of its coding in a procedure dictionary: SNOMED CT, ICD-10-PCS, CPT, OPS (PRDECOD)")
    meddra_code: str | None = None
    meddra_term: str | None = None
    category: str | None = Field(None, description="Procedure.category text or display (PRCAT)")
    spid: str | None = None
    occurred: bool = True
    status: str
    reason_not_done: str | None = None
    indication: str | None = None
    body_site: str | None = None
    qualifiers: tuple[str, ...] = Field((), description="locationQualifier codes of the target BodyStructure")
    status_reason: str | None = Field(None, description="statusReason text or display")
    ae_spid: str | None = Field(None, description="identifier of the AdverseEvent in reasonReference (PRAENO)")
    start: dt.datetime | None = None
    start_date: dt.date | None = None
    start_partial: str | None = None
    end_date: dt.date | None = None
    study_day: int | None = None
    source: SourceRef


class SubjectCRF(_Model):
    """Everything the EHR holds for one enrolled subject, mapped to CRF domains."""

    subject_id: str
    arm: str | None = None
    day1: dt.date | None = Field(None, description="date of the LCAR-AIO infusion (Day 1)")
    infusion_time: dt.datetime | None = Field(
        None, description="date-time of the infusion when the EHR records a time of day (kinetics time 0)")
    lymphodepletion_start: dt.date | None = None
    participation_start: dt.date | None = Field(
        None, description="start of the subject's participation (consent, else the screening window)")
    baseline_from: dt.date | None = Field(
        None, description="earliest date a baseline may come from (Day 1 minus the baseline look-back)")
    dm: Demographics
    ex: list[Exposure] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list, description="every usable result, time-ordered")
    visits: list[VisitRecord] = Field(default_factory=list)
    cm: list[ConMed] = Field(default_factory=list)
    ae: list[AdverseEvent] = Field(default_factory=list)
    mh: list[MedicalHistory] = Field(default_factory=list)
    pr: list[ProcedureRecord] = Field(default_factory=list)
    not_done: list[NotDone] = Field(default_factory=list, description="results not obtained (--STAT NOT DONE)")

    def findings_for(self, item: str) -> list[Finding]:
        return [f for f in self.findings if f.item == item]
