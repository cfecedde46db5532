"""Medication records as the EHR holds them: MedicationStatements for standing therapy (glucocorticoid
taper steps, hydroxychloroquine, mycophenolate, antiviral prophylaxis) and MedicationAdministrations for
what the ward gave (lymphodepletion, tocilizumab, dexamethasone)."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from typing import Any

from fhir_adapter.terminology.codes import ROUTE_SNOMED, RXNORM, SNOMED

from .adverse_events import AEvent
from .context import Resource, SubjectContext
from .ids import new_id
from .irregularities import ALTERNATE_DAY_GLUCOCORTICOID, TOPICAL_GLUCOCORTICOID
from .lab_catalog import quantity
from .schedule import LD_CY_DAY, LD_FLU_DAYS
from .timeline import DATA_CUT, LAST_INSTANT, at, fmt_local, fmt_utc

#: drug key -> (RxNorm ingredient RxCUI, ingredient name, product text as the EHR prints it)
DRUGS: dict[str, tuple[str, str, str]] = {
    "prednisone": ("8640", "prednisone", "Prednisone 5 mg oral tablet"),
    "methylprednisolone": ("6902", "methylprednisolone", "Methylprednisolone 4 mg oral tablet"),
    "hydrocortisone": ("5492", "hydrocortisone", "Hydrocortisone 1% cream"),
    "hydroxychloroquine": ("5521", "hydroxychloroquine", "Hydroxychloroquine sulfate 200 mg oral tablet"),
    "mycophenolate": ("68149", "mycophenolate mofetil", "Mycophenolate mofetil 500 mg oral tablet"),
    "valaciclovir": ("73645", "valacyclovir", "Valaciclovir 500 mg oral tablet"),
    "fludarabine": ("24698", "fludarabine", "Fludarabine phosphate 50 mg powder for injection"),
    "cyclophosphamide": ("3002", "cyclophosphamide", "Cyclophosphamide 1 g powder for injection"),
    "tocilizumab": ("612865", "tocilizumab", "Tocilizumab 20 mg/mL concentrate for infusion"),
    "dexamethasone": ("3264", "dexamethasone", "Dexamethasone 4 mg/mL injection"),
}
ROUTES: dict[str, tuple[str, str]] = {
    "oral": ("26643006", "Oral route"), "iv": ("47625008", "Intravenous route"),
    "topical": ("6064005", "Topical route"),
}
ROUTE_WORDS = {"oral": "orally", "iv": "intravenously", "topical": "topically"}
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


def medication(drug: str) -> dict[str, Any]:
    code, name, text = DRUGS[drug]
    return {"coding": [{"system": RXNORM, "code": code, "display": name}], "text": text}


def route(kind: str) -> dict[str, Any]:
    code, display = ROUTES[kind]
    return {"coding": [{"system": ROUTE_SNOMED, "code": code, "display": display}]}


def _statement(ctx: SubjectContext, drug: str, dose_mg: float, start: date, end: date | None, *,
               frequency: int = 1, period: int = 1, route_kind: str = "oral", text: str | None = None,
               rid: str | None = None) -> Resource | None:
    if start >= DATA_CUT:
        return None
    if end is not None and end >= DATA_CUT:
        end = None
    dose: float | int = int(dose_mg) if float(dose_mg).is_integer() else dose_mg
    if text is None:
        how = "once daily" if (frequency, period) == (1, 1) else (
            "every other day" if (frequency, period) == (1, 2) else f"{frequency} times daily")
        text = f"{dose} mg {ROUTE_WORDS[route_kind]} {how}"
    eff: dict[str, str] = {"start": start.isoformat()}
    if end is not None:
        eff["end"] = end.isoformat()
    updated = at(min(end or start, DATA_CUT - timedelta(days=1)), ctx.rng.randint(480, 1080))
    mid = rid or new_id(ctx.rng)
    return {
        "resourceType": "MedicationStatement", "id": mid,
        "meta": {"versionId": "1", "lastUpdated": fmt_utc(updated)},
        "identifier": [{"system": f"https://hospital.example.org/site-{ctx.site.site}/medication", "value": mid}],
        "status": "completed" if end is not None else "active",
        "medicationCodeableConcept": medication(drug),
        "subject": ctx.patient_ref(),
        "effectivePeriod": eff,
        "dateAsserted": start.isoformat(),
        "reasonCode": SLE_REASON,
        "dosage": [{
            "sequence": 1, "text": text,
            "timing": {"repeat": {"frequency": frequency, "period": period, "periodUnit": "d"}},
            "route": route(route_kind),
            "doseAndRate": [{"doseQuantity": quantity(dose, "mg")}],
        }],
    }


def taper_doses(start: float, target: float, include: float | None = None) -> list[float]:
    doses = [start]
    while doses[-1] > target:
        d = doses[-1]
        nxt = d - 5.0 if d > 10.0 else (d - 2.5)
        doses.append(max(nxt, target))
    if include is not None and include not in doses and doses[0] > include > doses[-1]:
        doses.append(include)
        doses.sort(reverse=True)
    return doses


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
    if start >= LAST_INSTANT or start.date() >= DATA_CUT:
        return None
    mid = new_id(ctx.rng)
    res: Resource = {
        "resourceType": "MedicationAdministration", "id": mid,
        "identifier": [{"system": f"https://hospital.example.org/site-{ctx.site.site}/medication", "value": mid}],
        "meta": {"versionId": "1", "lastUpdated": fmt_utc(start + timedelta(minutes=(minutes or 0) + 30))},
        "status": "completed", "medicationCodeableConcept": medication(drug), "subject": ctx.patient_ref(),
    }
    if minutes:
        res["effectivePeriod"] = {"start": fmt_local(start), "end": fmt_local(start + timedelta(minutes=minutes))}
    else:
        res["effectiveDateTime"] = fmt_local(start)
    if reason is not None:
        res["reasonCode"] = [reason]
    dose: float | int = int(dose_mg) if float(dose_mg).is_integer() else dose_mg
    res["dosage"] = {"text": text, "route": route("iv"), "dose": quantity(dose, "mg")}
    return res


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
        elif ev.term == "icans" and (ev.grade or 0) >= 2:
            first = ev.onset + timedelta(minutes=rng.randint(60, 180))
            reason = {"text": f"ICANS grade {ev.grade}"}
            for k in range(12):
                res = _administration(ctx, "dexamethasone", 10.0, first + timedelta(hours=6 * k), None,
                                      "Dexamethasone 10 mg IV every 6 hours", reason)
                if res:
                    ctx.emit(res)
