"""One enrolled subject's resources → :class:`SubjectCRF`.

Each input resource is first checked as FHIR R4 (:func:`fhir_adapter.fhir.r4.r4_problem`: the quick check of the
``fhir.resources.R4B`` models' element tables, the model itself for anything it cannot vouch for); one that
fails is quarantined with the element and the reason, and the subject's other resources still flow.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import replace
from typing import Any

from fhir_adapter.crf.models import (
    AdverseEvent,
    ConMed,
    Demographics,
    Finding,
    MedicalHistory,
    ProcedureRecord,
    SubjectCRF,
    VisitRecord,
)
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.adverse_events import AdverseEventMapper
from fhir_adapter.mapping.cdisc_details import immunizations
from fhir_adapter.mapping.cdisc_details import not_done as nd
from fhir_adapter.mapping.common import latest
from fhir_adapter.mapping.exposure import lymphodepletion_start, map_exposure, without_study_product
from fhir_adapter.mapping.history import HistoryMapper
from fhir_adapter.mapping.medications.mapper import MedicationMapper
from fhir_adapter.mapping.observations import ObservationMapper
from fhir_adapter.mapping.participation import Span, bound_adverse_events, participation
from fhir_adapter.mapping.visits import place
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study


def age_at(birth: dt.date | None, on: dt.date | None) -> int | None:
    if birth is None or on is None:
        return None
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _names_patient(reference: str, patient_id: str) -> bool:
    """``reference`` (relative, versioned or absolute) names ``Patient/<patient_id>``."""
    parts = reference.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return len(parts) >= 2 and parts[-2] == "Patient" and parts[-1] == patient_id


def valid_resources(resources: list[dict[str, Any]], subject_id: str, log: RunLog) -> list[dict[str, Any]]:
    ok = []
    for r in resources:
        problem = r4_problem(r)
        if problem:
            log.reject(str(r.get("resourceType")), r.get("id"), "r4-invalid", f"not valid FHIR R4: {problem}",
                       "correct the resource in the EHR (quarantine/ names its file, line and the offending element)",
                       subject_id=subject_id, raw=r)
        else:
            ok.append(r)
    return ok


class SubjectMapper:
    def __init__(self, study: Study, log: RunLog) -> None:
        self.study = study
        self.log = log
        self.observations = ObservationMapper(study, log)
        self.medications = MedicationMapper(study, log)
        self.adverse_events = AdverseEventMapper(study, log)
        self.history = HistoryMapper(study, log, self.adverse_events.meddra_systems)

    def checked(self, subject_id: str, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The subject's valid R4 resources (the others quarantined ``r4-invalid``), by type and id whatever order
        the source sent them in (a server's search order, a Bulk file's line order are their own): of two equal
        results the same one is kept, the same data give the same CRF. Day 1 is read from these too
        (roster/day1.py ``with_day1``): a quarantined infusion record never dates the infusion."""
        return sorted(valid_resources(resources, subject_id, self.log),
                      key=lambda r: (str(r.get("resourceType")), str(r.get("id"))))

    def map(self, e: Enrollee, resources: list[dict[str, Any]], checked: bool = False) -> SubjectCRF:
        """The subject's CRF; ``checked``: ``resources`` are :meth:`checked`'s already."""
        if not checked:
            resources = self.checked(e.subject_id, resources)
        obs = [r for r in resources if r.get("resourceType") == "Observation"]
        specimens = self._own_specimens(e, resources)
        findings = self.observations.map(obs, e.subject_id, specimens)
        # in an order of their own, not the order the source sent them in (a server's search order is arbitrary):
        # the same data give the same CRF and the same --SEQ
        not_done = sorted((nd(o, item, self.study.items[item].domain, self.study, e.day1, specimens)
                           for o, item in self.observations.not_done_obs),
                          key=lambda n: (n.date or dt.date.max, n.item, n.source.id if n.source else ""))
        span = participation(e, self.study)
        if span.start_basis == "consent" and e.consent_date is not None and e.day1 is not None \
                and e.consent_date > e.day1:  # (a schedule whose participation starts otherwise reads it all)
            self.log.warn(f"consent date {e.consent_date} is after Day 1 ({e.day1}, {e.day1_source or 'infusion'}): "
                          "the participation starts at consent, so what the subject had between Day 1 and consent "
                          "(adverse events included) is read as before it — no treatment-emergent event, no visit",
                          resource=f"{e.research_subject.resource_type}/{e.research_subject.id}",
                          subject_id=e.subject_id, rule="consent-after-day1",
                          fix="check the consent date (ResearchSubject.period.start, or the roster CSV's) and Day 1")
        findings, visits = self._placed(findings, span, e)
        ex = map_exposure(e, resources, self.study, self.log)
        ld_start = lymphodepletion_start(ex)
        cm = sorted(self.medications.map(without_study_product(resources, self.study), e.subject_id)
                    + immunizations(resources, e.subject_id, self.study, self.log),
                    key=lambda c: (c.start_date or dt.date.max, c.drug, c.source.id))
        mh = self.history.medical_history(resources, e.subject_id, e.day1, span.end)
        pr = self.history.procedures(resources, e.subject_id, e.day1)
        cm, pr = self._bound_records(cm, pr, span, e)
        ae = self.adverse_events.map(resources, e.subject_id, day1=e.day1, lymphodepletion_start=ld_start,
                                     infusion_id=e.infusion.id if e.infusion else None,
                                     infusion_time=e.infusion_time)
        ae, mh = self._bound_adverse_events(ae, mh, span, e)
        dm = Demographics(
            subject_id=e.subject_id, site=self._site(e), sex=e.sex,  # type: ignore[arg-type,unused-ignore]
            race=e.race, ethnicity=e.ethnicity, investigator_id=e.investigator_id,
            investigator_name=e.investigator_name, death_date=e.death_date, deceased=e.deceased,
            age=age_at(e.birth_date, e.consent_date), arm=e.arm, status=e.status, consent_date=e.consent_date,
            actual_arm=e.actual_arm, end_of_participation=e.end_of_study, country=self.study.country,
            source=(e.research_subject,),
        )
        if dm.site is None:
            self.log.warn(f"subject {e.subject_id} has no site: SITEID (Required in SDTM DM) is empty in its exports",
                          resource=f"ResearchSubject/{e.research_subject.id}", subject_id=e.subject_id,
                          rule="no-siteid",
                          fix="enrol the subject in a site-level ResearchStudy (partOf the study, its identifier the "
                              "site number), or give the Patient a managingOrganization (docs/cdisc-mapping.md, "
                              "SITEID)")
        self.log.count("crf.findings", len(findings))
        self.log.count("crf.visits", len(visits))
        return SubjectCRF(
            subject_id=e.subject_id, arm=e.arm, day1=e.day1, infusion_time=e.infusion_time,
            lymphodepletion_start=ld_start, participation_start=span.start,
            baseline_from=self._baseline_from(e.day1),
            dm=dm, ex=ex, findings=findings, visits=visits, cm=cm, ae=ae, mh=mh, pr=pr, not_done=not_done,
        )

    def left(self, crf: SubjectCRF, e: Enrollee) -> SubjectCRF:
        """The CRF an earlier run made of a subject who has since left (docs/clinical-rules.md#withdrawn-subjects),
        as its ResearchSubject now bounds it: results and adverse events after the end of participation are taken
        out (counted and warned of as when read), and DM takes the ResearchSubject's status, end and version."""
        e = replace(e, day1=crf.day1)
        now = participation(e, self.study)  # the start stays the one the CRF was read with
        span = Span(crf.participation_start, now.end, now.start_basis, now.end_basis)
        findings, visits = self._placed(list(crf.findings), span, e)
        ae, mh = self._bound_adverse_events(list(crf.ae), list(crf.mh), span, e)
        cm, pr = self._bound_records(list(crf.cm), list(crf.pr), span, e)
        dm = crf.dm.model_copy(update={"status": e.status, "end_of_participation": e.end_of_study,
                                       "source": (e.research_subject,)})
        return crf.model_copy(update={"dm": dm, "findings": findings, "visits": visits, "ae": ae, "mh": mh,
                                      "cm": cm, "pr": pr})

    def _placed(self, findings: list[Finding], span: Span, e: Enrollee) -> tuple[list[Finding], list[VisitRecord]]:
        """The findings inside ``span`` placed in visits (:func:`place`); those outside it counted, and those after
        its end — taken out — warned of."""
        positions = Counter(span.position(f.date) for f in findings)
        before, after = positions["before"], positions["after"]
        placed = place(findings, e.day1, self.study, span)
        if before:
            self.log.count("participation.before-start", before)
        if after:
            self.log.count("participation.after-end", after)
            self.log.warn(f"{after} result(s) dated after the end of participation ({span.end}, "
                          f"{span.end_basis}) were not used", subject_id=e.subject_id, rule="participation")
        return placed

    def _bound_adverse_events(self, ae: list[AdverseEvent], mh: list[MedicalHistory], span: Span,
                              e: Enrollee) -> tuple[list[AdverseEvent], list[MedicalHistory]]:
        """AEs of the trial only: those before the participation start become medical history, those after
        its end are left out; both are counted and listed in the run report (participation.py)."""
        bounded = bound_adverse_events(ae, span, e.day1)
        for h in bounded.history:
            self.log.count("participation.ae-before-start")
            self.log.warn(f"adverse event '{h.term}' began before the participation start ({span.start}, "
                          f"{span.start_basis}): reported as medical history, not as an AE of the trial",
                          resource=h.source.reference, subject_id=e.subject_id, rule="participation")
        for a in bounded.after_end:
            self.log.count("participation.ae-after-end")
            self.log.warn(f"adverse event '{a.term}' began after the end of participation ({span.end}, "
                          f"{span.end_basis}): not used", resource=a.source.reference, subject_id=e.subject_id,
                          rule="participation")
        if bounded.history:
            mh = sorted([*mh, *bounded.history], key=lambda m: (m.start_date or dt.date.min, m.term, m.source.id))
        return bounded.kept, mh

    def _bound_records(self, cm: list[ConMed], pr: list[ProcedureRecord], span: Span,
                       e: Enrollee) -> tuple[list[ConMed], list[ProcedureRecord]]:
        """Concomitant medications and procedures begun after the end of participation are left out, counted
        (``participation.cm-after-end``, ``participation.pr-after-end``) and said per subject; those begun
        before consent stay (prior medications and procedures: CM and PR hold them) and are counted
        (``participation.cm-before-start``, ``participation.pr-before-start``)
        (docs/clinical-rules.md#participation)."""
        kept: list[list[Any]] = []
        for key, what, records in (("cm", "concomitant medication(s)", cm), ("pr", "procedure(s)", pr)):
            where = Counter(span.position(r.start_date) for r in records)
            if where["before"]:
                self.log.count(f"participation.{key}-before-start", where["before"])
            if where["after"]:
                self.log.count(f"participation.{key}-after-end", where["after"])
                self.log.warn(f"{where['after']} {what} begun after the end of participation ({span.end}, "
                              f"{span.end_basis}) were not used", subject_id=e.subject_id, rule="participation")
            kept.append([r for r in records if span.position(r.start_date) != "after"])
        return kept[0], kept[1]

    def _baseline_from(self, day1: dt.date | None) -> dt.date | None:
        lookback = self.study.schedule.baseline_lookback_days()
        return day1 - dt.timedelta(days=lookback) if day1 is not None and lookback is not None else None

    def _own_specimens(self, e: Enrollee, resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The Specimens the subject's results may take their collection details from (time, fasting,
        accession, site): a Specimen is read because a result names it, and one whose ``subject`` is another
        Patient is not the subject's sample — its details are not used (warning ``specimen-patient``), the
        result keeps its own date."""
        own: dict[str, dict[str, Any]] = {}
        # one Specimen id twice: its latest version, else the first (a warning same-id-different-content)
        for r in latest((r for r in resources if r.get("resourceType") == "Specimen"), self.log, e.subject_id):
            ref = (r.get("subject") or {}).get("reference") if isinstance(r.get("subject"), dict) else None
            if isinstance(ref, str) and "Patient/" in ref and not _names_patient(ref, e.patient_id):
                self.log.warn(f"Specimen/{r.get('id')} is the sample of {ref}, not of this subject's Patient: its "
                              "collection time, fasting status, accession and site are not used for the results "
                              "that name it", resource=f"Specimen/{r.get('id')}", subject_id=e.subject_id,
                              rule="specimen-patient", fix="correct Observation.specimen or Specimen.subject")
                continue
            own[str(r.get("id"))] = r
        return own

    def _site(self, e: Enrollee) -> str | None:
        """SITEID by the site overlay's rule (``siteid``): the site-level ResearchStudy's identifier (the
        FHIR-to-CDISC IG), else — or with ``organization`` — the Patient's managing organisation."""
        if self.study.siteid_rule == "research-study" and e.site_study:
            return e.site_study
        return e.site
