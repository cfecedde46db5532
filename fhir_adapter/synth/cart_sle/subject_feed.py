"""All resources of one person: an enrolled subject, a screen failure, or a non-enrolled patient of the same
clinics (whose data share the files but must never reach the study's outputs)."""

from __future__ import annotations

from datetime import date, timedelta
from random import Random

from ..observations import ObservationFactory
from ..people import ClinicPatient, patient
from ..sites import SITES
from ..timeline import DATA_CUT, at
from . import scenarios as sc
from .adverse_events import AEvent, adverse_event_resource, clip_to_cut
from .clinical_history import emit_clinical_history, race_ethnicity_extensions
from .context import Sink, SubjectContext
from .course import draw_course
from .irregularities import OVERRIDE_FEVER, OVERRIDE_LEUKOPENIA, Irregularity
from .medications import (
    emit_glucocorticoids,
    emit_lymphodepletion,
    emit_standing_therapy,
    emit_topical_steroid,
    emit_toxicity_treatment,
)
from .plan import ScreenFailurePlan, SubjectPlan, TrialPlan
from .sledai import emit_sledai
from .study import apheresis, enrolled_subject, infusion, screen_failure_subject
from .toxicities import draw_events
from .visit_observations import draw_visits, emit_crs_day_results, emit_groups, emit_visit_results

SCREENING_GROUPS: tuple[str, ...] = ("cbc", "chemistry", "vitals", "urinalysis", "urine_protein", "complement",
                                     "dsdna")
CLINIC_GROUPS: tuple[str, ...] = ("cbc", "chemistry", "complement", "dsdna", "urinalysis")
#: screening study day assumed for people who never reach Day 1 (their values are pre-treatment)
_PRE_TREATMENT_DAY = 45


def _u(rng: Random, lo: float, hi: float) -> float:
    return lo + (hi - lo) * rng.random()


def _force_planned_values(ctx: SubjectContext, sp: SubjectPlan, irregular: list[Irregularity]) -> set[str]:
    """Pin the lab values a scenario or a clinician override depends on; return the febrile SLEDAI visits."""
    rng, forced = ctx.rng, ctx.course.forced
    febrile: set[str] = set()
    if sc.SLE_FEVER_AT_BASELINE in sp.scenarios:
        for vid in ("SCR", "BL"):
            forced[(vid, "temperature")] = _u(rng, 38.3, 38.7)
            febrile.add(vid)
    for ir in irregular:
        if ir.kind == OVERRIDE_LEUKOPENIA:
            wbc = _u(rng, 2.3, 2.8)
            forced[("W4", "leukocytes")] = wbc
            forced[("W4", "neutrophils")] = wbc * 0.55
            forced[("W4", "lymphocytes")] = wbc * 0.3
        elif ir.kind == OVERRIDE_FEVER:
            forced[("W8", "temperature")] = _u(rng, 38.4, 38.8)
    return febrile


def enrolled_resources(plan: TrialPlan, sp: SubjectPlan, irregular: list[Irregularity], sink: Sink) -> None:
    rng = Random(sp.seed)
    emit = sink.add
    conv = SITES[sp.site]
    person = patient(rng, sp.patient_id, sp.site, plan.organization_ids[sp.site], sp.sex, sp.birth_date)
    race_ethnicity = race_ethnicity_extensions(sp.seed)
    if race_ethnicity:
        person["extension"] = race_ethnicity
    emit(person)
    emit(enrolled_subject(sp, plan.study_id))
    course = draw_course(rng, sex=sp.sex, birth_date=sp.birth_date, ln=sp.ln_at_baseline,
                         responder=sp.responder, dose_per_kg=sp.dose_per_kg)
    ctx = SubjectContext(
        rng=rng, patient_id=sp.patient_id, site=conv, day1=sp.day1, course=course,
        obs=ObservationFactory(rng, conv, sp.patient_id, sp.sex, sink.add_observation), emit=emit,
        study_id=plan.study_id,
        procedure_id=sp.infusion_procedure_id, followup_end=sp.followup_end,
        irregular={(ir.visit, ir.item): ir for ir in irregular},
    )
    ctx.obs.specimen_emit = emit
    ctx.infusion = at(sp.day1, rng.randint(660, 840))
    ctx.obs.relative_to = (ctx.infusion, f"Procedure/{sp.infusion_procedure_id}", "LCAR-AIO infusion")
    draw_visits(ctx, sp.screening_date, frozenset(ir.visit for ir in irregular if ir.visit))
    febrile = _force_planned_values(ctx, sp, irregular)
    events = clip_to_cut(draw_events(ctx, sp.scenarios))
    screening_day = ctx.sd(sp.screening_date)
    emit(apheresis(rng, sp.patient_id, ctx.on_day(rng.randint(screening_day + 3, -28), rng.randint(480, 600))))
    if sp.day1 < DATA_CUT:
        emit(infusion(sp, ctx.infusion, sp.dose_per_kg * course.weight / 100.0))
    emit_standing_therapy(ctx, sp.consent_date, enrolled=True)
    emit_glucocorticoids(ctx, sp.consent_date)
    emit_topical_steroid(ctx)
    emit_lymphodepletion(ctx)
    emit_toxicity_treatment(ctx, events)
    emit_visit_results(ctx)
    emit_crs_day_results(ctx)
    emit_sledai(ctx, frozenset(febrile))
    for k, ev in enumerate(events, 1):
        emit(adverse_event_resource(ctx, ev, k, sp.subject_id))
    emit_clinical_history(ctx, sp)


