"""The LCAR-AIO schedule of activities as the sites follow it (protocol visits and what is drawn at each).

Mirrors ``mappings/lcar-aio/schedule.yaml`` (the test suite checks they agree); the hospital does not read
our mapping files, so the generator keeps its own copy of the protocol table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Visit:
    id: str
    day: int
    lo: int
    hi: int


VISITS: tuple[Visit, ...] = (
    Visit("SCR", -28, -56, -11),
    Visit("BL", -7, -10, -6),
    Visit("D1", 1, -2, 1),
    Visit("D4", 4, 3, 5),
    Visit("W1", 8, 6, 10),
    Visit("W2", 15, 12, 18),
    Visit("W3", 22, 19, 25),
    Visit("W4", 29, 26, 32),
    Visit("W8", 57, 50, 64),
    Visit("W12", 85, 78, 92),
    Visit("W24", 169, 155, 183),
    Visit("W36", 253, 239, 267),
    Visit("W52", 365, 344, 386),
    Visit("W78", 547, 526, 568),
    Visit("W104", 729, 708, 750),
)
VISIT_BY_ID = {v.id: v for v in VISITS}

#: screening is done early in its window: apheresis and ~4 weeks of manufacturing must follow it
SCREENING_DAYS = (-56, -36)
#: lymphodepletion: fludarabine on these study days, cyclophosphamide on the last
LD_FLU_DAYS = (-5, -4, -3)
LD_CY_DAY = -3

_ALL = tuple(v.id for v in VISITS)
_RENAL_SEROLOGY = ("SCR", "BL", "D1", "W4", "W8", "W12", "W24", "W36", "W52", "W78", "W104")
_IMMUNOLOGY = ("SCR", "BL", "W4", "W12", "W24", "W52", "W104")
_INFLAMMATION = ("D1", "D4", "W1", "W2", "W3", "W4")
_KINETICS = ("D1", "D4", "W1", "W2", "W3", "W4", "W8", "W12", "W24", "W52")
_WEIGHT = ("SCR", "BL", "D1", "W4", "W12", "W24", "W52", "W78", "W104")

#: assessment groups -> the visits at which the protocol asks for them
GROUP_VISITS: dict[str, tuple[str, ...]] = {
    "cbc": _ALL,
    "chemistry": _ALL,
    "vitals": _ALL,
    "weight": _WEIGHT,
    "height": ("SCR",),
    "urinalysis": _RENAL_SEROLOGY,
    "urine_protein": _RENAL_SEROLOGY,
    "complement": _RENAL_SEROLOGY,
    "dsdna": _RENAL_SEROLOGY,
    "immunology": _IMMUNOLOGY,
    "inflammation": _INFLAMMATION,
    "kinetics": _KINETICS,
    "anti_car": ("BL", "W4", "W12", "W24", "W52"),
    "sledai": ("SCR", "BL", "W4", "W8", "W12", "W24", "W36", "W52", "W78", "W104"),
}

#: lab items in each group (keys of lab_catalog.ANALYTES)
GROUP_ITEMS: dict[str, tuple[str, ...]] = {
    "cbc": ("leukocytes", "neutrophils", "lymphocytes", "hemoglobin", "platelets"),
    "chemistry": ("creatinine", "egfr"),
    "urinalysis": ("urine_rbc", "urine_wbc", "urine_casts"),   # urine_casts: the site's casts_item
    "urine_protein": ("upcr", "protein_24h"),
    "complement": ("c3", "c4", "ch50"),
    "dsdna": ("dsdna",),
    "immunology": ("igg", "iga", "igm", "anti_sm", "ana", "cd19"),
    "inflammation": ("crp", "ferritin", "il6"),
}

#: 24-hour urine collections are only ordered at these visits (for lupus-nephritis subjects)
PROTEIN_24H_VISITS = frozenset({"SCR", "W12", "W24", "W52", "W78", "W104"})


def visits_with(group: str) -> frozenset[str]:
    return frozenset(GROUP_VISITS[group])
