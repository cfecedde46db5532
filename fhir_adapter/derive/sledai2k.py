"""SLEDAI-2K per visit and its change from baseline.

Definition: Gladman DD, Ibañez D, Urowitz MB. *Systemic lupus erythematosus disease activity index 2000.*
J Rheumatol 2002;29:288–291 — 24 weighted descriptors (0–105), scored with their full weight when present
at the visit or in the preceding 10 days; 30-day window validated by Touma Z et al., Lupus 2010;19:49–51.
Study choices (from docs/clinical-rules.md#sledai2k-descriptors on) are settings in
``mappings/<study>/sledai2k.yaml``.

How one descriptor is scored at a visit dated V (window = V − window_days … V inclusive);
the first case that applies defines the value:

1. **clinician** — a clinician-entered descriptor result (QS item ``sledai2k.<code>``) in the window:
   the latest one wins, true scores the weight, false scores 0 (the clinician applies the exclusions);
2. **lab** — a lab rule of the descriptor holds for any result of its items in the window
   (strict thresholds; below/above the result's own reference range, else its interpretation code,
   else the study default range). ``lab_fallback`` rules (spot UPCR) are used only when the window holds
   no result of the primary items (24-h urine protein);
3. **excluded** — thrombocytopenia/leukopenia results dated from lymphodepletion start through
   ``cytopenia_exclusion_days`` after it are not scored (expected drug effect); scores 0;
4. **lab** with score 0 — results exist and no rule holds;
5. **not-assessed** — no data in the window: scores 0 and is listed in ``not_assessed``.

The visit total is reported only when the visit holds its own clinician SLEDAI-2K assessment — at least
``min_clinician_descriptors`` descriptors recorded at that visit (placed in it, or dated on the visit date) —
so a visit with routine labs only is not scored, and an assessment is never reused for a later visit through
the look-back window. 0 scores every visit that has any data.
A reviewer's decision on an item at a visit (:mod:`fhir_adapter.review.apply`) replaces the look-back of that
item at that visit: the adjudicated result is the only one scored and cited (wherever it is dated), and an item
declared not available has none there.
Baseline = the last assessment dated on or before Day 1 inside the baseline look-back (``crf.baseline_from``):
a visit with a total, or — when later — a clinician assessment placed in no visit, such as one recorded
before consent (:func:`prior_assessment`: scored on its date, never turned into a visit); change = total −
baseline for visits dated after it (0 at a baseline visit, None before it or when either value is missing).

Examples (weights from Gladman 2002): arthritis (clinician true) + proteinuria 0.6 g/24 h + C3 0.8 g/L with
range low 0.9 = 4 + 4 + 2 = 10; proteinuria 0.50 g/24 h does not score (strict >); a platelet count of 80 on
study day 10 after lymphodepletion started on day −5 is excluded, the same count on day 40 scores 1.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_left, bisect_right
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fhir_adapter.crf.models import Finding, SubjectCRF, VisitRecord
from fhir_adapter.derive.baseline import (
    BaselineSource,
    after_infusion,
    baseline_index,
    before_participation,
    changes,
    in_lookback,
    prior_wins,
)
from fhir_adapter.derive.compare import exceeds, is_present
from fhir_adapter.study.timeline import study_day
from fhir_adapter.terminology.codes import SLEDAI2K_DESCRIPTOR_CODES

Basis = Literal["clinician", "lab", "excluded", "not-assessed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabRule(_Strict):
    item: str = Field(description="CRF item (items.yaml) whose results in the window the rule tests")
    op: Literal[">", ">=", "<", "<=", "present", "below_range", "above_range"] = Field(
        description="the test: compared with `value`; present (positive or above 0); below_range/above_range (the "
        "result's range, else interpretation, else default_ranges)")
    value: float | None = Field(None, description="the threshold of >, >=, < and <=, in `unit`")
    unit: str | None = Field(None, description="the unit of `value`, converted to the item's CRF unit when the mapping "
                             "loads; without it, the item's unit")

    @model_validator(mode="after")
    def _value_for_thresholds(self) -> LabRule:
        if self.op in (">", ">=", "<", "<=") and self.value is None:
            raise ValueError(f"rule on '{self.item}': operator '{self.op}' needs a `value`")
        return self


class Descriptor(_Strict):
    code: str = Field(description="the descriptor's code (one of the 24); the clinician's entry is the CRF item "
                      "sledai2k.<code>")
    weight: int = Field(description="the score when the descriptor is present (the 24 weights add up to 105)")
    group: str = Field(description="the descriptor's organ group, which lldas.yaml major_organ_groups names")
    label: str = Field("", description="the descriptor's name for the reader of the file; the adapter does not read it")
    cytopenia: bool = Field(
        False, description="its lab results dated from lymphodepletion start to cytopenia_exclusion_days after it are "
        "not scored (an expected drug effect)")
    lab: tuple[LabRule, ...] = Field(
        default=(), description="lab rules: the descriptor scores when any rule holds for any result of its item in "
        "the window")
    lab_fallback: tuple[LabRule, ...] = Field(
        default=(), description="lab rules used only when the window holds no result of the `lab` rules' items")

    @property
    def item(self) -> str:
        """CRF item id of the clinician-entered descriptor."""
        return f"sledai2k.{self.code}"


class Range(_Strict):
    low: float | None = Field(None, description="the default lower limit, in the item's CRF unit (below_range)")
    high: float | None = Field(None, description="the default upper limit, in the item's CRF unit (above_range)")


class Sledai2kSettings(_Strict):
    window_days: Literal[10, 28, 30] = Field(
        10, description="a descriptor counts when present from this many days before the visit date through that "
        "date (docs/clinical-rules.md#sledai2k-window)")
    cytopenia_exclusion_days: int = Field(
        30, ge=0, description="lab results of cytopenia descriptors dated from lymphodepletion start to this many days "
        "after it are not scored; 0: no exclusion")
    min_clinician_descriptors: int = Field(
        1, ge=0, description="clinician descriptor results a visit must hold to get a SLEDAI-2K total; 0: labs "
        "suffice")
    low_interpretations: tuple[str, ...] = Field(
        ("L", "LL"), description="interpretation codes meaning below range, for a result without a reference-range low "
        "(below_range)")
    high_interpretations: tuple[str, ...] = Field(
        ("H", "HH", "POS"), description="interpretation codes meaning above range, for a result without a "
        "reference-range high (above_range)")
    default_ranges: dict[str, Range] = Field(
        default_factory=dict, description="item → the study's range, used only for a result with neither a "
        "reference range nor an interpretation code")
    descriptors: tuple[Descriptor, ...] = Field(
        description="the 24 SLEDAI-2K descriptors of Gladman 2002, with their weights, groups and lab rules "
        "(docs/clinical-rules.md#sledai2k-descriptors)")

    @model_validator(mode="after")
    def _the_24_descriptors(self) -> Sledai2kSettings:
        codes = [d.code for d in self.descriptors]
        if sorted(codes) != sorted(SLEDAI2K_DESCRIPTOR_CODES):
            missing = sorted(set(SLEDAI2K_DESCRIPTOR_CODES) - set(codes))
            extra = sorted(set(codes) - set(SLEDAI2K_DESCRIPTOR_CODES))
            raise ValueError(f"SLEDAI-2K needs exactly its 24 descriptors; missing {missing}, unknown {extra}")
        total = sum(d.weight for d in self.descriptors)
        if total != 105:
            raise ValueError(f"SLEDAI-2K weights must add up to 105 (Gladman 2002), these add up to {total}")
        return self

    def lab_items(self) -> set[str]:
        return {r.item for d in self.descriptors for r in (*d.lab, *d.lab_fallback)}


class DescriptorScore(BaseModel):
    code: str
    weight: int
    score: int
    basis: Basis
    sources: list[str] = Field(default_factory=list, description="references of the results that decided")


class Sledai2kVisit(BaseModel):
    visit: str
    date: dt.date | None
    total: int | None
    change: int | None = None
    baseline: bool = False
    clinician_descriptors: int = 0
    descriptors: list[DescriptorScore]

    @property
    def not_assessed(self) -> list[str]:
        return [d.code for d in self.descriptors if d.basis == "not-assessed"]


def _rule_holds(f: Finding, rule: LabRule, s: Sledai2kSettings) -> bool:
    if rule.op == "present":
        return is_present(f)
    if rule.op == "below_range":
        default = s.default_ranges.get(rule.item)
        low = f.ref_low if f.ref_low is not None else None
        if low is None and f.interpretation:
            return any(code in s.low_interpretations for code in f.interpretation)
        if low is None and default is not None:
            low = default.low
        return low is not None and exceeds(f, "<", low)
    if rule.op == "above_range":
        if f.ref_high is not None:
            return exceeds(f, ">", f.ref_high)
        if f.interpretation:
            return any(code in s.high_interpretations for code in f.interpretation)
        if f.value is None and f.value_bool is not None:
            return f.value_bool
        default = s.default_ranges.get(rule.item)
        return default is not None and default.high is not None and exceeds(f, ">", default.high)
    assert rule.value is not None
    return exceeds(f, rule.op, rule.value)


class _ByItem:
    """One subject's results of the SLEDAI-2K items (clinician descriptors and lab items), per item in the
    CRF's order and, for the look-back windows, the dated ones in date order (a stable sort: results of one
    date keep the CRF's order; made on an item's first window), so a window is found by bisection instead of
    a scan of every result."""

    def __init__(self, crf: SubjectCRF, settings: Sledai2kSettings) -> None:
        items = {d.item for d in settings.descriptors} | settings.lab_items()
        self.all: dict[str, list[Finding]] = {}
        for f in crf.findings:
            if f.item in items:
                self.all.setdefault(f.item, []).append(f)
        self._dated: dict[str, tuple[list[dt.date], list[Finding]]] = {}

    def get(self, item: str) -> list[Finding]:
        """Every result of ``item``, in the CRF's order."""
        return self.all.get(item, [])

    def in_window(self, item: str, start: dt.date, end: dt.date) -> list[Finding]:
        """The results of ``item`` dated ``start`` … ``end`` (inclusive), in date order."""
        if item not in self._dated:
            dated = sorted((f for f in self.get(item) if f.date is not None), key=_date)
            self._dated[item] = [_date(f) for f in dated], dated
        dates, findings = self._dated[item]
        return findings[bisect_left(dates, start):bisect_right(dates, end)]