def _outside_context(rng: Random, patient_id: str, site: int, sex: str, birth_date: date, anchor: date,
                     ln: bool, sink: Sink) -> SubjectContext:
    conv = SITES[site]
    course = draw_course(rng, sex=sex, birth_date=birth_date, ln=ln, responder=True, dose_per_kg=2.0)
    return SubjectContext(rng=rng, patient_id=patient_id, site=conv, day1=anchor, course=course,
                          obs=ObservationFactory(rng, conv, patient_id, sex, sink.add_observation),
                          emit=sink.add)


def screen_failure_resources(plan: TrialPlan, sf: ScreenFailurePlan, sink: Sink) -> None:
    rng = Random(sf.seed)
    emit = sink.add
    emit(patient(rng, sf.patient_id, sf.site, plan.organization_ids[sf.site], sf.sex, sf.birth_date))
    emit(screen_failure_subject(sf, plan.study_id, sf.screening_date + timedelta(days=rng.randint(7, 14))))
    ctx = _outside_context(rng, sf.patient_id, sf.site, sf.sex, sf.birth_date,
                           sf.screening_date + timedelta(days=_PRE_TREATMENT_DAY), rng.random() < 0.4, sink)
    if sf.reason.startswith("eGFR"):
        ctx.course.creatinine = (_u(rng, 2.4, 3.2), 0.0)
    when = at(sf.screening_date, rng.randint(450, 690))
    ctx.visits["SCR"] = when
    emit_groups(ctx, "SCR", when, SCREENING_GROUPS)


def non_enrolled_resources(plan: TrialPlan, ne: ClinicPatient, number: int, sink: Sink) -> None:
    """A lupus-clinic patient of a study site who is not in the study: labs, medications, one AE."""
    rng = Random(ne.seed)
    emit = sink.add
    emit(patient(rng, ne.patient_id, ne.site, plan.organization_ids[ne.site], ne.sex, ne.birth_date))
    first = date(2024, 1, 15) + timedelta(days=rng.randint(0, 600))
    ctx = _outside_context(rng, ne.patient_id, ne.site, ne.sex, ne.birth_date,
                           first + timedelta(days=_PRE_TREATMENT_DAY), rng.random() < 0.3, sink)
    clinic_days = sorted({first + timedelta(days=rng.randint(0, 150) * k) for k in range(rng.randint(3, 5))})
    for d in clinic_days:
        if d < DATA_CUT:
            emit_groups(ctx, "SCR", at(d, rng.randint(450, 690)), CLINIC_GROUPS)
    if number == 0:   # a clinician-scored SLEDAI-2K form in the same files as the study's
        ctx.visits["SCR"] = at(first, rng.randint(450, 690))
        emit_sledai(ctx, frozenset())
    emit_standing_therapy(ctx, first, enrolled=False)
    emit_glucocorticoids(ctx, first)
    onset = at(first + timedelta(days=rng.randint(20, 200)), rng.randint(480, 1080))
    event = AEvent("zoster" if number % 2 else "urti", 2, onset, onset + timedelta(days=rng.randint(5, 12)),
                   "unrelated")
    emit(adverse_event_resource(ctx, event, 1, f"NS{ne.site}-{number + 1:03d}"))
