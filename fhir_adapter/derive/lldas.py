"""Lupus Low Disease Activity State (LLDAS) per visit and the LLDAS response rate per visit.

Definition: Franklyn K, Lau CS, Navarra SV, et al. *Definition and initial validation of a Lupus Low Disease
Activity State (LLDAS).* Ann Rheum Dis 2016;75:1615–1621 (five criteria, Table 1). LCAR-AIO uses the four
protocol criteria (docs/clinical-rules.md#lldas); Franklyn's fifth is the setting ``maintenance_criterion``
(off by default). "No new features" follows the Oon et al. operationalisation (BLISS post hoc): no SLEDAI-2K
descriptor scoring now that did not score at the previous assessment (docs/clinical-rules.md#lldas-new-features).
Thresholds, major organ groups and the fifth criterion's drug lists are data in ``mappings/<study>/lldas.yaml``.

The criteria and their stable ids (``lldas_failed`` lists the ids that failed, in this order):

* ``sledai_le_4`` — C1a: SLEDAI-2K total ≤ ``sledai_max`` (4);
* ``no_major_organ_activity`` — C1b: no descriptor scoring in a ``major_organ_groups`` group (the ``group`` of
  each descriptor in ``sledai2k.yaml``: cns, vascular, renal, cardiorespiratory, constitutional);
* ``no_new_features`` — C2: every descriptor scoring now also scored at the previous assessment: the latest
  earlier-dated SLEDAI-2K assessment, a visit with a total (which may be the baseline) or a clinician
  assessment placed in no visit (:func:`fhir_adapter.derive.sledai2k.off_visit_assessments`), visit or not;
* ``pga_le_1`` — C3: PGA ≤ ``pga_max`` (1.0, inclusive; the PGA as stored, one decimal);
* ``pred_eq_le_7_5`` — C4: prednisolone-equivalent dose on the visit date ≤ ``pred_eq_max_mg`` (7.5 mg/day);
* ``maintenance_therapy`` — Franklyn's C5, only with ``maintenance_criterion: true``: no active record of an
  ``excluded_drugs`` drug (investigational or induction agents) and no drug above its ``max_daily_mg``.

The value at a dated visit; the first case that applies defines it (None comes with its ``reason``):

1. Day 1 unknown → None;
2. visit dated on or before Day 1 (the baseline period) → None;
3. no SLEDAI-2K total at the visit → None;
4. no PGA at the visit → None;
5. no previous SLEDAI-2K assessment, in a visit or not (nothing to compare new features with) → None;
6. prednisolone-equivalent dose not evaluable on the visit date → None;
7. fifth criterion on and not evaluable (a drug with a ceiling whose daily dose is unknown) → None;
8. True when every criterion is met, else False with the failed ids.

``sources`` of an evaluated visit (the write-back's ``derivedFrom``): the results behind each criterion — the
visit's SLEDAI-2K descriptors, those of the previous assessment it was compared with (``no_new_features``), the
PGA, the medication records of the dose and, with the fifth criterion, the active records it looked at.

Response rate at a visit (docs/clinical-rules.md#lldas-rate): n = subjects with a True/False value at that visit,
responders = subjects with True, rate = responders / n (None when n = 0).

Examples: SLEDAI-2K 4 (arthritis) with arthritis also at the previous visit, PGA 1.0, prednisolone 7.5 mg →
LLDAS; the same with proteinuria instead of arthritis → fails ``no_major_organ_activity`` (and
``no_new_features`` if proteinuria is new); SLEDAI-2K 2 (rash, new), PGA 1.1, 10 mg → fails
``no_new_features``, ``pga_le_1``, ``pred_eq_le_7_5``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fhir_adapter.crf.models import ConMed
from fhir_adapter.derive.glucocorticoids import PredEqVisit, active_on
from fhir_adapter.derive.pga import PgaVisit
from fhir_adapter.derive.sledai2k import Sledai2kPrior, Sledai2kVisit
from fhir_adapter.study.timeline import study_day

#: The criterion ids, in the order they are reported.
CRITERIA = (
    "sledai_le_4", "no_major_organ_activity", "no_new_features", "pga_le_1", "pred_eq_le_7_5",
    "maintenance_therapy",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaintenanceSettings(_Strict):
    """Franklyn's fifth criterion as data: drugs that are never maintenance, and maintenance ceilings."""

    excluded_drugs: tuple[str, ...] = Field(default=(), description="ingredient names (lower case)")
    max_daily_mg: dict[str, float] = Field(default_factory=dict, description="ingredient -> highest mg/day")


