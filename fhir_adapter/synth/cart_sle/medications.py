"""Medication records as the EHR holds them: MedicationStatements for standing therapy (glucocorticoid
taper steps, hydroxychloroquine, mycophenolate, antiviral prophylaxis) and MedicationAdministrations for
what the ward gave (lymphodepletion, tocilizumab, dexamethasone)."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from typing import Any

from fhir_adapter.terminology.codes import SNOMED

from ..medication_records import administration, statement, taper_doses
from ..timeline import LAST_INSTANT
from .adverse_events import AEvent
from .clinical_history import oxygen_therapy
from .context import Resource, SubjectContext
from .irregularities import ALTERNATE_DAY_GLUCOCORTICOID, TOPICAL_GLUCOCORTICOID
from .schedule import LD_CY_DAY, LD_FLU_DAYS

SLE_REASON = [{"coding": [{"system": SNOMED, "code": "55464009", "display": "Systemic lupus erythematosus"}]}]

#: glucocorticoid taper (prednisone-equivalent mg/day)
GC_START_DOSES: tuple[float, ...] = (10.0, 12.5, 15.0, 20.0, 20.0, 25.0, 30.0)
RESPONDER_TARGETS: tuple[float, ...] = (0.0, 0.0, 2.5, 5.0, 5.0)
NON_RESPONDER_TARGETS: tuple[float, ...] = (7.5, 10.0, 10.0)
#: methylprednisolone mg per prednisone mg (4 mg methylprednisolone = 5 mg prednisone)
METHYLPREDNISOLONE_PER_PREDNISONE = 0.8
FLUDARABINE_MG_M2 = 30.0
CYCLOPHOSPHAMIDE_MG_M2 = 1000.0
TOCILIZUMAB_MG_KG = 8.0


def _statement(ctx: SubjectContext, drug: str, dose_mg: float, start: date, end: date | None, *,
               frequency: int = 1, period: int = 1, route_kind: str = "oral", text: str | None = None,
               rid: str | None = None) -> Resource | None:
    res = statement(ctx.rng, ctx.site.site, ctx.patient_id, drug, dose_mg, start, end, SLE_REASON,
                    frequency=frequency, period=period, route_kind=route_kind, text=text, rid=rid)
    if res is not None and drug != "valaciclovir":  # prophylaxis: given for the treatment, not for the lupus
        res["reasonReference"] = [sle_condition_reference(ctx)]
    return res


def sle_condition_reference(ctx: SubjectContext) -> dict[str, Any]:
    """A logical reference (identifier) to the subject's lupus Condition (clinical_history gives it that
    identifier): the medical-history record a lupus medication is for (CMMHNO)."""
    return {"type": "Condition", "display": "Systemic lupus erythematosus",
            "identifier": {"system": f"https://hospital.example.org/site-{ctx.site.site}/condition",
                           "value": f"SLE-{ctx.patient_id[:8]}"}}


def emit_glucocorticoids(ctx: SubjectContext, consent: date) -> None:
    rng, c = ctx.rng, ctx.course
    alt = next((ir for ir in ctx.irregular.values() if ir.kind == ALTERNATE_DAY_GLUCOCORTICOID), None)
    start_dose = rng.choice(GC_START_DOSES)
    target = rng.choice(RESPONDER_TARGETS if c.responder else NON_RESPONDER_TARGETS)
    doses = taper_doses(start_dose, target, include=10.0 if alt else None)
    drug = ctx.site.glucocorticoid
    factor = METHYLPREDNISOLONE_PER_PREDNISONE if drug == "methylprednisolone" else 1.0
    start = consent - timedelta(days=rng.randint(120, 900))
    end = ctx.day1 + timedelta(days=rng.randint(14, 28) - 1)
    step = (14, 28) if c.responder else (28, 42)
    for i, dose in enumerate(doses):
        if dose <= 0.0:
            break
        last = i == len(doses) - 1
        stop = None if last else end
        if alt is not None and dose == 10.0:
            res = _statement(ctx, drug, 20.0, start, stop, period=2, rid=alt.resource_id)
        else:
            res = _statement(ctx, drug, dose * factor, start, stop)
        if res is not None:
            ctx.emit(res)
        start = end + timedelta(days=1)
        end = start + timedelta(days=rng.randint(*step) - 1)


def emit_topical_steroid(ctx: SubjectContext) -> None:
    ir = next((ir for ir in ctx.irregular.values() if ir.kind == TOPICAL_GLUCOCORTICOID), None)
    if ir is None or ir.visit not in ctx.visits:
        return
    start = ctx.visits[ir.visit].date() - timedelta(days=ctx.rng.randint(7, 14))
    res = _statement(ctx, "hydrocortisone", 20.0, start, start + timedelta(days=27), frequency=2,
                     route_kind="topical", rid=ir.resource_id,
                     text="Hydrocortisone 1% cream: apply about 2 g (20 mg hydrocortisone) thinly to the "
                          "affected skin twice daily")
    if res is not None:
        ctx.emit(res)


def emit_standing_therapy(ctx: SubjectContext, consent: date, enrolled: bool) -> None:
    """Hydroxychloroquine and mycophenolate (stopped before lymphodepletion), antiviral prophylaxis."""
    rng, c = ctx.rng, ctx.course
    stop_hcq = ctx.day1 + timedelta(days=rng.randint(-12, -7)) if enrolled else None
    hcq_bid = rng.random() < 0.6
    res = _statement(ctx, "hydroxychloroquine", 200.0 if hcq_bid else 400.0,
                     consent - timedelta(days=rng.randint(365, 3000)), stop_hcq, frequency=2 if hcq_bid else 1)
    if res:
        ctx.emit(res)
    if c.ln or rng.random() < 0.5:
        stop = ctx.day1 + timedelta(days=rng.randint(-14, -8)) if enrolled else None
        res = _statement(ctx, "mycophenolate", rng.choice((1000.0, 1500.0)),
                         consent - timedelta(days=rng.randint(180, 2000)), stop, frequency=2)
        if res:
            ctx.emit(res)
    if enrolled:
        res = _statement(ctx, "valaciclovir", 500.0, ctx.day1 - timedelta(days=5),
                         ctx.day1 + timedelta(days=364), frequency=2)
        if res:
            ctx.emit(res)


def _administration(ctx: SubjectContext, drug: str, dose_mg: float, start: datetime, minutes: int | None,
                    text: str, reason: dict[str, Any] | None = None) -> Resource | None:
    return administration(ctx.rng, ctx.site.site, ctx.patient_id, drug, dose_mg, start, minutes, text, reason)


def emit_lymphodepletion(ctx: SubjectContext) -> None:
    c, rng = ctx.course, ctx.rng
    bsa = round(math.sqrt(c.height * c.weight / 3600.0), 2)
    for day in LD_FLU_DAYS:
        mg = round(FLUDARABINE_MG_M2 * bsa)
        res = _administration(ctx, "fludarabine", mg, ctx.on_day(day, rng.randint(540, 660)), 30,
                              f"Fludarabine {FLUDARABINE_MG_M2:g} mg/m2 x BSA {bsa} m2 = {mg} mg IV over 30 min")
        if res:
            ctx.emit(res)
    mg = round(CYCLOPHOSPHAMIDE_MG_M2 * bsa / 10) * 10
    res = _administration(ctx, "cyclophosphamide", mg, ctx.on_day(LD_CY_DAY, rng.randint(720, 840)), 60,
                          f"Cyclophosphamide {CYCLOPHOSPHAMIDE_MG_M2:g} mg/m2 x BSA {bsa} m2 = {mg} mg IV")
    if res:
        ctx.emit(res)


def emit_toxicity_treatment(ctx: SubjectContext, events: list[AEvent]) -> None:
    rng, c = ctx.rng, ctx.course
    for ev in events:
        if ev.term == "crs" and (ev.grade or 0) >= 2:
            mg = min(800, round(TOCILIZUMAB_MG_KG * c.weight / 10) * 10)
            reason = {"text": f"Cytokine release syndrome grade {ev.grade}"}
            res = _administration(ctx, "tocilizumab", mg, ev.onset + timedelta(minutes=rng.randint(120, 720)),
                                  60, f"Tocilizumab {TOCILIZUMAB_MG_KG:g} mg/kg = {mg} mg IV over 1 h", reason)
            if res:
                ctx.emit(res)
                ev.treatments.append(f"MedicationAdministration/{res['id']}")
            if (ev.grade or 0) >= 3 or ev.onset.minute % 2 == 0:  # hypoxia: about half of grade 2, all of 3+
                start = ev.onset + timedelta(minutes=45)
                if start < LAST_INSTANT:
                    o2 = oxygen_therapy(ctx, start, f"Cytokine release syndrome grade {ev.grade} with hypoxia")
                    ctx.emit(o2)
                    ev.treatments.append(f"Procedure/{o2['id']}")
        elif ev.term == "icans" and (ev.grade or 0) >= 2:
            first = ev.onset + timedelta(minutes=rng.randint(60, 180))
            reason = {"text": f"ICANS grade {ev.grade}"}
            for k in range(12):
                res = _administration(ctx, "dexamethasone", 10.0, first + timedelta(hours=6 * k), None,
                                      "Dexamethasone 10 mg IV every 6 hours", reason)
                if res:
                    ctx.emit(res)
                    ev.treatments.append(f"MedicationAdministration/{res['id']}")