def _date(f: Finding) -> dt.date:
    assert f.date is not None
    return f.date


class _AtVisit:
    """The look-back of one visit: :class:`_ByItem`, except that an item a reviewer settled at the visit has
    its adjudicated result only, or none (:meth:`fhir_adapter.crf.models.VisitRecord.settled_results`)."""

    def __init__(self, by_item: _ByItem, visit: VisitRecord | None = None) -> None:
        self.by_item, self.visit = by_item, visit

    def in_window(self, item: str, start: dt.date, end: dt.date) -> list[Finding]:
        settled = self.visit.settled_results(item) if self.visit is not None else None
        return settled if settled is not None else self.by_item.in_window(item, start, end)

    def own(self, item: str, date: dt.date) -> list[Finding]:
        """The clinician's results of ``item`` for this assessment: what the visit keeps for it (a reviewer's
        adjudicated result, else its ``select: last`` pick) or, with none, its results placed in it or dated on
        its date and placed in no visit; for an assessment in no visit (no :attr:`visit`), the results dated on
        ``date``."""
        if self.visit is not None:
            settled = self.visit.settled_results(item)
            if settled is not None:
                return settled
            kept = self.visit.values.get(item)
            if kept is not None:
                return [kept]
            return [f for f in self.by_item.get(item)
                    if f.visit == self.visit.visit or (f.visit is None and f.date == date)]
        return [f for f in self.by_item.get(item) if f.date == date]

    def clinician_at(self, settings: Sledai2kSettings) -> int:
        """How many clinician descriptor results the visit holds: placed in it, or dated on its date and
        placed in no visit."""
        assert self.visit is not None
        v, n = self.visit, 0
        for d in settings.descriptors:
            settled = v.settled_results(d.item)
            found = settled if settled is not None else [
                f for f in self.by_item.get(d.item) if f.visit == v.visit or (f.visit is None and f.date == v.date)]
            n += sum(1 for f in found if f.value_bool is not None)
        return n


