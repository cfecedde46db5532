"""SLEDAI-2K descriptors and the physician global assessment as clinicians record them.

At screening the investigator fills the whole 24-item form (lab items as read from the screening labs);
at later visits the 15 clinical items are recorded true/false, fever only when febrile, and occasionally a
lab item to override what the labs would suggest (e.g. leukopenia: false, drug-induced).
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from typing import Any

from fhir_adapter.terminology.codes import CS_CLINICAL_INPUT, CS_SLEDAI2K_DESCRIPTOR, SLEDAI2K_DESCRIPTOR_CODES, UCUM

from ..lab_catalog import category, to_json
from ..observations import head_json
from ..timeline import DATA_CUT, at, date_to_study_day
from .context import SubjectContext
from .course import DiseaseCourse
from .irregularities import OVERRIDE_FEVER, OVERRIDE_LEUKOPENIA
from .schedule import GROUP_VISITS, VISIT_BY_ID

LAB_DESCRIPTORS = frozenset({
    "urinary-casts", "hematuria", "proteinuria", "pyuria", "low-complement", "increased-dna-binding",
    "thrombocytopenia", "leukopenia",
})
CLINICAL_DESCRIPTORS: tuple[str, ...] = tuple(
    d for d in SLEDAI2K_DESCRIPTOR_CODES if d not in LAB_DESCRIPTORS and d != "fever"
)
DISPLAY: dict[str, str] = {d: d.replace("-", " ").capitalize() for d in SLEDAI2K_DESCRIPTOR_CODES} | {
    "cva": "Cerebrovascular accident", "increased-dna-binding": "Increased DNA binding",
}
CODES: dict[str, dict[str, Any]] = {
    d: {"coding": [{"system": CS_SLEDAI2K_DESCRIPTOR, "code": d, "display": DISPLAY[d]}],
        "text": f"SLEDAI-2K: {DISPLAY[d]}"}
    for d in SLEDAI2K_DESCRIPTOR_CODES
}
PGA_CODE = {"coding": [{"system": CS_CLINICAL_INPUT, "code": "sle-pga",
                        "display": "Physician global assessment of SLE disease activity"}],
            "text": "Physician global assessment (PGA)"}
#: pre-encoded '"category":..,"code":..' per (category, descriptor)
HEADS: dict[tuple[str, str], str] = {
    (cat, d): head_json(category(cat), CODES[d]) for cat in ("exam", "survey") for d in SLEDAI2K_DESCRIPTOR_CODES
}
PGA_HEAD = head_json(category("survey"), PGA_CODE)
OVERRIDE_NOTES: dict[str, str] = {
    OVERRIDE_LEUKOPENIA: "Leukopenia attributed to lymphodepleting chemotherapy (drug-induced); not SLE.",
    OVERRIDE_FEVER: "Temperature elevation attributed to upper respiratory tract infection; not SLE.",
}
#: clinician assessment relative to the lab draw: mostly the same day, else 1-2 days later
_DAY_OFFSETS = (0, 0, 0, 0, 0, 0, 0, 1, 1, 2)


def _screening_form(c: DiseaseCourse, sd: int) -> dict[str, bool]:
    wbc = c.neutrophils.base + c.lymphocytes.base + c.other_wbc.base
    return {
        "urinary-casts": c.active("urinary-casts", sd), "hematuria": c.active("hematuria", sd),
        "proteinuria": c.ln, "pyuria": c.active("pyuria", sd), "low-complement": c.low_complement,
        "increased-dna-binding": c.high_dsdna, "thrombocytopenia": c.platelets.base < 100,
        "leukopenia": wbc < 3.0,
    }


def pga_score(c: DiseaseCourse, sd: int, noise: float) -> float:
    base, floor, tau = c.pga
    t = sd - 1
    value = base if t <= 0 else floor + (base - floor) * math.exp(-t / tau)
    if c.flare and c.flare[0] <= sd < c.flare[1]:
        value += 1.0
    return round(min(3.0, max(0.0, value + noise)), 1)


def _assessment_time(ctx: SubjectContext, vid: str, lab_draw: datetime) -> datetime:
    v = VISIT_BY_ID[vid]
    offset = ctx.rng.choice(_DAY_OFFSETS)
    d: date = lab_draw.date() + timedelta(days=offset)
    sd = date_to_study_day(ctx.day1, d)
    if not (v.lo <= sd <= v.hi) or sd == 0 or d >= DATA_CUT or (vid in ("SCR", "BL") and sd >= -5):
        d = lab_draw.date()
    return at(d, ctx.rng.randint(540, 990))


def emit_sledai(ctx: SubjectContext, febrile_visits: frozenset[str]) -> None:
    rng, c, obs = ctx.rng, ctx.course, ctx.obs
    cat = ctx.site.descriptor_category
    for vid in GROUP_VISITS["sledai"]:
        lab_draw = ctx.visits.get(vid)
        if lab_draw is None:
            continue
        when = _assessment_time(ctx, vid, lab_draw)
        saved = when + timedelta(minutes=rng.randint(5, 240))
        sd = ctx.sd(when.date())
        values: dict[str, bool] = {d: c.active(d, sd) for d in CLINICAL_DESCRIPTORS}
        notes: dict[str, tuple[str, str]] = {}
        if vid == "SCR":
            values.update(_screening_form(c, sd))
            values["fever"] = vid in febrile_visits
        elif vid in febrile_visits:
            values["fever"] = True
        for kind, descriptor in ((OVERRIDE_LEUKOPENIA, "leukopenia"), (OVERRIDE_FEVER, "fever")):
            ir = ctx.irregular.get((vid, descriptor))
            if ir is not None and ir.kind == kind:
                values[descriptor] = False
                notes[descriptor] = (ir.resource_id, OVERRIDE_NOTES[kind])
        for descriptor in SLEDAI2K_DESCRIPTOR_CODES:
            if descriptor not in values:
                continue
            note = notes.get(descriptor)
            body = ',"valueBoolean":true' if values[descriptor] else ',"valueBoolean":false'
            if note:
                body += f',"note":[{{"text":{to_json(note[1])}}}]'
            obs.clinical(HEADS[(cat, descriptor)], when, body, saved, rid=note[0] if note else None)
        score = pga_score(c, sd, 0.3 * (rng.random() - 0.5))
        if ctx.site.pga_unit == "mm":
            value = to_json({"value": round(score / 0.03), "unit": "mm", "system": UCUM, "code": "mm"})
        else:
            value = to_json({"value": score, "unit": "{score}", "system": UCUM, "code": "{score}"})
        obs.clinical(PGA_HEAD, when, f',"valueQuantity":{value}', saved)
