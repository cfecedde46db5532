"""Serology and B-cell endpoints: values with change from baseline, autoantibody seroconversion, B-cell
aplasia and recovery, anti-drug (anti-CAR) antibody status.

Sources: complement and autoantibody normalisation after CD19 CAR-T in SLE (Mackensen A et al., Nat Med
2022;28:2124–2132; Müller F et al., N Engl J Med 2024;390:687–700 — seroconversion of anti-dsDNA, B-cell
depletion and reconstitution); docs/clinical-rules.md#immunology for what makes anti-dsDNA "above normal".
Settings in ``mappings/<study>/immunology.yaml``.

**Values** — C3, C4, anti-dsDNA, anti-Sm, IgG, IgA, IgM (and CD19): the visit's selected value in the item's
CRF unit, with change from baseline (:mod:`fhir_adapter.derive.baseline`; None for censored values).

**Antibody status of one result** (anti-dsDNA, anti-Sm); the first case that applies defines it:

1. a reference-range high: positive when the value is certainly above it (``>`` strict; ``>1000`` counts),
   negative when certainly not (``12`` or ``<10`` against 30), else unknown (``<50`` against 30);
2. an interpretation code: positive when in ``positive_interpretations`` (H, HH, POS), negative when in
   ``negative_interpretations`` (N, NEG, L, LL);
3. a qualitative result (``value_bool``, e.g. item ``anti_sm_presence``): as reported;
4. the study's ``default_upper_limits`` for the item, as in case 1;
5. unknown.

At a visit the antibody's items are tried in order (``anti_sm`` then ``anti_sm_presence``).

**Seroconversion** (positive → negative); the first case that applies defines it:

1. no status on or before Day 1 (inside the baseline look-back) → None ("no baseline result");
2. negative at baseline (the last status on or before Day 1 — at a visit, or a result in no visit such as one
   dated before consent, named in ``baseline_source``) → None ("negative at baseline": not applicable);
3. no status at a visit after Day 1 → None;
4. a negative visit after Day 1 → True, ``first_negative`` = the first such visit and its study day;
   ``persistent`` = negative at the last visit with a status;
5. otherwise False.

**B-cell aplasia** = CD19+ B cells below ``b_cell_aplasia_below`` (1 /µL by default: a study choice at the
usual lower limit of quantification of clinical flow cytometry, not a published cut-off): onset at the first
visit after Day 1 certainly below it (``<1`` counts); **recovery** at the first later visit ≥ the threshold,
reported with its study day. None when no CD19 result after Day 1 (aplasia) or after the onset (recovery).

**Anti-drug antibodies** (item ``anti_car_antibody``, all results dated after Day 1): any positive →
"positive" with the first positive study day; all negative → "negative"; no result → None.

Examples: anti-dsDNA 120 (range high 30) at baseline, 45 at W4, 12 at W12, 8 at W24 → seroconverted at W12,
persistent; CD19 150 at baseline, 0 at W1, <1 at W4, 35 at W24 → aplasia from W1, recovery at W24.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fhir_adapter.crf.models import Finding, SubjectCRF, VisitRecord
from fhir_adapter.derive.baseline import (
    BaselineSource,
    VisitValue,
    after_infusion,
    baseline_index,
    item_with_baseline,
    prior_result,
    prior_wins,
)
from fhir_adapter.derive.compare import exceeds

Status = Literal["positive", "negative"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImmunologySettings(_Strict):
    items: tuple[str, ...] = Field(
        ("c3", "c4", "anti_dsdna", "anti_sm", "igg", "iga", "igm", "cd19"),
        description="items given per visit with change from baseline; results/study.json has visit keys for "
        "c3, c4, anti_dsdna, anti_sm, igg, iga, igm and cd19 only")
    seroconversion: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {"anti_dsdna": ("anti_dsdna",), "anti_sm": ("anti_sm", "anti_sm_presence")},
        description="antibody -> CRF items tried in order at each visit",
    )
    positive_interpretations: tuple[str, ...] = Field(
        ("H", "HH", "POS"),
        description="interpretation codes that make an antibody result positive when it has no reference-range high")
    negative_interpretations: tuple[str, ...] = Field(
        ("N", "NEG", "L", "LL"),
        description="interpretation codes that make an antibody result negative when it has no reference-range high")
    default_upper_limits: dict[str, float] = Field(default_factory=dict, description="item -> ULN, its unit")
    cd19_item: str = Field("cd19", description="CRF item of the CD19+ B-cell count (B-cell aplasia and recovery)")
    b_cell_aplasia_below: float = Field(1.0, gt=0, description="CD19+ cells /uL below which: aplasia")
    ada_item: str = Field("anti_car_antibody", description="CRF item of the anti-drug (anti-CAR) antibody result: any "
                          "positive after Day 1 makes the status positive")


class VisitEvent(BaseModel):
    visit: str
    date: dt.date | None
    study_day: int | None


class Seroconversion(BaseModel):
    baseline_status: Status | None = None
    baseline_visit: str | None = None
    baseline_source: str | None = Field(None, description="the baseline result when it lies in no visit")
    seroconverted: bool | None = None
    first_negative: VisitEvent | None = None
    persistent: bool | None = Field(None, description="negative at the last visit with a status")
    last_visit: str | None = None
    reason: str | None = None


class BCellAplasia(BaseModel):
    threshold: float
    baseline_cd19: float | None = None
    baseline_source: str | None = Field(None, description="the baseline result when it lies in no visit")
    aplasia: bool | None = None
    onset: VisitEvent | None = None
    recovery: bool | None = None
    recovered_at: VisitEvent | None = None
    reason: str | None = None


class AdaStatus(BaseModel):
    status: Status | None = None
    first_positive_day: int | None = None
    first_positive_date: dt.date | None = None
    n_tested: int = 0


class ImmunologyResults(BaseModel):
    values: dict[str, list[VisitValue]]
    seroconversion: dict[str, Seroconversion]
    b_cell_aplasia: BCellAplasia
    ada: AdaStatus
    baselines: list[BaselineSource] = Field(default_factory=list, description="baselines from no visit")


def _against_limit(f: Finding, high: float) -> Status | None:
    if exceeds(f, ">", high):
        return "positive"
    if f.value is not None and f.comparator in (None, "<", "<=") and f.value <= high:
        return "negative"
    return None


def antibody_status(f: Finding, s: ImmunologySettings) -> Status | None:
    """Positive/negative/unknown of one result (cases 1–5 of the module docstring)."""
    if f.ref_high is not None and f.value is not None:
        return _against_limit(f, f.ref_high)
    if any(c in s.positive_interpretations for c in f.interpretation):
        return "positive"
    if any(c in s.negative_interpretations for c in f.interpretation):
        return "negative"
    if f.value_bool is not None:
        return "positive" if f.value_bool else "negative"
    default = s.default_upper_limits.get(f.item)
    if default is not None and f.value is not None:
        return _against_limit(f, default)
    return None


def _event(crf: SubjectCRF, visit: str, f: Finding | None = None) -> VisitEvent:
    v = next(r for r in crf.visits if r.visit == visit)
    return VisitEvent(visit=visit, date=f.date if f and f.date else v.date,
                      study_day=f.study_day if f and f.study_day is not None else v.study_day)


def _later_same_day(prior: Finding, dated: list[VisitRecord], base: int | None, items: tuple[str, ...],
                    s: ImmunologySettings) -> bool:
    """Is the result in no visit timed later on the date of the baseline visit's value (of another assay of the
    antibody) — the last result of that date, so the baseline (a tie in time goes to the visit's)?"""
    if base is None:
        return False
    shown = next((f for i in items if (f := dated[base].values.get(i)) is not None
                  and antibody_status(f, s) is not None), None)
    return shown is not None and shown.date == prior.date and prior.time_order > shown.time_order


def seroconversion(crf: SubjectCRF, items: tuple[str, ...], s: ImmunologySettings) -> Seroconversion:
    """Positive → negative conversion of one antibody (cases 1–5 of the module docstring)."""
    dated = [v for v in crf.visits if v.date is not None]
    statuses: list[Status | None] = []
    eligible: list[bool] = []  # a Day 1 result taken after the infusion is no baseline
    for v in dated:
        found = next(((st, v.values[i]) for i in items if i in v.values
                      and (st := antibody_status(v.values[i], s)) is not None), None)
        statuses.append(found[0] if found else None)
        eligible.append(found is None or not after_infusion(crf, found[1]))
    dates = [v.date for v in dated]
    base = baseline_index(dates, [st is not None and ok for st, ok in zip(statuses, eligible, strict=True)],
                          crf.day1, crf.baseline_from)
    priors = [f for i in items if (f := prior_result(crf, i, lambda f: antibody_status(f, s) is not None))]
    # the last by date, then time (Finding.time_order), as every baseline
    prior = max(priors, key=lambda f: (f.date, f.time_order, f.source.id)) if priors else None
    prior_status = antibody_status(prior, s) if prior is not None else None
    # of several items (assays) of one antibody, a visit's value of another item may be later than the prior
    if prior is not None and prior.date is not None and (len(items) == 1 or prior_wins(
            base, dates, crf.day1, (prior.date, prior_status)) or _later_same_day(prior, dated, base, items, s)):
        out = Seroconversion(baseline_status=prior_status, baseline_source=prior.source.reference)
    elif base is None or crf.day1 is None:
        return Seroconversion(reason="no baseline result")
    else:
        out = Seroconversion(baseline_status=statuses[base], baseline_visit=dated[base].visit)
    if crf.day1 is None:
        return Seroconversion(reason="no baseline result")
    if out.baseline_status == "negative":
        out.reason = "negative at baseline"
        return out
    after = [(v, st) for v, st in zip(dated, statuses, strict=True)
             if st is not None and v.date is not None and v.date > crf.day1]
    if not after:
        out.reason = "no result after Day 1"
        return out
    first_neg = next((v for v, st in after if st == "negative"), None)
    out.last_visit = after[-1][0].visit
    out.seroconverted = first_neg is not None
    if first_neg is not None:
        out.first_negative = _event(crf, first_neg.visit)
        out.persistent = after[-1][1] == "negative"
    return out


def b_cell_aplasia(crf: SubjectCRF, s: ImmunologySettings) -> BCellAplasia:
    """Onset of B-cell aplasia after Day 1 and recovery from it (see the module docstring)."""
    res = BCellAplasia(threshold=s.b_cell_aplasia_below)
    rows = [(v, v.values[s.cd19_item]) for v in crf.visits if v.date is not None and s.cd19_item in v.values]
    dates = [v.date for v, _ in rows]
    base_i = baseline_index(dates, [f.value is not None and not after_infusion(crf, f) for _, f in rows], crf.day1,
                            crf.baseline_from)
    prior = prior_result(crf, s.cd19_item)  # later than every visit's value when found
    if prior is not None:
        res.baseline_cd19, res.baseline_source = prior.value, prior.source.reference
    elif base_i is not None:
        res.baseline_cd19 = rows[base_i][1].value
    after = [(v, f) for v, f in rows if crf.day1 is not None and v.date is not None and v.date > crf.day1]
    if not after:
        res.reason = "no CD19 result after Day 1"
        return res
    onset_i = next((i for i, (_, f) in enumerate(after) if exceeds(f, "<", s.b_cell_aplasia_below)), None)
    res.aplasia = onset_i is not None
    if onset_i is None:
        return res
    res.onset = _event(crf, after[onset_i][0].visit, after[onset_i][1])
    later = after[onset_i + 1:]
    if not later:
        res.reason = "no CD19 result after the onset of aplasia"
        return res
    rec = next(((v, f) for v, f in later if exceeds(f, ">=", s.b_cell_aplasia_below)), None)
    res.recovery = rec is not None
    if rec is not None:
        res.recovered_at = _event(crf, rec[0].visit, rec[1])
    return res


def ada_status(crf: SubjectCRF, s: ImmunologySettings) -> AdaStatus:
    """Anti-drug antibody status over all results dated after Day 1."""
    if crf.day1 is None:
        return AdaStatus()
    day1 = crf.day1
    results = sorted((f for f in crf.findings_for(s.ada_item)
                      if f.date is not None and f.date > day1 and f.value_bool is not None),
                     key=lambda f: (f.date or day1, f.time_order))
    if not results:
        return AdaStatus()
    first = next((f for f in results if f.value_bool), None)
    if first is None:
        return AdaStatus(status="negative", n_tested=len(results))
    return AdaStatus(status="positive", first_positive_day=first.study_day, first_positive_date=first.date,
                     n_tested=len(results))


def derive_immunology(crf: SubjectCRF, settings: ImmunologySettings) -> ImmunologyResults:
    """Every immunology result of one subject."""
    values = {item: item_with_baseline(crf, item) for item in settings.items}
    return ImmunologyResults(
        values={item: rows for item, (rows, _) in values.items()},
        baselines=[b for _, b in values.values() if b is not None],
        seroconversion={ab: seroconversion(crf, items, settings)
                        for ab, items in settings.seroconversion.items()},
        b_cell_aplasia=b_cell_aplasia(crf, settings),
        ada=ada_status(crf, settings),
    )