def _score_descriptor(
    d: Descriptor,
    by_item: _AtVisit,
    start: dt.date,
    end: dt.date,
    exclusion: tuple[dt.date, dt.date] | None,
    s: Sledai2kSettings,
) -> DescriptorScore:
    # 1. the clinician's entry for this visit (it applies the exclusions; the one the CRF shows)
    own = [f for f in by_item.own(d.item, end) if f.value_bool is not None]
    if own:
        latest = max(own, key=_last)
        return DescriptorScore(code=d.code, weight=d.weight, score=d.weight if latest.value_bool else 0,
                               basis="clinician", sources=[latest.source.reference])
    # 2. present at another entry of the look-back window: present in the window (Gladman 2002)
    entries = [f for f in by_item.in_window(d.item, start, end) if f.value_bool is not None]
    present = [f for f in entries if f.value_bool]
    if present:
        return DescriptorScore(code=d.code, weight=d.weight, score=d.weight, basis="clinician",
                               sources=[max(present, key=_last).source.reference])
    # 3. the labs of the window; 4. an earlier "absent" speaks for its own date only: it scores 0 when no lab
    # says otherwise
    excluded_any = False
    for rules in (d.lab, d.lab_fallback):
        results: list[tuple[Finding, LabRule]] = []
        for rule in rules:
            for f in by_item.in_window(rule.item, start, end):
                if d.cytopenia and exclusion and f.date is not None and exclusion[0] <= f.date <= exclusion[1]:
                    excluded_any = True
                    continue
                results.append((f, rule))
        if results:
            hits = [f for f, rule in results if _rule_holds(f, rule, s)]
            decided = hits or [f for f, _ in results]
            return DescriptorScore(
                code=d.code, weight=d.weight, score=d.weight if hits else 0, basis="lab",
                sources=sorted({f.source.reference for f in decided}),
            )
    if entries:
        return DescriptorScore(code=d.code, weight=d.weight, score=0, basis="clinician",
                               sources=[max(entries, key=_last).source.reference])
    return DescriptorScore(code=d.code, weight=d.weight, score=0, basis="excluded" if excluded_any else "not-assessed")


