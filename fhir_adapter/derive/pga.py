"""Physician Global Assessment (PGA) per visit and its change from baseline.

Definition: the SELENA-SLEDAI PGA, a 0–3 visual analogue scale (0 none, 1 mild, 2 moderate, 3 severe disease
activity; Petri M et al., N Engl J Med 2005;353:2550–2558; PISCOS consensus, Piga M et al., Lancet Rheumatol
2022). Stored on the 0–3 scale with one decimal (docs/clinical-rules.md#pga); a 0–100 mm VAS converts as
mm × 0.03 — the mapping (``items.yaml`` item ``pga``, factor ``mm: 0.03``) has already done that conversion.

How the PGA of a visit is set; the first case that applies defines the value:

1. the visit has no PGA result (or is undated) → None;
2. otherwise the visit's selected PGA result, rounded half-up to ``decimals`` (default 1) on its decimal
   value:
   34 mm → 1.02 → 1.0; 35 mm → 1.05 → **1.1** (a plain binary ``round`` would give 1.0 here, because
   35 × 0.03 is 1.0499999999999998 in floating point). The rounded value is the one LLDAS compares with ≤ 1.0.

Baseline and change (:mod:`fhir_adapter.derive.baseline`): baseline = the last PGA dated on or before Day 1;
change = PGA − baseline at visits dated after it, rounded to ``decimals``; 0 at the baseline visit; None
before it.

Examples: PGA 1.5 on day −7, 0.5 on day 29 → baseline day −7, change −1.0 at day 29; a PGA recorded only on
day 29 → no baseline, change None.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.derive.baseline import item_by_visit


class PgaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item: str = Field("pga", description="CRF item holding the PGA on the 0-3 scale")
    decimals: int = Field(1, ge=0, le=3, description="decimals the PGA is stored with (half-up rounding)")


class PgaVisit(BaseModel):
    visit: str
    date: dt.date | None
    study_day: int | None = None
    pga: float | None
    change: float | None = None
    baseline: bool = False
    source: str | None = None


def derive_pga(crf: SubjectCRF, settings: PgaSettings) -> list[PgaVisit]:
    """PGA of every dated visit of ``crf`` with baseline flag and change from baseline."""
    rows = item_by_visit(crf, settings.item, ndigits=settings.decimals, decimals=settings.decimals)
    return [
        PgaVisit(visit=r.visit, date=r.date, study_day=r.study_day, pga=r.value, change=r.change,
                 baseline=r.baseline, source=r.source)
        for r in rows
    ]
