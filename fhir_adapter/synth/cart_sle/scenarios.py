"""Safety scenarios the plan puts into specific subjects: DLTs per the decision rules, near-miss look-alikes
that must not count as DLTs, pre-infusion AEs and an SLE fever at baseline."""

from __future__ import annotations

import math
from datetime import timedelta
from random import Random
from typing import TYPE_CHECKING

from ..timeline import DATA_CUT

if TYPE_CHECKING:
    from .plan import SubjectPlan

DLT_CRS_G3_OVER_72H = "dlt:crs-g3-over-72h"
DLT_ICANS_G4 = "dlt:icans-g4"
DLT_RELATED_NONHAEM_G3_OVER_7D = "dlt:related-nonhaem-g3-over-7d"
DLT_NEUTROPENIA_G4_BEYOND_D30 = "dlt:neutropenia-g4-beyond-d30"
LOOK_NEUTROPENIA_G3_RECOVERED = "lookalike:neutropenia-g3-recovered"
LOOK_CRS_G3_WITHIN_48H = "lookalike:crs-g3-within-48h"
LOOK_RELATED_NONHAEM_G3_3D = "lookalike:related-nonhaem-g3-3d"
LOOK_GRADE2_AFTER_D30 = "lookalike:grade2-after-d30"
LOOK_RELATED_NONHAEM_G3_AFTER_D30 = "lookalike:related-nonhaem-g3-after-d30"
LOOK_NEUTROPENIA_G4_RECOVERED = "lookalike:neutropenia-g4-recovered"
LOOK_UNRELATED_NONHAEM_G3_OVER_7D = "lookalike:unrelated-nonhaem-g3-over-7d"
PRE_INFUSION_AE = "pre-infusion-ae"
SLE_FEVER_AT_BASELINE = "sle-fever-at-baseline"

#: DLT types given to expansion subjects, in turn
EXPANSION_DLTS: tuple[str, ...] = (
    DLT_CRS_G3_OVER_72H, DLT_NEUTROPENIA_G4_BEYOND_D30, DLT_RELATED_NONHAEM_G3_OVER_7D, DLT_ICANS_G4,
)
#: expansion DLT rate (kept well below 1/6)
EXPANSION_DLT_RATE = 0.07
#: look-alikes in the DL1 cohort, by position in the cohort
DL1_LOOKALIKES: tuple[str, ...] = (
    LOOK_NEUTROPENIA_G3_RECOVERED, LOOK_CRS_G3_WITHIN_48H, LOOK_RELATED_NONHAEM_G3_3D,
)
EXPANSION_LOOKALIKES: tuple[str, ...] = (
    LOOK_GRADE2_AFTER_D30, LOOK_RELATED_NONHAEM_G3_AFTER_D30, LOOK_NEUTROPENIA_G4_RECOVERED,
    LOOK_UNRELATED_NONHAEM_G3_OVER_7D,
)
#: a subject needs this much follow-up before the data cut to carry a planned DLT window event
MIN_FOLLOW_UP_DAYS = 45


def evaluable(s: SubjectPlan) -> bool:
    return s.day1 + timedelta(days=MIN_FOLLOW_UP_DAYS) <= DATA_CUT


def assign_scenarios(rng: Random, subjects: list[SubjectPlan]) -> dict[int, tuple[str, ...]]:
    out: dict[int, list[str]] = {s.index: [] for s in subjects}
    n = len(subjects)
    dl1 = [s.index for s in subjects if s.arm == "DL1"]
    for pos, i in enumerate(dl1):
        out[i].append(DL1_LOOKALIKES[pos % len(DL1_LOOKALIKES)])
    dl2_first = [s.index for s in subjects if s.arm == "DL2"][:3]
    if dl2_first:
        out[rng.choice(dl2_first)].append(DLT_CRS_G3_OVER_72H)
    dl3 = [s.index for s in subjects if s.arm == "DL3"]
    for i, kind in zip(rng.sample(dl3, min(2, len(dl3))), (DLT_ICANS_G4, DLT_RELATED_NONHAEM_G3_OVER_7D),
                       strict=False):
        out[i].append(kind)
    exp = [s.index for s in subjects if s.arm == "EXP" and evaluable(s)]
    n_dlt = math.ceil(EXPANSION_DLT_RATE * len(exp)) if len(exp) >= 6 else 0
    dlt_exp = sorted(rng.sample(exp, n_dlt))
    for k, i in enumerate(dlt_exp):
        out[i].append(EXPANSION_DLTS[k % len(EXPANSION_DLTS)])
    taken = set(dlt_exp)
    rest = [i for i in exp if i not in taken]
    for i, kind in zip(rng.sample(rest, min(len(rest), len(EXPANSION_LOOKALIKES))), EXPANSION_LOOKALIKES,
                       strict=False):
        out[i].append(kind)
    for i in rng.sample(range(n), min(n, max(2, round(0.08 * n)))):
        out[i].append(PRE_INFUSION_AE)
    quiet = [i for i in range(1, n) if not any(x.startswith("dlt:") for x in out[i])] or [0]
    out[rng.choice(quiet)].append(SLE_FEVER_AT_BASELINE)
    return {i: tuple(v) for i, v in out.items()}
