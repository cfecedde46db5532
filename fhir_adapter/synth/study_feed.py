"""A synthetic EHR export for any study folder, drawn from the study's own data.

The study folder decides what the feed holds: ``study.yaml`` the ResearchStudy identifier, the subject
identifier system and the study product whose first dose is Day 1 (a MedicationAdministration of one of
``infusion_medication_codes``, else a Procedure with one of ``infusion_codes``; given again at the scheduled
visits up to day 169 only with ``repeated_doses``); ``schedule.yaml`` the visits
(one visit date per scheduled visit, near its target day and inside its window); ``items.yaml`` which lab
results are drawn at every visit (each quantity item whose LOINC code the lab catalogue knows, in the unit the
site reports it). Every subject also has a glucocorticoid taper and background mycophenolate, RxNorm-coded as
hospitals record them, for the glucocorticoid endpoint and the CM domain.

Besides the enrolled subjects the export holds screen failures (ResearchSubject ``ineligible``, screening labs)
and patients of the same clinics who are not in the study, whose data must never reach the study's outputs.
Sites, names, units and lab conventions are the shared fictional ones (``sites``, ``people``, ``lab_catalog``).

Deterministic: everything is drawn from ``random.Random`` streams seeded from ``seed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

from fhir_adapter.study.load import Study, load_study
from fhir_adapter.study.models import Visit
from fhir_adapter.terminology.codes import LOINC

from .enrolment import SID_RESEARCH_STUDY, research_subject
from .ids import new_id, ref
from .lab_catalog import ANALYTES
from .lab_course import LabCourse, draw_response
from .medication_records import administration, statement, taper_doses
from .observations import ObservationFactory
from .people import ClinicPatient, organization, patient
from .sink import NdjsonWriter, Resource, Sink, clear_feed, write_manifest
from .sites import SITE_NUMBERS, SITES
from .timeline import DATA_CUT, TRANSACTION_TIME, at, date_to_study_day, fmt_local, fmt_utc, study_day_to_date

RESOURCE_TYPES: tuple[str, ...] = (
    "Organization", "ResearchStudy", "Patient", "ResearchSubject", "Procedure", "MedicationStatement",
    "MedicationAdministration", "Observation", "Specimen",
)
#: the subject identifier system when study.yaml names none
DEFAULT_SUBJECT_SYSTEM = "https://fhir-adapter.org/fhir/sid/subject"
ARM = "TRT"
FIRST_DOSE = date(2024, 4, 8)
#: the last subject's first dose: two months before the data cut
LAST_FIRST_DOSE = DATA_CUT - timedelta(days=60)
FEMALE_SHARE = 0.85
#: the product is given at Day 1 and at every scheduled visit up to this study day
DOSING_UNTIL_DAY = 169
#: prednisone-equivalent taper: start doses (mg/day) and where responders / non-responders end
GC_START_DOSES: tuple[float, ...] = (20.0, 25.0, 30.0, 40.0)
GC_TARGETS: dict[str, tuple[float, ...]] = {"complete": (2.5, 5.0), "partial": (5.0, 7.5), "none": (7.5, 10.0)}
#: methylprednisolone mg per prednisone mg (4 mg methylprednisolone = 5 mg prednisone)
METHYLPREDNISOLONE_PER_PREDNISONE = 0.8
LUPUS_NEPHRITIS = [{"coding": [{"system": "http://snomed.info/sct", "code": "68815009",
                                "display": "Systemic lupus erythematosus glomerulonephritis syndrome"}]}]


@dataclass(frozen=True, slots=True)
class PlannedSubject:
    subject_id: str        # "<site>-<seq>"
    patient_id: str
    research_subject_id: str
    site: int
    sex: str
    birth_date: date
    consent: date
    screening: date
    day1: date | None      # None: a screen failure
    response: str          # complete | partial | none (the generator's intent, not read back)
    seed: int


@dataclass(frozen=True, slots=True)
class StudyFeedPlan:
    study_resource_id: str
    organization_ids: dict[int, str]
    subjects: tuple[PlannedSubject, ...]
    screen_failures: tuple[PlannedSubject, ...]
    clinic_patients: tuple[ClinicPatient, ...]


@dataclass(frozen=True, slots=True)
class StudyProduct:
    """What marks Day 1: a MedicationAdministration of ``code`` (kind medication) or a Procedure."""

    kind: str
    system: str
    code: str
    name: str


def lab_items(study: Study) -> dict[str, str]:
    """CRF item -> lab-catalogue analyte, for the study's quantity items with a LOINC code the labs report."""
    by_loinc = {a.code: a.key for a in ANALYTES.values() if a.system == LOINC and a.category == "laboratory"}
    out: dict[str, str] = {}
    for item_id, item in study.items.items():
        if item.value != "quantity":
            continue
        for system, code in (study.resolve_code(c) for c in item.codes if "|" in c):
            if system == LOINC and code in by_loinc:
                out[item_id] = by_loinc[code]
                break
    return out