def _last(f: Finding) -> tuple[dt.date, tuple[bool, dt.datetime], str]:
    """The order of ``select: last`` (fhir_adapter/mapping/visits.py): by date, then time, then resource id —
    of two entries of one date and time the score takes the one the CRF shows."""
    return (_date(f), f.time_order, f.source.id)


def _exclusion(crf: SubjectCRF, settings: Sledai2kSettings) -> tuple[dt.date, dt.date] | None:
    if crf.lymphodepletion_start and settings.cytopenia_exclusion_days:
        ld = crf.lymphodepletion_start
        return ld, ld + dt.timedelta(days=settings.cytopenia_exclusion_days)
    return None


def _scores(date: dt.date, by_item: _AtVisit, exclusion: tuple[dt.date, dt.date] | None,
            settings: Sledai2kSettings) -> list[DescriptorScore]:
    start = date - dt.timedelta(days=settings.window_days)
    return [_score_descriptor(d, by_item, start, date, exclusion, settings) for d in settings.descriptors]


def derive_sledai2k(crf: SubjectCRF, settings: Sledai2kSettings) -> list[Sledai2kVisit]:
    """SLEDAI-2K of every dated visit of ``crf``, with baseline flag and change from baseline."""
    by_item = _ByItem(crf, settings)
    exclusion = _exclusion(crf, settings)
    out: list[Sledai2kVisit] = []
    for v in crf.visits:
        if v.date is None:
            continue
        at = _AtVisit(by_item, v)
        scores = _scores(v.date, at, exclusion, settings)
        n_clin = sum(1 for sc in scores if sc.basis == "clinician")
        at_visit = at.clinician_at(settings)
        enough = at_visit >= settings.min_clinician_descriptors and any(sc.basis != "not-assessed" for sc in scores)
        total = sum(sc.score for sc in scores) if enough else None
        out.append(Sledai2kVisit(visit=v.visit, date=v.date, total=total, clinician_descriptors=n_clin,
                                 descriptors=scores))
    _apply_baseline(out, crf, _prior_assessment(crf, by_item, settings))
    return out


class Sledai2kPrior(BaseModel):
    """A clinician SLEDAI-2K assessment placed in no visit (e.g. recorded before consent, or between visit
    windows), scored on its date; the baseline when it is the last one before Day 1."""

    date: dt.date
    total: int
    sources: list[str] = Field(description="the clinician descriptor results of that date")
    descriptors: list[DescriptorScore]


def _off_visit_dates(crf: SubjectCRF, by_item: _ByItem,
                     settings: Sledai2kSettings) -> dict[dt.date, list[Finding]]:
    """Dates with at least ``min_clinician_descriptors`` clinician descriptor results placed in no visit."""
    per_date: dict[dt.date, list[Finding]] = {}
    for item in {d.item for d in settings.descriptors}:
        for f in by_item.get(item):
            if f.visit is None and f.value_bool is not None and f.date is not None:
                per_date.setdefault(f.date, []).append(f)
    return {d: fs for d, fs in per_date.items() if len(fs) >= settings.min_clinician_descriptors}


def _scored_on(date: dt.date, findings: list[Finding], crf: SubjectCRF, by_item: _ByItem,
               settings: Sledai2kSettings) -> Sledai2kPrior:
    scores = _scores(date, _AtVisit(by_item), _exclusion(crf, settings), settings)
    return Sledai2kPrior(date=date, total=sum(sc.score for sc in scores),
                         sources=sorted(f.source.reference for f in findings), descriptors=scores)


