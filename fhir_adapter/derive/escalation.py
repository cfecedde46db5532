"""Dose escalation: per dose level counts and decision, the MTD and the RP2D recommendation.

Definitions:

* **3+3** (Storer BE, Biometrics 1989;45:925–937; Le Tourneau C et al., J Natl Cancer Inst 2009;101:708–720),
  as docs/clinical-rules.md#three-plus-three states it: 0/3 → escalate; 1/3 → expand to 6; ≤ 1/6 →
  escalate; ≥ 2 DLTs in 3 or 6 → the level exceeds the MTD (de-escalate; a lower level with only 3
  evaluable gets 3 more); MTD = the highest level with ≤ 1 DLT in ≥ 6 evaluable subjects, the next level
  exceeding the MTD.
* **BOIN** (Liu S, Yuan Y. J R Stat Soc C 2015;64:507–523; R package BOIN 2.7.2 ``get.boundary`` and
  ``select.mtd``, cran/BOIN): λe = ln[(1−φ1)/(1−φ)] / ln[φ(1−φ1)/(φ1(1−φ))], λd = ln[(1−φ)/(1−φ2)] /
  ln[φ2(1−φ)/(φ(1−φ2))] with φ1 = 0.6φ, φ2 = 1.4φ; escalate if y ≤ floor(λe·n), de-escalate if
  y ≥ ceiling(λd·n); eliminate the level and all higher ones if n ≥ 3 and Pr(p > φ | y, n) > 0.95 under a
  Beta(1, 1) prior; MTD by isotonic regression (PAVA) of p̂ = (y + 0.05)/(n + 0.1), the level closest to φ.

Counting (per arm): ``n_treated`` = infused subjects; ``n_dlt_evaluable`` = infused subjects whose DLT
evaluation is True or False (a "not evaluable" subject, dlt None — e.g. not followed through the DLT window —
is not counted, as 3+3 replaces them: ``n_dlt_not_evaluable`` = ``n_treated`` − ``n_dlt_evaluable`` is the
number to replace); ``n_dlt`` = subjects with dlt True. Expansion arms (``expansion_arms``) are reported
with their counts and the dose level they run at, but never enter the escalation decisions or the MTD (the
escalation data alone decide, as in the protocol; expansion safety is reviewed separately).

3+3 decision of one level with n evaluable and y DLTs; the first case that applies defines the value:

1. nobody infused → ``not treated``;
2. y ≥ 2 → ``exceeds MTD: de-escalate``;
3. a level above the lowest level that exceeds the MTD → ``closed: <that level> exceeds MTD``: 3+3 never doses
   above a level that exceeds the MTD, so a DLT reported late at a lower level (after the next cohort was dosed)
   closes the levels above it whatever their own counts;
4. n = 0 → ``no DLT-evaluable subjects``;
5. n < 3 → ``cohort incomplete (n/3 evaluable)``;
6. n = 3, y = 1 → ``expand to 6``; n = 3, y = 0 → ``escalate`` (``expand to 6: next level exceeds MTD``
   when the next level exceeds the MTD; ``highest level: MTD not reached`` at the top level);
7. n = 4–5 → ``cohort incomplete (n/6 evaluable)``;
8. n ≥ 6 (y ≤ 1) → ``escalate``; ``MTD`` when the next level exceeds the MTD; ``highest level: MTD not
   reached`` at the top level.

BOIN decision of one level, as the R package's ``get.oc`` moves the dose; the first case that applies defines
the value: not treated; ``eliminated`` (this level met the elimination rule, or a lower one did); y ≤
escalation cutoff → ``escalate`` (``stay: highest level`` at the top, ``stay: next level eliminated`` below an
eliminated level); y ≥ de-escalation cutoff → ``de-escalate`` (``stay: lowest level (at the de-escalation
boundary)`` at the lowest); otherwise ``stay``.

RP2D: the MTD, ``method`` naming the design; when 3+3 reaches the top level without exceeding the MTD, the
highest level tested (MTD not reached); None while escalation is ongoing (under 3+3 also while a level below
the candidate still has to expand to 6 or complete its cohort: it can still exceed the MTD), while a subject of
an escalation level is still in its DLT window (``DltOutcome.pending``: a DLT still to come can change the MTD),
or when the lowest level is too toxic, with the rationale saying so. BOIN selects the MTD only among the doses whose
isotonic estimate is below λd (``boin.bound_mtd``, the package's boundMTD = TRUE).

Examples: DL1 0/3, DL2 1/6, DL3 2/3 → DL1 escalate, DL2 MTD, DL3 exceeds MTD → RP2D DL2 (3+3).
BOIN φ = 0.30: λe 0.2365, λd 0.3585; n = (3, 6, 12, 6), y = (0, 1, 3, 3) → MTD dose 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoinSettings(_Strict):
    phi1_factor: float = Field(0.6, gt=0, lt=1, description="φ1 = factor × target (highest 'too low' rate)")
    phi2_factor: float = Field(1.4, gt=1, description="φ2 = factor × target (lowest 'too toxic' rate)")
    elimination_cutoff: float = Field(
        0.95, gt=0.5, lt=1, description="a level and all above it are eliminated when Pr(DLT rate > target) exceeds "
        "this (Beta(1, 1) prior)")
    elimination_min_treated: int = Field(
        3, ge=1, description="DLT-evaluable subjects a level needs before the elimination rule applies to it")
    min_evaluable_at_mtd: int = Field(
        6, ge=1, description="DLT-evaluable subjects the selected MTD needs before it is named the RP2D (as 3+3's 6)")
    bound_mtd: bool = Field(
        True, description="the selected MTD's isotonic estimate must be below the de-escalation boundary λd "
                          "(BOIN select.mtd boundMTD=TRUE): a dose the design de-escalates from is never the MTD")


class EscalationSettings(_Strict):
    method: Literal["3+3", "boin"] = Field(
        "3+3", description="the design: 3+3 (docs/clinical-rules.md#three-plus-three) or boin "
        "(docs/clinical-rules.md#boin)")
    target_dlt_rate: float = Field(0.30, gt=0.05, lt=0.6, description="BOIN's target DLT rate φ (0.30 → λe 0.2365, "
                                   "λd 0.3585); not used by 3+3")
    dose_levels: tuple[str, ...] = Field(min_length=1, description="escalation arms, lowest dose first")
    expansion_arms: dict[str, str] = Field(default_factory=dict, description="expansion arm -> dose level")
    boin: BoinSettings = Field(BoinSettings(), description="the BOIN design's parameters, read only with method: boin")

    @model_validator(mode="after")
    def _arms(self) -> EscalationSettings:
        if len(set(self.dose_levels)) != len(self.dose_levels):
            raise ValueError(f"dose_levels must be unique: {list(self.dose_levels)}")
        for arm, level in self.expansion_arms.items():
            if arm in self.dose_levels:
                raise ValueError(f"expansion arm '{arm}' is also a dose level")
            if level not in self.dose_levels:
                raise ValueError(f"expansion arm '{arm}' runs at '{level}', which is not in dose_levels")
        return self


_DEFAULT_BOIN = BoinSettings()


# --- Beta distribution -------------------------------------------------------------------------------


def _beta_cf(x: float, a: float, b: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz; Press et al., Numerical Recipes §6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for num in (even, odd):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for x={x}, a={a}, b={b}")


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b) = P(X ≤ x) for X ~ Beta(a, b)."""
    if a <= 0 or b <= 0:
        raise ValueError("Beta parameters must be > 0")
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_cf(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_cf(1 - x, b, a) / b


# --- BOIN ----------------------------------------------------------------------------------------------


def boin_boundaries(target: float, phi1_factor: float = 0.6, phi2_factor: float = 1.4) -> tuple[float, float]:
    """(λe, λd) of Liu & Yuan 2015 for target φ, φ1 = phi1_factor·φ, φ2 = phi2_factor·φ."""
    p1, p2 = phi1_factor * target, phi2_factor * target
    lam_e = math.log((1 - p1) / (1 - target)) / math.log(target * (1 - p1) / (p1 * (1 - target)))
    lam_d = math.log((1 - target) / (1 - p2)) / math.log(p2 * (1 - target) / (target * (1 - p2)))
    return lam_e, lam_d


def prob_above(target: float, y: int, n: int) -> float:
    """Pr(p > target | y DLTs in n) under a Beta(1, 1) prior (posterior Beta(y + 1, n − y + 1))."""
    return 1.0 - beta_cdf(target, y + 1, n - y + 1)


@dataclass(frozen=True)
class BoinRow:
    n: int
    escalate_max: int          # escalate if y <= this
    deescalate_min: int        # de-escalate if y >= this
    eliminate_min: int | None  # eliminate if y >= this (None: no elimination possible at this n)


def boin_row(n: int, target: float, s: BoinSettings = _DEFAULT_BOIN) -> BoinRow:
    """One column of BOIN ``get.boundary``: floor(λe·n), ceiling(λd·n) capped at the elimination cutoff."""
    lam_e, lam_d = boin_boundaries(target, s.phi1_factor, s.phi2_factor)
    elim = None
    if n >= s.elimination_min_treated:
        elim = next((y for y in range(1, n + 1) if prob_above(target, y, n) > s.elimination_cutoff), None)
    deesc = math.ceil(lam_d * n)
    if elim is not None and deesc > elim:
        deesc = elim
    return BoinRow(n=n, escalate_max=math.floor(lam_e * n), deescalate_min=deesc, eliminate_min=elim)


def pava(x: Sequence[float], w: Sequence[float]) -> list[float]:
    """Weighted pool-adjacent-violators (isotonic non-decreasing fit), as ``pava`` in BOIN ``select.mtd``."""
    x, lvl = list(x), list(range(len(x)))
    while True:
        viol = [i for i in range(len(x) - 1) if x[i + 1] < x[i]]
        if not viol:
            return x
        i = viol[0]
        l1, l2 = lvl[i], lvl[i + 1]
        idx = [k for k in range(len(x)) if lvl[k] in (l1, l2)]
        mean = sum(x[k] * w[k] for k in idx) / sum(w[k] for k in idx)
        for k in idx:
            x[k], lvl[k] = mean, l1


@dataclass(frozen=True)
class BoinMtd:
    index: int | None          # 0-based dose index, None = no MTD
    eliminated: list[bool]
    estimates: list[float | None]  # isotonic estimates of the admissible doses (None elsewhere)


def boin_select_mtd(target: float, n: Sequence[int], y: Sequence[int],
                    s: BoinSettings = _DEFAULT_BOIN) -> BoinMtd:
    """MTD as BOIN ``select.mtd``: elimination, PAVA of p̂, closest to the target with the j·1e-10 tie-breaker
    (ties below φ → higher dose, above φ → lower dose); with ``bound_mtd`` (boundMTD = TRUE) only among the doses
    whose estimate is below λd, and no MTD when none is."""
    k = len(n)
    elim = [False] * k
    for i in range(k):
        if n[i] >= s.elimination_min_treated and prob_above(target, y[i], n[i]) > s.elimination_cutoff:
            elim[i:] = [True] * (k - i)
            break
    est: list[float | None] = [None] * k
    adm = [i for i in range(k) if n[i] > 0 and not elim[i]]
    if elim[0] or not adm:
        return BoinMtd(None, elim, est)
    phat = [(y[i] + 0.05) / (n[i] + 0.1) for i in adm]
    var = [(y[i] + 0.05) * (n[i] - y[i] + 0.05) / ((n[i] + 0.1) ** 2 * (n[i] + 0.1 + 1)) for i in adm]
    iso = pava(phat, [1 / v for v in var])
    for j, i in enumerate(adm):
        est[i] = iso[j]
    ranked = [iso[j] + (j + 1) * 1e-10 for j in range(len(adm))]
    candidates = list(range(len(adm)))
    if s.bound_mtd:
        lam_d = boin_boundaries(target, s.phi1_factor, s.phi2_factor)[1]
        candidates = [j for j in candidates if ranked[j] < lam_d]
        if not candidates:
            return BoinMtd(None, elim, est)
    best = min(candidates, key=lambda j: (abs(ranked[j] - target), j))
    return BoinMtd(adm[best], elim, est)


# --- per dose level ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DltOutcome:
    """What escalation needs of one subject; ``pending``: not DLT-evaluable yet, still followed through the DLT
    window (:func:`fhir_adapter.derive.dlt.follow_up_pending`)."""

    arm: str | None
    infused: bool
    dlt: bool | None
    pending: bool = False


class DoseLevel(BaseModel):
    arm: str
    role: Literal["escalation", "expansion"]
    dose_level: str = Field(description="the dose level the arm runs at (itself for escalation arms)")
    n_treated: int
    n_dlt_evaluable: int
    n_dlt: int
    decision: str
    n_dlt_not_evaluable: int = Field(0, description="infused but not DLT-evaluable: replaced, never counted")


class Rp2d(BaseModel):
    arm: str | None
    method: str
    rationale: str


class Escalation(BaseModel):
    dose_levels: list[DoseLevel]
    rp2d: Rp2d
    boundaries: dict[str, float] | None = Field(None, description="BOIN λe/λd when BOIN is the method")


def _counts(subjects: Sequence[DltOutcome], arm: str) -> tuple[int, int, int]:
    mine = [s for s in subjects if s.arm == arm and s.infused]
    return len(mine), sum(1 for s in mine if s.dlt is not None), sum(1 for s in mine if s.dlt is True)


def _three_plus_three(levels: list[tuple[str, int, int, int]]) -> tuple[list[str], Rp2d]:
    """Decisions and RP2D under 3+3; ``levels`` = (arm, n_treated, n_evaluable, n_dlt), lowest first."""
    exceeds = [y >= 2 for _, _, _, y in levels]
    top = len(levels) - 1
    first_bad = next((i for i, e in enumerate(exceeds) if e), None)
    decisions = []
    for i, (_arm, nt, n, y) in enumerate(levels):
        nxt_exceeds = i < top and exceeds[i + 1]
        if n == 0 and nt == 0:
            dec = "not treated"
        elif y >= 2:
            dec = "exceeds MTD: de-escalate"
        elif first_bad is not None and i > first_bad:  # no subject is dosed above a level that exceeds the MTD
            dec = f"closed: {levels[first_bad][0]} exceeds MTD"
        elif n == 0:
            dec = "no DLT-evaluable subjects"
        elif n < 3:
            dec = f"cohort incomplete ({n}/3 evaluable)"
        elif n == 3 and y == 1:
            dec = "expand to 6"
        elif n == 3:
            dec = "expand to 6: next level exceeds MTD" if nxt_exceeds else (
                "highest level: MTD not reached" if i == top else "escalate")
        elif n < 6:
            dec = f"cohort incomplete ({n}/6 evaluable)"
        else:
            dec = "MTD" if nxt_exceeds else ("highest level: MTD not reached" if i == top else "escalate")
        decisions.append(dec)
    data = ", ".join(f"{a} {y}/{n}" for a, _, n, y in levels if n)
    rp2d = _three_plus_three_rp2d(levels, first_bad, data)
    if rp2d.arm is not None:
        # a lower level still to expand or complete can yet exceed the MTD, which would close the candidate
        k = next(i for i, lv in enumerate(levels) if lv[0] == rp2d.arm)
        open_ = [f"{levels[i][0]} {decisions[i]}" for i in range(k) if decisions[i].startswith(_UNSETTLED)]
        if open_:
            return decisions, Rp2d(arm=None, method=rp2d.method, rationale=(
                f"escalation ongoing: {'; '.join(open_)} — a lower level can still exceed the MTD; on the data so "
                f"far it would be {rp2d.arm}: {rp2d.rationale}"))
    return decisions, rp2d


#: 3+3 decisions of a level whose cohort is not settled: more subjects or data can still make it exceed the MTD
_UNSETTLED = ("expand to 6", "cohort incomplete", "no DLT-evaluable subjects")


def _three_plus_three_rp2d(levels: list[tuple[str, int, int, int]], first_bad: int | None, data: str) -> Rp2d:
    """The 3+3 RP2D from the counts (the MTD, or the highest level when none exceeds it); the caller checks that
    the levels below it are settled."""
    method = "3+3"
    if first_bad == 0:
        return Rp2d(arm=None, method=method,
                    rationale=f"the lowest level {levels[0][0]} exceeds the MTD ({data}): no RP2D")
    if first_bad is not None:
        arm, _, n, y = levels[first_bad - 1]
        above = levels[first_bad]
        if n >= 6:
            return Rp2d(arm=arm, method=method, rationale=(
                f"MTD = {arm} ({y}/{n} DLT); {above[0]} exceeds the MTD ({above[3]}/{above[2]} DLT). "
                f"Data: {data}"))
        return Rp2d(arm=None, method=method, rationale=(
            f"MTD not yet determined: {above[0]} exceeds the MTD, {arm} needs 6 evaluable subjects "
            f"({n} so far). Data: {data}"))
    top = len(levels) - 1
    n_top, y_top = levels[top][2], levels[top][3]
    if (n_top >= 6 and y_top <= 1) or (n_top == 3 and y_top == 0):
        return Rp2d(arm=levels[top][0], method=method, rationale=(
            f"MTD not reached: the highest level {levels[top][0]} was tested with {y_top}/{n_top} DLT; "
            f"RP2D = highest level tested. Data: {data}"))
    return Rp2d(arm=None, method=method, rationale=f"escalation ongoing. Data: {data or 'none'}")


def _boin(levels: list[tuple[str, int, int, int]], target: float,
          s: BoinSettings) -> tuple[list[str], Rp2d, dict[str, float]]:
    lam_e, lam_d = boin_boundaries(target, s.phi1_factor, s.phi2_factor)
    n = [lv[2] for lv in levels]
    y = [lv[3] for lv in levels]
    sel = boin_select_mtd(target, n, y, s)
    top = len(levels) - 1
    decisions = []
    for i, (_arm, nt, ni, yi) in enumerate(levels):
        if sel.eliminated[i] and ni:
            dec = "eliminated"
        elif ni == 0:
            dec = "no DLT-evaluable subjects" if nt else "not treated"
            dec = "eliminated" if sel.eliminated[i] else dec
        else:
            row = boin_row(ni, target, s)  # as BOIN get.oc: never to an eliminated level, nothing below the lowest
            if yi <= row.escalate_max:
                dec = ("stay: highest level" if i == top else
                       "stay: next level eliminated" if sel.eliminated[i + 1] else "escalate")
            elif yi >= row.deescalate_min:
                dec = "stay: lowest level (at the de-escalation boundary)" if i == 0 else "de-escalate"
            else:
                dec = "stay"
        decisions.append(dec)
    data = ", ".join(f"{a} {yy}/{nn}" for a, _, nn, yy in levels if nn)
    method = f"BOIN (target {target:g})"
    bounds = {"lambda_e": lam_e, "lambda_d": lam_d}
    if sel.index is None:
        why = ("the lowest level is eliminated" if sel.eliminated[0] else "no DLT-evaluable subjects"
               if not any(n) else f"every level's isotonic DLT estimate is at or above λd {lam_d:.4f}")
        rationale = f"no MTD: {why}. Data: {data or 'none'}"
        return decisions, Rp2d(arm=None, method=method, rationale=rationale), bounds
    est = sel.estimates[sel.index]
    assert est is not None
    arm, n_at = levels[sel.index][0], levels[sel.index][2]
    estimate = (f"isotonic DLT estimate {est:.3f} closest to the target {target:g} "
                f"(λe {lam_e:.4f}, λd {lam_d:.4f})")
    # dose finding is not over while the design escalates to a level nobody was evaluated at (and not
    # eliminated), nor while the selected level has fewer evaluable subjects than the setting asks
    untried = next((levels[i + 1][0] for i in range(top) if decisions[i] == "escalate" and levels[i + 1][2] == 0
                    and not sel.eliminated[i + 1]), None)
    if untried is not None:
        rationale = (f"escalation ongoing: BOIN escalates to {untried}, not yet evaluated; MTD estimate so far "
                     f"{arm} ({estimate}). Data: {data}")
        return decisions, Rp2d(arm=None, method=method, rationale=rationale), bounds
    if n_at < s.min_evaluable_at_mtd:
        rationale = (f"MTD not yet determined: the estimate {arm} ({estimate}) needs {s.min_evaluable_at_mtd} "
                     f"DLT-evaluable subjects ({n_at} so far). Data: {data}")
        return decisions, Rp2d(arm=None, method=method, rationale=rationale), bounds
    rationale = f"MTD = {arm}: {estimate}. Data: {data}"
    return decisions, Rp2d(arm=arm, method=method, rationale=rationale), bounds


def derive_escalation(subjects: Sequence[DltOutcome], settings: EscalationSettings) -> Escalation:
    """Per dose level counts and decision (escalation arms, then expansion arms) and the RP2D."""
    levels = [(arm, *_counts(subjects, arm)) for arm in settings.dose_levels]
    bounds = None
    if settings.method == "boin":
        decisions, rp2d, bounds = _boin(levels, settings.target_dlt_rate, settings.boin)
    else:
        decisions, rp2d = _three_plus_three(levels)
    rows = [DoseLevel(arm=a, role="escalation", dose_level=a, n_treated=nt, n_dlt_evaluable=n, n_dlt=y,
                      n_dlt_not_evaluable=nt - n, decision=dec)
            for (a, nt, n, y), dec in zip(levels, decisions, strict=True)]
    for arm, level in settings.expansion_arms.items():
        nt, n, y = _counts(subjects, arm)
        rows.append(DoseLevel(arm=arm, role="expansion", dose_level=level, n_treated=nt, n_dlt_evaluable=n,
                              n_dlt=y, n_dlt_not_evaluable=nt - n,
                              decision=f"expansion at {level}: not used for escalation decisions"))
    # the levels where a DLT still to come can change the MTD: all of them under BOIN (more data can lift an
    # elimination), under 3+3 those below the lowest level that exceeds the MTD (more DLTs cannot undo it, and
    # the levels above are closed)
    exceeding = next((i for i, (_, _, _, y) in enumerate(levels) if y >= 2), len(levels))
    open_levels = settings.dose_levels if settings.method == "boin" else settings.dose_levels[:exceeding]
    waiting = {arm: sum(1 for x in subjects if x.arm == arm and x.infused and x.dlt is None and x.pending)
               for arm in open_levels}
    waiting = {arm: k for arm, k in waiting.items() if k}
    if rp2d.arm is not None and waiting:  # a DLT still to come at any escalation level can change the MTD
        at = ", ".join(f"{k} at {arm}" for arm, k in waiting.items())
        rp2d = Rp2d(arm=None, method=rp2d.method, rationale=(
            f"RP2D pending: subjects still in their DLT window ({at}); on the data so far it would be "
            f"{rp2d.arm}: {rp2d.rationale}"))
    if rp2d.arm is not None:
        exp = [a for a, lv in settings.expansion_arms.items() if lv == rp2d.arm]
        others = sorted(set(settings.expansion_arms) - set(exp))
        if exp:
            rp2d = rp2d.model_copy(update={"rationale": f"{rp2d.rationale}. Expansion arm(s) "
                                           f"{', '.join(exp)} run at {rp2d.arm}"})
        if others:
            rp2d = rp2d.model_copy(update={"rationale": f"{rp2d.rationale}. Note: expansion arm(s) "
                                           f"{', '.join(others)} run at another level than the RP2D"})
    return Escalation(dose_levels=rows, rp2d=rp2d, boundaries=bounds)