def study_product(study: Study) -> StudyProduct:
    for kind, codes in (("medication", study.infusion_medication_codes), ("procedure", study.infusion_codes)):
        if codes:
            system, code = sorted(codes)[0]
            return StudyProduct(kind, system, code, study.info.product_name)
    raise ValueError(f"{study.root}/study.yaml names no infusion_medication_codes or infusion_codes: the feed "
                     "cannot record a first dose (Day 1)")


def _birth_date(rng: Random, on: date) -> date:
    return on - timedelta(days=rng.randint(18 * 365 + 10, 65 * 365))


def _first_doses(rng: Random, n: int) -> list[date]:
    span = (LAST_FIRST_DOSE - FIRST_DOSE).days
    return [FIRST_DOSE + timedelta(days=span * k // max(1, n - 1) + (rng.randint(-3, 3) if 0 < k < n - 1 else 0))
            for k in range(n)]


def _screening_visit(study: Study) -> Visit:
    return min(study.schedule.visits, key=lambda v: v.day)


def plan_study(study: Study, subjects: int, seed: int) -> StudyFeedPlan:
    """Who is enrolled where and when, and who is screened out or only a clinic patient."""
    if subjects < 1:
        raise ValueError("subjects must be >= 1")
    rng = Random(seed)
    study_resource_id = new_id(rng)
    organization_ids = {site: new_id(rng) for site in SITE_NUMBERS}
    scr = _screening_visit(study)
    scr_lo, scr_hi = scr.window[0], min(scr.window[1], -7)
    drafts: list[tuple[int, date, str, dict[str, Any]]] = []
    for i, day1 in enumerate(_first_doses(rng, subjects)):
        screening = study_day_to_date(day1, rng.randint(scr_lo, max(scr_lo, scr_hi)))
        drafts.append((SITE_NUMBERS[i % len(SITE_NUMBERS)], screening - timedelta(days=rng.randint(0, 6)), "E", {
            "patient_id": new_id(rng), "research_subject_id": new_id(rng),
            "sex": "female" if rng.random() < FEMALE_SHARE else "male", "screening": screening, "day1": day1,
            "response": draw_response(rng), "seed": rng.getrandbits(63)}))
    n_other = max(1, round(subjects / 8))
    for _ in range(n_other):
        screening = FIRST_DOSE + timedelta(days=rng.randint(0, (LAST_FIRST_DOSE - FIRST_DOSE).days))
        drafts.append((rng.choice(SITE_NUMBERS), screening - timedelta(days=rng.randint(0, 6)), "F", {
            "patient_id": new_id(rng), "research_subject_id": new_id(rng),
            "sex": "female" if rng.random() < FEMALE_SHARE else "male", "screening": screening, "day1": None,
            "response": "none", "seed": rng.getrandbits(63)}))
    clinic = tuple(ClinicPatient(new_id(rng), rng.choice(SITE_NUMBERS), "female" if rng.random() < 0.8 else "male",
                                 _birth_date(rng, date(2024, 1, 1)), rng.getrandbits(63)) for _ in range(n_other))
    seq: dict[int, int] = {}
    enrolled: list[PlannedSubject] = []
    failed: list[PlannedSubject] = []
    for site, consent, kind, d in sorted(drafts, key=lambda x: (x[0], x[1], x[2])):
        seq[site] = seq.get(site, 0) + 1
        ps = PlannedSubject(subject_id=f"{site}-{seq[site]:03d}", site=site, consent=consent,
                            birth_date=_birth_date(rng, consent), **d)
        (enrolled if kind == "E" else failed).append(ps)
    enrolled.sort(key=lambda s: (s.day1 or DATA_CUT, s.subject_id))
    return StudyFeedPlan(study_resource_id, organization_ids, tuple(enrolled), tuple(failed), clinic)


def research_study(study: Study, resource_id: str, product: StudyProduct) -> Resource:
    return {
        "resourceType": "ResearchStudy", "id": resource_id,
        "meta": {"versionId": "1", "lastUpdated": f"{FIRST_DOSE - timedelta(days=90)}T09:00:00Z"},
        "identifier": [{"system": study.info.identifier_system or SID_RESEARCH_STUDY, "value": study.info.id}],
        "title": study.info.name or study.info.id,
        "status": "active",
        "condition": LUPUS_NEPHRITIS,
        "period": {"start": (FIRST_DOSE - timedelta(days=60)).isoformat()},
        "arm": [{"name": ARM, "type": {"text": "Experimental"}, "description": f"{product.name}, open label"}],
    }


def _status(day1: date) -> str:
    since = (DATA_CUT - day1).days
    return "on-study-intervention" if since < DOSING_UNTIL_DAY else "follow-up"


def _visit_days(rng: Random, visits: tuple[Visit, ...], screening_day: int) -> list[tuple[Visit, int]]:
    out: list[tuple[Visit, int]] = []
    first = min(visits, key=lambda v: v.day)
    for v in sorted(visits, key=lambda v: v.day):
        if v is first:
            sd = screening_day
        elif v.day == 1:
            sd = 1
        else:
            slack = min(3, (v.window[1] - v.window[0]) // 4)
            sd = min(max(v.day + rng.randint(-slack, slack), v.window[0]), v.window[1])
            if sd == 0:
                sd = 1 if v.day > 0 else -1
        out.append((v, sd))
    return out


def _product_dose(rng: Random, ps: PlannedSubject, product: StudyProduct, when: datetime) -> Resource | None:
    concept = {"coding": [{"system": product.system, "code": product.code, "display": product.name}],
               "text": product.name}
    if product.kind == "medication":
        res = administration(rng, ps.site, ps.patient_id, product.name, 500.0, when, 60,
                             f"{product.name} 500 mg IV over 60 min", medication_concept=concept)
        if res is not None:
            res["reasonCode"] = LUPUS_NEPHRITIS
        return res
    if when.date() >= DATA_CUT:
        return None
    return {
        "resourceType": "Procedure", "id": new_id(rng),
        "meta": {"versionId": "1", "lastUpdated": fmt_utc(when + timedelta(hours=2))},
        "status": "completed", "code": concept, "subject": ref("Patient", ps.patient_id),
        "performedDateTime": fmt_local(when), "reasonCode": LUPUS_NEPHRITIS,
    }


def _draw_labs(obs: ObservationFactory, course: LabCourse, labs: dict[str, str], when: datetime, sd: int,
               rng: Random) -> None:
    for key in dict.fromkeys(labs.values()):
        value = course.value(key, sd, rng)
        if key == "protein_24h":
            obs.lab(key, value, when, rng.randint(240, 900), period=(when - timedelta(days=1), when))
        else:
            obs.lab(key, value, when, rng.randint(60, 600))


def _glucocorticoids(rng: Random, ps: PlannedSubject, sink: Sink, day1: date) -> None:
    """A prednisone-equivalent taper from before screening, stepping down every 2-4 weeks after Day 1."""
    drug = SITES[ps.site].glucocorticoid
    factor = METHYLPREDNISOLONE_PER_PREDNISONE if drug == "methylprednisolone" else 1.0
    doses = taper_doses(rng.choice(GC_START_DOSES), rng.choice(GC_TARGETS[ps.response]))
    start = ps.screening - timedelta(days=rng.randint(20, 200))
    end = day1 + timedelta(days=rng.randint(14, 28) - 1)
    for i, dose in enumerate(doses):
        res = statement(rng, ps.site, ps.patient_id, drug, dose * factor, start, None if i == len(doses) - 1 else end,
                        LUPUS_NEPHRITIS)
        if res is not None:
            sink.add(res)
        start = end + timedelta(days=1)
        end = start + timedelta(days=rng.randint(14, 28) - 1)


def enrolled_resources(study: Study, plan: StudyFeedPlan, ps: PlannedSubject, product: StudyProduct,
                       labs: dict[str, str], sink: Sink) -> None:
    assert ps.day1 is not None
    rng = Random(ps.seed)
    sink.add(patient(rng, ps.patient_id, ps.site, plan.organization_ids[ps.site], ps.sex, ps.birth_date))
    changed = min(ps.day1 + timedelta(days=DOSING_UNTIL_DAY if _status(ps.day1) == "follow-up" else 0),
                  DATA_CUT)
    sink.add(research_subject(ps.research_subject_id, study.info.subject_identifier_system or DEFAULT_SUBJECT_SYSTEM,
                              ps.subject_id, plan.study_resource_id, ps.patient_id, _status(ps.day1), ps.consent,
                              ARM, changed))
    course = LabCourse(rng, ps.response, ps.sex, tuple(dict.fromkeys(labs.values())))
    obs = ObservationFactory(rng, SITES[ps.site], ps.patient_id, ps.sex, sink.add_observation)
    obs.specimen_emit = sink.add
    mmf = statement(rng, ps.site, ps.patient_id, "mycophenolate", 1000.0,
                    ps.consent - timedelta(days=rng.randint(60, 700)), None, LUPUS_NEPHRITIS, frequency=2)
    if mmf is not None:
        sink.add(mmf)
    _glucocorticoids(rng, ps, sink, ps.day1)

    def give(when: datetime) -> None:
        dose = _product_dose(rng, ps, product, when)
        if dose is not None:
            sink.add(dose)

    # the first dose is Day 1 whether or not the schedule has a Day 1 visit (after that visit's labs when it has
    # one); later doses at the scheduled visits only for a study whose product is given more than once
    dosed = False
    for visit, sd in _visit_days(rng, study.schedule.visits, date_to_study_day(ps.day1, ps.screening)):
        if not dosed and sd > 1:
            give(at(ps.day1, rng.randint(9 * 60, 11 * 60)))
            dosed = True
        day = study_day_to_date(ps.day1, sd)
        if day >= DATA_CUT:
            break
        when = at(day, rng.randint(7 * 60 + 30, 10 * 60 + 30))
        _draw_labs(obs, course, labs, when, sd, rng)
        if (visit.day == 1 and not dosed) or (study.info.repeated_doses and 1 < visit.day <= DOSING_UNTIL_DAY):
            give(when + timedelta(minutes=rng.randint(60, 150)))
            dosed = True
    if not dosed and ps.day1 < DATA_CUT:
        give(at(ps.day1, rng.randint(9 * 60, 11 * 60)))


def screen_failure_resources(study: Study, plan: StudyFeedPlan, ps: PlannedSubject, labs: dict[str, str],
                             sink: Sink) -> None:
    rng = Random(ps.seed)
    sink.add(patient(rng, ps.patient_id, ps.site, plan.organization_ids[ps.site], ps.sex, ps.birth_date))
    failed_on = ps.screening + timedelta(days=rng.randint(7, 14))
    rs = research_subject(ps.research_subject_id, study.info.subject_identifier_system or DEFAULT_SUBJECT_SYSTEM,
                          ps.subject_id, plan.study_resource_id, ps.patient_id, "ineligible", ps.consent, None,
                          min(failed_on, DATA_CUT), end=min(failed_on, DATA_CUT))
    sink.add(rs)
    course = LabCourse(rng, "complete", ps.sex, tuple(dict.fromkeys(labs.values())))
    obs = ObservationFactory(rng, SITES[ps.site], ps.patient_id, ps.sex, sink.add_observation)
    if ps.screening < DATA_CUT:
        _draw_labs(obs, course, labs, at(ps.screening, rng.randint(480, 660)), 200, rng)


def clinic_resources(plan: StudyFeedPlan, cp: ClinicPatient, labs: dict[str, str], sink: Sink) -> None:
    """A nephrology-clinic patient of a study site who is not in the study: labs and medications."""
    rng = Random(cp.seed)
    sink.add(patient(rng, cp.patient_id, cp.site, plan.organization_ids[cp.site], cp.sex, cp.birth_date))
    course = LabCourse(rng, "none", cp.sex, tuple(dict.fromkeys(labs.values())))
    obs = ObservationFactory(rng, SITES[cp.site], cp.patient_id, cp.sex, sink.add_observation)
    first = FIRST_DOSE + timedelta(days=rng.randint(0, 500))
    for k in range(rng.randint(2, 4)):
        day = first + timedelta(days=90 * k)
        if day < DATA_CUT:
            _draw_labs(obs, course, labs, at(day, rng.randint(480, 690)), 1, rng)
    res = statement(rng, cp.site, cp.patient_id, SITES[cp.site].glucocorticoid, 10.0, first, None, LUPUS_NEPHRITIS)
    if res is not None:
        sink.add(res)


def export_request(study: Study) -> str:
    group = re.sub(r"[^a-z0-9-]+", "-", study.info.id.lower()).strip("-")
    return f"https://ehr.hospital.example.org/fhir/Group/{group}/$export"


def write_study_feed(study_dir: Path, out_dir: Path, subjects: int = 12, seed: int = 7) -> dict[str, int]:
    """Write the synthetic EHR export of the study in ``study_dir`` for ``subjects`` enrolled subjects;
    return the resource counts per type."""
    study = load_study(Path(study_dir))
    out_dir = Path(out_dir)
    product = study_product(study)
    labs = lab_items(study)
    plan = plan_study(study, subjects, seed)
    clear_feed(out_dir, RESOURCE_TYPES)
    with NdjsonWriter(out_dir) as w:
        for site, org_id in plan.organization_ids.items():
            w.add(organization(site, org_id))
        w.add(research_study(study, plan.study_resource_id, product))
        others = [("F", x) for x in plan.screen_failures] + [("C", x) for x in plan.clinic_patients]
        every = max(1, len(plan.subjects) // (len(others) + 1))
        for i, ps in enumerate(plan.subjects):
            enrolled_resources(study, plan, ps, product, labs, w)
            if others and (i + 1) % every == 0:
                kind, other = others.pop(0)
                if kind == "F" and isinstance(other, PlannedSubject):
                    screen_failure_resources(study, plan, other, labs, w)
                elif isinstance(other, ClinicPatient):
                    clinic_resources(plan, other, labs, w)
        for kind, other in others:
            if kind == "F" and isinstance(other, PlannedSubject):
                screen_failure_resources(study, plan, other, labs, w)
            elif isinstance(other, ClinicPatient):
                clinic_resources(plan, other, labs, w)
        counts = dict(w.counts)
    return write_manifest(out_dir, counts, RESOURCE_TYPES, export_request(study), TRANSACTION_TIME)