class LldasSettings(_Strict):
    sledai_max: int = Field(4, ge=0, description="criterion 1: SLEDAI-2K total at most this (inclusive)")
    major_organ_groups: tuple[str, ...] = Field(
        ("cns", "vascular", "renal", "cardiorespiratory", "constitutional"),
        description="criterion 1: no descriptor scoring in these groups (`group` in sledai2k.yaml; "
        "docs/clinical-rules.md#lldas-major-organs)")
    pga_max: float = Field(1.0, ge=0, le=3, description="criterion 3: PGA (0-3, as stored) at most this (inclusive)")
    pred_eq_max_mg: float = Field(7.5, ge=0, description="criterion 4: prednisolone-equivalent mg/day on the visit "
                                  "date at most this (inclusive)")
    maintenance_criterion: bool = Field(
        False, description="apply Franklyn's fifth criterion, maintenance therapy (`maintenance`; "
        "docs/clinical-rules.md#lldas-maintenance)")
    maintenance: MaintenanceSettings = Field(
        MaintenanceSettings(), description="the fifth criterion's drug lists, read only with maintenance_criterion: "
        "true")


class LldasVisit(BaseModel):
    visit: str
    date: dt.date | None
    study_day: int | None = None
    lldas: bool | None
    failed: list[str] = Field(default_factory=list, description="ids of the criteria not met")
    criteria: dict[str, bool] = Field(default_factory=dict, description="every evaluated criterion")
    reason: str | None = Field(None, description="why the visit is not evaluable")
    previous_visit: str | None = Field(None, description="visit of the previous assessment (None: in no visit)")
    previous_date: dt.date | None = Field(None, description="date of the previous SLEDAI-2K assessment")
    sources: list[str] = Field(default_factory=list, description="sources of the SLEDAI-2K assessment, of the "
                               "previous one it is compared with, of the PGA, the dose and the fifth criterion")


class LldasRate(BaseModel):
    visit: str
    n: int
    responders: int
    rate: float | None


def _scored(v: Sledai2kVisit) -> set[str]:
    return {d.code for d in v.descriptors if d.score > 0}


def _maintenance(
    cms: Sequence[ConMed], day: dt.date, m: MaintenanceSettings,
) -> tuple[bool | None, str | None, set[str]]:
    """(criterion met, why not evaluable, the records it looked at: active excluded or ceiling drugs)."""
    ok = True
    looked_at: set[str] = set()
    for cm in cms:
        name = cm.drug.strip().lower()
        if not active_on(cm, day) or (cm.status or "") in ("entered-in-error", "not-taken", "cancelled"):
            continue
        if name in m.excluded_drugs:
            ok = False
            looked_at.add(cm.source.reference)
        elif name in m.max_daily_mg:
            if cm.daily_dose_mg is None:
                ref = cm.source.reference
                return None, f"daily dose of {name} ({ref}) unknown for the maintenance criterion", set()
            ok = ok and cm.daily_dose_mg <= m.max_daily_mg[name]
            looked_at.add(cm.source.reference)
    return ok, None, looked_at


class _Previous(BaseModel):
    """The assessment new features are compared with: a visit's or one placed in no visit."""

    visit: str | None
    date: dt.date
    scored: frozenset[str]
    #: the results of that assessment (a result of the visit's LLDAS: "no new features" is judged against them)
    sources: frozenset[str] = frozenset()


def _previous(assessed: Sequence[_Previous], day: dt.date) -> _Previous | None:
    """The latest assessment dated before ``day``; on one date a visit's assessment wins."""
    return max((a for a in assessed if a.date < day), key=lambda a: (a.date, a.visit is not None), default=None)


def _not_evaluable(
    v: Sledai2kVisit, day1: dt.date | None, reason: str, previous: _Previous | None = None,
) -> LldasVisit:
    sd = study_day(v.date, day1) if v.date and day1 else None
    return LldasVisit(visit=v.visit, date=v.date, study_day=sd, lldas=None, reason=reason,
                      previous_visit=previous.visit if previous else None,
                      previous_date=previous.date if previous else None)