def prior_assessment(crf: SubjectCRF, settings: Sledai2kSettings) -> Sledai2kPrior | None:
    """The last clinician SLEDAI-2K assessment placed in no visit and dated inside the baseline look-back
    (docs/clinical-rules.md#baseline): at least ``min_clinician_descriptors`` descriptors recorded on one date,
    scored with the usual look-back window ending on that date; None when there is none. Whether it or a
    visit's assessment is the baseline is decided by :func:`_apply_baseline` (:func:`baseline_prior`)."""
    return _prior_assessment(crf, _ByItem(crf, settings), settings)


def _prior_assessment(crf: SubjectCRF, by_item: _ByItem, settings: Sledai2kSettings) -> Sledai2kPrior | None:
    # a Day 1 assessment recorded after the infusion is no baseline
    per_date = {d: kept for d, fs in _off_visit_dates(crf, by_item, settings).items() if in_lookback(crf, d)
                if len(kept := [f for f in fs if not after_infusion(crf, f)]) >= settings.min_clinician_descriptors}
    if not per_date:
        return None
    date = max(per_date)
    return _scored_on(date, per_date[date], crf, by_item, settings)


def off_visit_assessments(crf: SubjectCRF, settings: Sledai2kSettings) -> list[Sledai2kPrior]:
    """Every clinician SLEDAI-2K assessment placed in no visit and not dated on a visit's date (that one is
    the visit's own), whatever its date, in date order — the previous assessment LLDAS compares new features
    with may be one of them (docs/clinical-rules.md#lldas-new-features)."""
    by_item = _ByItem(crf, settings)
    visit_dates = {v.date for v in crf.visits}
    per_date = _off_visit_dates(crf, by_item, settings)
    return [_scored_on(d, per_date[d], crf, by_item, settings) for d in sorted(per_date) if d not in visit_dates]


def _eligible(visits: list[Sledai2kVisit], crf: SubjectCRF) -> list[bool]:
    """Which visits' assessments may be the baseline: not one scored from a Day 1 result taken after the
    infusion (docs/clinical-rules.md#baseline: "on or before Day 1, before the infusion")."""
    late = {f.source.reference for f in crf.findings if f.date == crf.day1 and after_infusion(crf, f)}
    return [not late or not any(r in late for sc in v.descriptors for r in sc.sources) for v in visits]


def _apply_baseline(visits: list[Sledai2kVisit], crf: SubjectCRF, prior: Sledai2kPrior | None) -> None:
    """Baseline = last assessment on or before Day 1 (before the infusion) inside the look-back — a visit's
    total, or ``prior`` when it is later; change = total − baseline after it
    (:func:`fhir_adapter.derive.baseline.changes`)."""
    base, diffs = changes([v.date for v in visits], [v.total for v in visits], crf.day1, since=crf.baseline_from,
                          prior=(prior.date, prior.total) if prior is not None else None,
                          eligible=_eligible(visits, crf))
    for i, v in enumerate(visits):
        v.baseline = i == base
        v.change = diffs[i]


def baseline_prior(visits: list[Sledai2kVisit], crf: SubjectCRF,
                   settings: Sledai2kSettings) -> Sledai2kPrior | None:
    """The assessment in no visit that is the SLEDAI-2K baseline of ``visits`` (None: a visit is, or none)."""
    prior = prior_assessment(crf, settings)
    if prior is None:
        return None
    dates = [v.date for v in visits]
    base = baseline_index(dates, [v.total is not None and ok for v, ok in zip(visits, _eligible(visits, crf),
                                                                              strict=True)],
                          crf.day1, crf.baseline_from)
    return prior if prior_wins(base, dates, crf.day1, (prior.date, prior.total)) else None


def baseline_source(visits: list[Sledai2kVisit], crf: SubjectCRF,
                    settings: Sledai2kSettings) -> BaselineSource | None:
    """:func:`baseline_prior` as the ``baselines`` entry of ``results/study.json`` (item ``sledai2k``)."""
    prior = baseline_prior(visits, crf, settings)
    if prior is None:
        return None
    return BaselineSource(item="sledai2k", value=prior.total, date=prior.date,
                          study_day=study_day(prior.date, crf.day1) if crf.day1 else None,
                          sources=tuple(prior.sources), before_participation=before_participation(crf, prior.date))
