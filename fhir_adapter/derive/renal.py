"""Proteinuria per visit with change from baseline, and the optional lupus nephritis renal response.

Measures (docs/clinical-rules.md#renal-units): 24-h urine protein in g/24 h and the urine
protein/creatinine ratio (UPCR) in mg/mg (= g/g; mg/mmol ÷ 113.12, mg/g ÷ 1000). The mapping has already
converted units and selected one value per visit (``items.yaml`` items ``protein_24h`` and ``upcr``).
Change from baseline (:mod:`fhir_adapter.derive.baseline`): baseline = the last value on or before Day 1;
change = value − baseline after it (None for a censored value such as ``<0.1``).

Renal response (setting ``response.enabled``, off by default) — KDIGO 2024 Clinical Practice Guideline for
the management of lupus nephritis, Kidney Int 2024;105(1S):S1–S69 (docs/clinical-rules.md#renal-response):

* **complete**: proteinuria **< 0.5** g/g (strict, as KDIGO and BLISS-LN; AURORA used ≤ 0.5) with kidney
  function stable or improved;
* **partial**: proteinuria reduced by **≥ 50 %** from baseline **and < 3.0** g/g, kidney function stable;
* **none**: neither.

"Kidney function stable" = visit eGFR ≥ baseline eGFR × (1 − ``egfr_max_decline``) (0.15: the upper end of
KDIGO's "±10–15 % of baseline"); an eGFR rise always counts as stable.

Who is assessed, and with which measure; the first case that applies decides (per subject):

1. response disabled → no result (null);
2. no baseline value of any measure in ``measures`` (preference order; default UPCR, then 24-h protein: KDIGO
   states its thresholds as PCR in g/g) → not evaluable, the reason saying "no Day 1" for a subject not dosed;
3. ``ln_at_baseline: proteinuria`` and baseline proteinuria ≤ ``ln_min_proteinuria`` (0.5; lupus nephritis
   at baseline needs **> 0.5**, the SLEDAI-2K proteinuria threshold) → not applicable (no LN at baseline);
   ``ln_at_baseline: all`` treats every subject as having LN (an LN cohort);
4. otherwise every visit after Day 1 is graded with the one chosen measure (never mixed across visits):
   no value → None; value censored above (``>3``) → None; eGFR missing at the visit or at baseline with
   ``require_egfr`` → None; else complete, partial or none as above.

Examples: baseline UPCR 2.0 → 0.45 with stable eGFR = complete; 2.0 → 0.5 = partial (75 % reduction, < 3.0;
0.5 is not < 0.5); 4.0 → 2.0 = partial (exactly 50 %); 6.0 → 3.0 = none (50 % but not < 3.0); 2.0 → 0.4 with
eGFR 100 → 84 (−16 %) = none.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.derive.baseline import BaselineSource, VisitValue, item_with_baseline
from fhir_adapter.numbers import exact

Measure = Literal["upcr", "protein_24h"]
Response = Literal["complete", "partial", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RenalResponseSettings(_Strict):
    enabled: bool = Field(False, description="derive the renal response (docs/clinical-rules.md#renal-response); off: "
                          "no response result")
    ln_at_baseline: Literal["proteinuria", "all"] = Field(
        "proteinuria", description="who has lupus nephritis at baseline: proteinuria (baseline proteinuria > "
        "ln_min_proteinuria) or all (every subject: an LN cohort)")
    ln_min_proteinuria: float = Field(0.5, ge=0, description="LN at baseline needs proteinuria > this")
    measures: tuple[Measure, ...] = Field(
        ("upcr", "protein_24h"),
        description="proteinuria measures in order of preference: the first with a baseline value grades every visit "
        "of the subject")
    complete_below: float = Field(0.5, gt=0, description="complete: proteinuria < this")
    partial_reduction: float = Field(0.5, gt=0, le=1, description="partial: reduction >= this fraction")
    partial_below: float = Field(3.0, gt=0, description="partial: proteinuria < this")
    egfr_max_decline: float = Field(0.15, ge=0, lt=1, description="stable: eGFR >= baseline x (1 - this)")
    require_egfr: bool = Field(
        True, description="a visit without eGFR, or a subject without a baseline eGFR, is not graded; false: "
        "proteinuria alone decides")


class RenalSettings(_Strict):
    upcr_item: str = Field("upcr", description="CRF item of the urine protein/creatinine ratio (UPCR)")
    protein_24h_item: str = Field("protein_24h", description="CRF item of the 24-h urine protein")
    egfr_item: str = Field("egfr", description="CRF item of the eGFR, reported per visit and used for kidney-function "
                           "stability in the renal response")
    response: RenalResponseSettings = Field(
        RenalResponseSettings(),
        description="the lupus nephritis renal response (KDIGO 2024), derived only with enabled: true")


class RenalVisit(BaseModel):
    visit: str
    date: dt.date | None
    study_day: int | None = None
    upcr: float | None = None
    upcr_change: float | None = None
    protein_24h: float | None = None
    protein_24h_change: float | None = None
    egfr: float | None = None


class RenalResponseVisit(BaseModel):
    visit: str
    date: dt.date | None = None
    study_day: int | None
    value: float | None
    reduction: float | None = Field(None, description="fraction of the baseline proteinuria lost")
    egfr_change: float | None = Field(None, description="fractional change of eGFR from baseline")
    response: Response | None
    reason: str | None = None
    sources: list[str] = Field(default_factory=list, description="the proteinuria and eGFR results it rests on")


class RenalResponse(BaseModel):
    ln_at_baseline: bool | None
    measure: Measure | None = None
    baseline_visit: str | None = None
    baseline_value: float | None = None
    baseline_source: str | None = Field(None, description="the baseline result when it lies in no visit")
    baseline_egfr: float | None = None
    reason: str | None = None
    visits: list[RenalResponseVisit] = Field(default_factory=list)
    first_complete: RenalResponseVisit | None = None
    first_partial_or_better: RenalResponseVisit | None = None
    last: RenalResponseVisit | None = Field(None, description="the last graded visit")


class RenalResults(BaseModel):
    visits: list[RenalVisit]
    response: RenalResponse | None = None
    baselines: list[BaselineSource] = Field(default_factory=list, description="baselines from no visit")


def _baseline(rows: list[VisitValue], prior: BaselineSource | None = None) -> VisitValue | None:
    """The baseline visit row, else the result in no visit that is the baseline (visit "")."""
    flagged = next((r for r in rows if r.baseline), None)
    if flagged is not None or prior is None:
        return flagged
    return VisitValue(visit="", date=prior.date, study_day=prior.study_day, value=prior.value,
                      comparator=prior.comparator, unit=prior.unit, source=prior.sources[0], baseline=True)


def _stable(egfr: VisitValue, base: VisitValue, max_decline: float) -> bool | None:
    """Kidney function stable: visit eGFR >= baseline x (1 - max_decline), on the decimal numbers. A censored
    value (">90", "<15") is the range its bound allows: stable when every visit value is at or above every limit
    the baseline allows, not stable when every visit value is below every such limit, else unknown (None)."""
    assert egfr.value is not None and base.value is not None
    visit, limit = exact(egfr.value), exact(base.value) * (1 - exact(max_decline))
    # the visit's lowest and highest possible value, and the limit's (None: unbounded); open: the bound itself
    # is not possible ("<15" never is 15)
    v_low = visit if egfr.comparator in (None, ">", ">=") else None
    v_high = visit if egfr.comparator in (None, "<", "<=") else None
    l_low = limit if base.comparator in (None, ">", ">=") else None
    l_high = limit if base.comparator in (None, "<", "<=") else None
    if v_low is not None and l_high is not None and v_low >= l_high:
        return True
    if v_high is not None and l_low is not None and (
            v_high < l_low or (v_high == l_low and (egfr.comparator == "<" or base.comparator == ">"))):
        return False
    return None


def _grade(
    r: VisitValue,
    base: VisitValue,
    egfr: VisitValue | None,
    base_egfr: VisitValue | None,
    s: RenalResponseSettings,
) -> RenalResponseVisit:
    assert base.value is not None
    out = RenalResponseVisit(visit=r.visit, date=r.date, study_day=r.study_day, value=r.value, response=None)
    if r.value is None:
        out.reason = "no proteinuria result at this visit"
        return out
    if r.comparator in (">", ">="):
        out.reason = f"censored result {r.comparator}{r.value}: reduction unknown"
        return out
    # decided on the decimal numbers (0.85 x 21.1 = 17.935 exactly, not 17.935000000000002), stored rounded
    reduction = (exact(base.value) - exact(r.value)) / exact(base.value) if base.value > 0 else None
    out.reduction = round(float(reduction), 6) if reduction is not None else None
    stable: bool | None = True
    used: list[VisitValue] = [r, base]
    if egfr is not None and egfr.value is not None and base_egfr is not None and base_egfr.value:
        used += [egfr, base_egfr]
        if egfr.comparator is None and base_egfr.comparator is None:
            out.egfr_change = round((egfr.value - base_egfr.value) / base_egfr.value, 6)
        stable = _stable(egfr, base_egfr, s.egfr_max_decline)
    elif s.require_egfr:
        out.reason = "eGFR missing at this visit or at baseline"
        return out
    # an upper-censored value (<0.1) is below a limit L when its bound is <= L; its reduction is a lower bound
    below_complete = r.value < s.complete_below or (r.comparator is not None and r.value <= s.complete_below)
    below_partial = r.value < s.partial_below or (r.comparator is not None and r.value <= s.partial_below)
    out.sources = sorted({v.source for v in used if v.source})
    could_respond = below_complete or (below_partial and reduction is not None
                                       and reduction >= exact(s.partial_reduction))
    if stable is None and could_respond:  # proteinuria alone does not decide: the censored eGFR would
        assert egfr is not None and base_egfr is not None
        out.reason = (f"eGFR censored ({egfr.comparator or ''}{egfr.value} against the baseline "
                      f"{base_egfr.comparator or ''}{base_egfr.value}): kidney function stability unknown")
        return out
    if stable and below_complete:
        out.response = "complete"
    elif stable and below_partial and reduction is not None and reduction >= exact(s.partial_reduction):
        out.response = "partial"
    else:
        out.response = "none"
    return out


def renal_response(
    crf: SubjectCRF,
    by_measure: dict[Measure, list[VisitValue]],
    egfr: list[VisitValue],
    s: RenalResponseSettings,
    priors: dict[str, BaselineSource | None] | None = None,
) -> RenalResponse:
    """Renal response of one subject (cases 2–4 of the module docstring); ``priors``: per measure (and
    ``egfr``) the result in no visit that is its baseline, if any."""
    pr = priors or {}
    chosen = next(((m, b) for m in s.measures if (b := _baseline(by_measure[m], pr.get(m))) is not None), None)
    if chosen is None:
        if crf.day1 is None:  # a baseline is the last value before Day 1: none without one (not dosed yet)
            return RenalResponse(ln_at_baseline=None, reason="no Day 1 (not dosed): no baseline, no response")
        return RenalResponse(ln_at_baseline=None, reason=f"no baseline value of {', '.join(s.measures)}")
    measure, base = chosen
    assert base.value is not None
    base_egfr = _baseline(egfr, pr.get("egfr"))
    res = RenalResponse(
        ln_at_baseline=s.ln_at_baseline == "all" or base.value > s.ln_min_proteinuria, measure=measure,
        baseline_visit=base.visit or None, baseline_value=base.value,
        baseline_source=base.source if not base.visit else None,
        baseline_egfr=base_egfr.value if base_egfr else None,
    )
    if not res.ln_at_baseline:
        res.reason = f"no lupus nephritis at baseline ({measure} {base.value} <= {s.ln_min_proteinuria})"
        return res
    if base.comparator is not None:
        res.reason = f"baseline {measure} is censored ({base.comparator}{base.value})"
        return res
    egfr_by = {e.visit: e for e in egfr}
    for r in by_measure[measure]:
        if crf.day1 is None or r.date is None or r.date <= crf.day1:
            continue
        g = _grade(r, base, egfr_by.get(r.visit), base_egfr, s)
        res.visits.append(g)
    graded = [g for g in res.visits if g.response is not None]
    res.first_complete = next((g for g in graded if g.response == "complete"), None)
    res.first_partial_or_better = next((g for g in graded if g.response in ("complete", "partial")), None)
    res.last = graded[-1] if graded else None
    return res


def derive_renal(crf: SubjectCRF, settings: RenalSettings) -> RenalResults:
    """UPCR and 24-h protein at every dated visit with changes from baseline, and the renal response."""
    upcr, upcr_prior = item_with_baseline(crf, settings.upcr_item)
    p24, p24_prior = item_with_baseline(crf, settings.protein_24h_item)
    egfr, egfr_prior = item_with_baseline(crf, settings.egfr_item)
    visits = [
        RenalVisit(visit=u.visit, date=u.date, study_day=u.study_day, upcr=u.value, upcr_change=u.change,
                   protein_24h=p.value, protein_24h_change=p.change, egfr=e.value)
        for u, p, e in zip(upcr, p24, egfr, strict=True)
    ]
    response = None
    if settings.response.enabled:
        response = renal_response(crf, {"upcr": upcr, "protein_24h": p24}, egfr, settings.response,
                                  {"upcr": upcr_prior, "protein_24h": p24_prior, "egfr": egfr_prior})
    return RenalResults(visits=visits, response=response,
                        baselines=[b for b in (upcr_prior, p24_prior, egfr_prior) if b is not None])