def derive_lldas(
    sledai: Sequence[Sledai2kVisit],
    pga: Sequence[PgaVisit],
    pred_eq: Sequence[PredEqVisit],
    day1: dt.date | None,
    groups: Mapping[str, str],
    settings: LldasSettings,
    cm: Sequence[ConMed] = (),
    off_visit: Sequence[Sledai2kPrior] = (),
) -> list[LldasVisit]:
    """LLDAS at every dated SLEDAI-2K visit (cases 1–8 of the module docstring).

    ``groups`` maps each SLEDAI-2K descriptor code to its organ group (``Sledai2kSettings.descriptors``);
    ``cm`` is needed only for the fifth criterion; ``off_visit`` are the SLEDAI-2K assessments placed in no
    visit, which can be the previous assessment too.
    """
    pga_by = {p.visit: p for p in pga}
    pred_by = {p.visit: p for p in pred_eq}
    assessed = [_Previous(visit=v.visit, date=v.date, scored=frozenset(_scored(v)),
                          sources=frozenset(s for d in v.descriptors for s in d.sources))
                for v in sledai if v.total is not None and v.date is not None]
    assessed += [_Previous(visit=None, date=a.date, scored=frozenset(d.code for d in a.descriptors if d.score > 0),
                           sources=frozenset(a.sources))
                 for a in off_visit]
    out: list[LldasVisit] = []
    for v in sledai:
        if v.date is None:
            continue
        prev = _previous(assessed, v.date)
        p, dose = pga_by.get(v.visit), pred_by.get(v.visit)
        if day1 is None:
            out.append(_not_evaluable(v, day1, "Day 1 unknown"))
        elif v.date <= day1:
            out.append(_not_evaluable(v, day1, "baseline period (on or before Day 1)"))
        elif v.total is None:
            out.append(_not_evaluable(v, day1, "SLEDAI-2K not assessed at this visit"))
        elif p is None or p.pga is None:
            out.append(_not_evaluable(v, day1, "PGA missing at this visit"))
        elif prev is None:
            out.append(_not_evaluable(v, day1, "no previous SLEDAI-2K assessment to compare features with"))
        elif dose is None or dose.mg_per_day is None:
            why = dose.reason if dose is not None and dose.reason else "no visit date for the dose"
            why = f"prednisolone-equivalent dose not evaluable: {why}"
            out.append(_not_evaluable(v, day1, why, prev))
        else:
            maint: bool | None = None
            maint_sources: set[str] = set()
            if settings.maintenance_criterion:
                maint, why_m, maint_sources = _maintenance(cm, v.date, settings.maintenance)
                if maint is None:
                    why_m = why_m or "maintenance criterion not evaluable"
                    out.append(_not_evaluable(v, day1, why_m, prev))
                    continue
            now = _scored(v)
            criteria = {
                "sledai_le_4": v.total <= settings.sledai_max,
                "no_major_organ_activity": not any(groups.get(c) in settings.major_organ_groups for c in now),
                "no_new_features": now <= prev.scored,
                "pga_le_1": p.pga <= settings.pga_max,
                "pred_eq_le_7_5": dose.mg_per_day <= settings.pred_eq_max_mg,
            }
            if maint is not None:
                criteria["maintenance_therapy"] = maint
            failed = [c for c in CRITERIA if c in criteria and not criteria[c]]
            sources = {s for d in v.descriptors for s in d.sources} | prev.sources | set(dose.sources) | maint_sources
            if p.source:
                sources.add(p.source)
            out.append(LldasVisit(
                visit=v.visit, date=v.date, study_day=study_day(v.date, day1), lldas=not failed,
                failed=failed, criteria=criteria, previous_visit=prev.visit, previous_date=prev.date,
                sources=sorted(sources),
            ))
    return out


def lldas_rate(results: Iterable[tuple[str, bool | None]], visits: Sequence[str]) -> list[LldasRate]:
    """Response rate per visit over (visit, lldas) pairs of all subjects, in the order of ``visits``."""
    n: dict[str, int] = dict.fromkeys(visits, 0)
    yes: dict[str, int] = dict.fromkeys(visits, 0)
    for visit, value in results:
        if visit in n and value is not None:
            n[visit] += 1
            yes[visit] += int(value)
    return [LldasRate(visit=v, n=n[v], responders=yes[v], rate=yes[v] / n[v] if n[v] else None)
            for v in visits]
