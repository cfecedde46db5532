"""Real-world irregularities the feed contains on purpose, and where the plan puts them.

Each one is a single resource (or pair) in a specific subject; site-wide conventions (units, PGA scale,
AE coding style) live in ``sites.py`` instead. Nothing in the feed marks these resources: a real export
does not, so the plan's list is the only record of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from random import Random
from typing import TYPE_CHECKING

from ..ids import new_id
from ..timeline import DATA_CUT
from .schedule import VISIT_BY_ID

if TYPE_CHECKING:
    from .plan import SubjectPlan

AMENDED = "amended"
ENTERED_IN_ERROR = "entered-in-error"
DUPLICATE = "duplicate"
NO_EFFECTIVE = "no-effective-date"
PRELIMINARY = "preliminary"
UPCR_BELOW_LLOQ = "upcr-below-lloq"
DSDNA_VALUE_STRING = "dsdna-value-string"
OVERRIDE_LEUKOPENIA = "clinician-override-leukopenia"
OVERRIDE_FEVER = "clinician-override-fever"
TOPICAL_GLUCOCORTICOID = "topical-glucocorticoid"
ALTERNATE_DAY_GLUCOCORTICOID = "alternate-day-glucocorticoid"
AE_ONGOING = "ae-ongoing"
AE_MISSING_GRADE = "ae-missing-grade"


@dataclass(frozen=True, slots=True)
class Irregularity:
    kind: str
    resource_type: str
    resource_id: str
    patient_id: str
    subject_id: str
    visit: str | None      # protocol visit the resource belongs to (None for medications/AEs)
    item: str              # lab item, SLEDAI descriptor, drug or AE term it concerns
    related_id: str | None = None   # duplicate: the original; entered-in-error: the corrected redraw
    detail: str = ""


@dataclass(frozen=True, slots=True)
class _Placement:
    kind: str
    resource_type: str
    preferred: int                       # preferred subject index (enrolment order)
    visit: str | None
    item: str
    sites: tuple[int, ...] = ()          # allowed sites (empty: any)
    arms: tuple[str, ...] = ()           # allowed arms (empty: any)
    needs_days: int = 0                  # follow-up days needed after Day 1 (for non-visit kinds)
    related: bool = False                # draw a related_id too
    no_ln: bool = False                  # only in a subject without lupus nephritis
    detail: str = ""


PLACEMENTS: tuple[_Placement, ...] = (
    _Placement(AMENDED, "Observation", 1, "W12", "c3", detail="result corrected by the lab (version 2)"),
    _Placement(ENTERED_IN_ERROR, "Observation", 4, "W8", "platelets", related=True,
               detail="spuriously low platelet count (clumped sample), redrawn the same day"),
    _Placement(DUPLICATE, "Observation", 7, "W4", "dsdna", related=True,
               detail="same code, effectiveDateTime and value as the original"),
    _Placement(NO_EFFECTIVE, "Observation", 10, "W24", "hemoglobin", detail="no effective[x]"),
    _Placement(PRELIMINARY, "Observation", 13, "W3", "ferritin", detail="status preliminary"),
    _Placement(UPCR_BELOW_LLOQ, "Observation", 16, "W24", "upcr", sites=(101, 103), no_ln=True,
               detail="valueQuantity.comparator '<' at the assay LLOQ 0.05 mg/mg"),
    _Placement(DSDNA_VALUE_STRING, "Observation", 5, "W8", "dsdna", sites=(102,), detail='valueString "45"'),
    _Placement(OVERRIDE_LEUKOPENIA, "Observation", 8, "W4", "leukopenia",
               detail="clinician records leukopenia false (drug-induced) while WBC < 3"),
    _Placement(OVERRIDE_FEVER, "Observation", 11, "W8", "fever",
               detail="clinician records fever false (infection) while temperature > 38.0 Cel"),
    _Placement(TOPICAL_GLUCOCORTICOID, "MedicationStatement", 2, "W24", "hydrocortisone", sites=(101,),
               detail="hydrocortisone 1% cream, route topical: not a systemic glucocorticoid"),
    _Placement(ALTERNATE_DAY_GLUCOCORTICOID, "MedicationStatement", 6, None, "prednisone", sites=(101, 103),
               needs_days=150, detail="prednisone 20 mg every other day (frequency 1, period 2 d)"),
    _Placement(AE_ONGOING, "AdverseEvent", 3, None, "hypogammaglobulinaemia", needs_days=120,
               detail="no resolution: outcome ongoing, no resolve-date"),
    _Placement(AE_MISSING_GRADE, "AdverseEvent", 15, None, "diarrhoea", arms=("EXP",), needs_days=45,
               detail="grade missing (no ae-grade, no severity) in the DLT window: DLT not evaluable"),
)


def _feasible(p: _Placement, s: SubjectPlan, scenarios: dict[int, tuple[str, ...]]) -> bool:
    if (p.sites and s.site not in p.sites) or (p.arms and s.arm not in p.arms) or (p.no_ln and s.ln_at_baseline):
        return False
    if p.kind == AE_MISSING_GRADE and any(x.startswith("dlt:") for x in scenarios.get(s.index, ())):
        return False
    last_day = VISIT_BY_ID[p.visit].hi + 3 if p.visit else p.needs_days
    return s.day1 + timedelta(days=last_day) < DATA_CUT


def place_irregularities(rng: Random, subjects: list[SubjectPlan],
                         scenarios: dict[int, tuple[str, ...]]) -> list[Irregularity]:
    """Put each irregularity in the preferred subject, else the next feasible one (then earlier ones)."""
    n = len(subjects)
    used: set[tuple[int, str | None, str]] = set()
    out: list[Irregularity] = []
    for p in PLACEMENTS:
        start = min(p.preferred, n - 1)
        order = list(range(start, n)) + list(range(start - 1, -1, -1))
        for i in order:
            s = subjects[i]
            key = (i, p.visit, p.item)
            if key in used or not _feasible(p, s, scenarios):
                continue
            used.add(key)
            out.append(Irregularity(
                kind=p.kind, resource_type=p.resource_type, resource_id=new_id(rng), patient_id=s.patient_id,
                subject_id=s.subject_id, visit=p.visit, item=p.item,
                related_id=new_id(rng) if p.related else None, detail=p.detail,
            ))
            break
    return out
