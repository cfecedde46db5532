"""One enrolled subject's resources → :class:`SubjectCRF`.

Each input resource is first parsed as FHIR R4 (``fhir.resources.R4B``); one that fails is quarantined
with the element and the reason, and the subject's other resources still flow.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fhir_adapter.crf.models import Demographics, SubjectCRF
from fhir_adapter.fhir_r4 import r4_problem
from fhir_adapter.mapping.adverse_events import AdverseEventMapper
from fhir_adapter.mapping.exposure import lymphodepletion_start, map_exposure
from fhir_adapter.mapping.medications import MedicationMapper
from fhir_adapter.mapping.observations import ObservationMapper
from fhir_adapter.mapping.participation import participation
from fhir_adapter.mapping.visits import place
from fhir_adapter.roster import Enrollee
from fhir_adapter.runlog import RunLog
from fhir_adapter.study import Study


def age_at(birth: dt.date | None, on: dt.date | None) -> int | None:
    if birth is None or on is None:
        return None
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def valid_resources(resources: list[dict[str, Any]], subject_id: str, log: RunLog) -> list[dict[str, Any]]:
    ok = []
    for r in resources:
        problem = r4_problem(r)
        if problem:
            log.reject(str(r.get("resourceType")), r.get("id"), "r4-invalid", f"not valid FHIR R4: {problem}",
                       "correct the resource in the EHR (it is kept in quarantine/)", subject_id=subject_id, raw=r)
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

    def map(self, e: Enrollee, resources: list[dict[str, Any]]) -> SubjectCRF:
        resources = valid_resources(resources, e.subject_id, self.log)
        obs = [r for r in resources if r.get("resourceType") == "Observation"]
        findings = self.observations.map(obs, e.subject_id)
        span = participation(e, self.study)
        before = sum(1 for f in findings if span.position(f.date) == "before")
        after = sum(1 for f in findings if span.position(f.date) == "after")
        findings, visits = place(findings, e.day1, self.study, span)
        if before:
            self.log.count("participation.before-start", before)
        if after:
            self.log.count("participation.after-end", after)
            self.log.warn(f"{after} result(s) dated after the end of participation ({span.end}, "
                          f"{span.end_basis}) were not used", subject_id=e.subject_id, rule="participation")
        ex = map_exposure(e, resources, self.study, self.log)
        ld_start = lymphodepletion_start(ex)
        cm = self.medications.map(resources, e.subject_id)
        ae = self.adverse_events.map(resources, e.subject_id, day1=e.day1, lymphodepletion_start=ld_start,
                                     infusion_id=e.infusion.id if e.infusion else None)
        dm = Demographics(
            subject_id=e.subject_id, site=e.site, sex=e.sex,  # type: ignore[arg-type,unused-ignore]
            age=age_at(e.birth_date, e.consent_date), arm=e.arm, status=e.status, consent_date=e.consent_date,
            source=(e.research_subject,),
        )
        self.log.count("crf.findings", len(findings))
        self.log.count("crf.visits", len(visits))
        return SubjectCRF(
            subject_id=e.subject_id, arm=e.arm, day1=e.day1, lymphodepletion_start=ld_start,
            dm=dm, ex=ex, findings=findings, visits=visits, cm=cm, ae=ae,
        )
