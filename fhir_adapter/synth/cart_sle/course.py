"""One subject's disease course after LCAR-AIO: SLE activity, serology, kidney, blood counts, B cells,
immunoglobulins, inflammation during CRS, vital signs and PGA, as canonical-unit values by study day.

The shape follows published CD19/BCMA CAR-T experience in SLE: lymphodepletion cytopenias in the first
weeks, B-cell aplasia with recovery around weeks 12-36, complement normalising and anti-dsDNA falling over
months, most subjects inactive by week 12-24, a few non-responders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from random import Random

from .kinetics import Kinetics, draw_kinetics

#: SLEDAI-2K weights (Gladman 2002)
SLEDAI_WEIGHTS: dict[str, int] = {
    "seizure": 8, "psychosis": 8, "organic-brain-syndrome": 8, "visual-disturbance": 8,
    "cranial-nerve-disorder": 8, "lupus-headache": 8, "cva": 8, "vasculitis": 8, "arthritis": 4,
    "myositis": 4, "urinary-casts": 4, "hematuria": 4, "proteinuria": 4, "pyuria": 4, "rash": 2,
    "alopecia": 2, "mucosal-ulcers": 2, "pleurisy": 2, "pericarditis": 2, "low-complement": 2,
    "increased-dna-binding": 2, "fever": 1, "thrombocytopenia": 1, "leukopenia": 1,
}
#: clinical features at baseline: descriptor, prevalence, day range (after Day 1) it resolves in responders
CLINICAL_FEATURES: tuple[tuple[str, float, tuple[int, int]], ...] = (
    ("arthritis", 0.70, (20, 90)),
    ("rash", 0.60, (30, 120)),
    ("alopecia", 0.35, (60, 150)),
    ("mucosal-ulcers", 0.35, (10, 60)),
    ("pleurisy", 0.10, (10, 40)),
    ("pericarditis", 0.05, (10, 40)),
    ("vasculitis", 0.07, (20, 60)),
    ("myositis", 0.04, (30, 90)),
    ("lupus-headache", 0.02, (10, 30)),
)
#: renal sediment features in lupus-nephritis subjects (proteinuria is always present in LN)
RENAL_FEATURES: tuple[tuple[str, float, tuple[int, int]], ...] = (
    ("hematuria", 0.75, (30, 150)),
    ("pyuria", 0.35, (20, 90)),
    ("urinary-casts", 0.40, (20, 90)),
)
#: features added (in this order of preference) when the baseline score is below the drawn target
TOP_UP_FEATURES: tuple[str, ...] = ("arthritis", "rash", "mucosal-ulcers", "alopecia", "pleurisy")
#: features dropped first when the baseline score is above 20
TRIM_FEATURES: tuple[str, ...] = ("pyuria", "urinary-casts", "pericarditis", "pleurisy", "alopecia",
                                  "vasculitis", "myositis", "lupus-headache")
BASELINE_SLEDAI_RANGE = (10, 20)
PERSISTENT = 100_000           # "never resolves" day
FLARE_SHARE = 0.10             # responders with a later arthritis/rash flare


@dataclass(slots=True)
class Haem:
    """One blood-count series: baseline, lymphodepletion nadir (fraction, study day), recovery."""

    base: float
    nadir_frac: float
    nadir_day: int
    recovery_start: int
    recovery_tau: float

    def factor(self, sd: int) -> float:
        if sd < -4:
            return 1.0
        if sd <= self.nadir_day:
            return 1.0 - (1.0 - self.nadir_frac) * (sd + 4) / (self.nadir_day + 4)
        if sd <= self.recovery_start:
            return self.nadir_frac
        return self.nadir_frac + (1.0 - self.nadir_frac) * (1.0 - math.exp(-(sd - self.recovery_start)
                                                                            / self.recovery_tau))

    def nadir(self) -> float:
        return self.base * self.nadir_frac


@dataclass(slots=True)
class DiseaseCourse:
    sex: str
    birth_date: date
    responder: bool
    ln: bool
    features: dict[str, list[tuple[int, int]]]   # descriptor -> active [start, end) study-day intervals
    low_complement: bool
    high_dsdna: bool
    c3: tuple[float, float, float]               # base, target, tau (days)
    c4: tuple[float, float, float]
    ch50: tuple[float, float, float]
    dsdna: tuple[float, float, float]
    anti_sm: tuple[float, float]                 # base, fraction left at one year
    ana_turns_negative: bool
    upcr: tuple[float, float, float]             # base, floor, tau
    creatinine_excretion: float                  # g/day: 24-h protein = UPCR * this
    creatinine: tuple[float, float]              # base, relative change by 6 months
    neutrophils: Haem
    lymphocytes: Haem
    other_wbc: Haem
    platelets: Haem
    hemoglobin: Haem
    igg: tuple[float, float]                     # base, depth of the post-CAR-T dip
    iga: tuple[float, float]
    igm: tuple[float, float]
    cd19: tuple[float, float, int]               # baseline, recovered level, recovery day
    inflammation: tuple[float, float, float]     # baseline CRP, ferritin, IL-6
    temperature: float
    weight: float
    height: float
    systolic: float
    pga: tuple[float, float, float]              # base, floor, tau
    kinetics: Kinetics
    anti_car_positive_from: int                  # study day anti-CAR antibodies appear (PERSISTENT: never)
    flare: tuple[int, int] | None
    crs: list[tuple[int, int, int]] = field(default_factory=list)   # (onset, end study day, grade)
    forced: dict[tuple[str, str], float] = field(default_factory=dict)  # (visit, item) -> canonical value

    def active(self, descriptor: str, sd: int) -> bool:
        return any(a <= sd < b for a, b in self.features.get(descriptor, ()))

    def baseline_sledai(self) -> int:
        lab = {"low-complement": self.low_complement, "increased-dna-binding": self.high_dsdna,
               "proteinuria": self.ln}
        score = sum(SLEDAI_WEIGHTS[d] for d in self.features if self.active(d, -7))
        return score + sum(SLEDAI_WEIGHTS[d] for d, on in lab.items() if on and d not in self.features)

    def age_on(self, d: date) -> int:
        return d.year - self.birth_date.year - ((d.month, d.day) < (self.birth_date.month, self.birth_date.day))


def _u(rng: Random, lo: float, hi: float) -> float:
    return lo + (hi - lo) * rng.random()


def _features(rng: Random, ln: bool, responder: bool) -> dict[str, list[tuple[int, int]]]:
    resolve: dict[str, int] = {}
    for name, share, (lo, hi) in CLINICAL_FEATURES:
        if rng.random() < share:
            resolve[name] = rng.randint(lo, hi)
    if ln:
        for name, share, (lo, hi) in RENAL_FEATURES:
            if rng.random() < share:
                resolve[name] = rng.randint(lo, hi)
    target = rng.randint(*BASELINE_SLEDAI_RANGE)
    fixed = 4 + (4 if ln else 0)   # serology (usually) + proteinuria in LN

    def score() -> int:
        return fixed + sum(SLEDAI_WEIGHTS[d] for d in resolve)

    for name in TOP_UP_FEATURES:
        if score() >= target:
            break
        if name not in resolve:
            lo, hi = next(r for n, _, r in CLINICAL_FEATURES if n == name)
            resolve[name] = rng.randint(lo, hi)
    for name in TRIM_FEATURES:
        if score() <= BASELINE_SLEDAI_RANGE[1]:
            break
        resolve.pop(name, None)
    if not responder:   # activity persists in one or two clinical features (and the kidney)
        keep = [d for d in ("arthritis", "rash") if d in resolve] or ["arthritis"]
        for d in keep[: rng.randint(1, 2)]:
            resolve[d] = PERSISTENT
        if "hematuria" in resolve:
            resolve["hematuria"] = PERSISTENT
    return {d: [(-PERSISTENT, end)] for d, end in resolve.items()}


def _haem(rng: Random, base: float, nadir: tuple[float, float], nadir_day: tuple[int, int],
          lag: tuple[int, int], tau: tuple[float, float]) -> Haem:
    nd = rng.randint(*nadir_day)
    return Haem(base, _u(rng, *nadir), nd, nd + rng.randint(*lag), _u(rng, *tau))


def draw_course(rng: Random, *, sex: str, birth_date: date, ln: bool, responder: bool, dose_per_kg: float
                ) -> DiseaseCourse:
    male = sex == "male"
    features = _features(rng, ln, responder)
    low_c = rng.random() < (0.95 if ln else 0.85)
    high_ds = rng.random() < 0.85
    if responder:
        c3 = (_u(rng, 0.45, 0.80), _u(rng, 0.95, 1.30), _u(rng, 25, 60))
        c4 = (_u(rng, 0.04, 0.085), _u(rng, 0.13, 0.30), _u(rng, 25, 60))
        ch50 = (_u(rng, 18, 36), _u(rng, 50, 75), _u(rng, 25, 60))
        ds = (_u(rng, 60, 450), _u(rng, 2, 11), _u(rng, 30, 70))
        pga = (_u(rng, 1.6, 2.6), _u(rng, 0.1, 0.7), _u(rng, 25, 50))
    else:
        c3 = (_u(rng, 0.45, 0.80), _u(rng, 0.65, 0.85), _u(rng, 40, 90))
        c4 = (_u(rng, 0.04, 0.085), _u(rng, 0.06, 0.09), _u(rng, 40, 90))
        ch50 = (_u(rng, 18, 36), _u(rng, 30, 40), _u(rng, 40, 90))
        ds = (_u(rng, 80, 450), _u(rng, 45, 120), _u(rng, 40, 90))
        pga = (_u(rng, 1.8, 2.6), _u(rng, 1.2, 1.9), _u(rng, 30, 60))
    if not low_c:
        c3 = (_u(rng, 0.95, 1.35),) * 2 + (50.0,)
        c4 = (_u(rng, 0.13, 0.32),) * 2 + (50.0,)
        ch50 = (_u(rng, 48, 80),) * 2 + (50.0,)
    if not high_ds:
        ds = (_u(rng, 2, 10),) * 2 + (50.0,)
    if ln:
        base = _u(rng, 0.9, 4.0)
        upcr = (base, _u(rng, 0.08, 0.25), _u(rng, 45, 110)) if responder else (base, _u(rng, 0.8, 1.6), 60.0)
        creat = (_u(rng, 0.8, 1.5) * (1.2 if male else 1.0), -0.1 if responder else 0.05)
    else:
        upcr = (_u(rng, 0.06, 0.18),) * 2 + (50.0,)
        creat = (_u(rng, 0.55, 0.9) * (1.25 if male else 1.0), 0.0)
    baseline_leukopenia = rng.random() < 0.08
    neut_base = _u(rng, 1.3, 1.8) if baseline_leukopenia else _u(rng, 2.2, 5.0)
    lymph_base = _u(rng, 0.5, 0.8) if baseline_leukopenia else _u(rng, 0.8, 1.8)
    plt_base = _u(rng, 75, 95) if rng.random() < 0.04 else _u(rng, 170, 320)
    flare = None
    if responder and rng.random() < FLARE_SHARE:
        start = rng.randint(300, 600)
        flare = (start, start + rng.randint(40, 90))
        features.setdefault("arthritis", []).append(flare)
    return DiseaseCourse(
        sex=sex, birth_date=birth_date, responder=responder, ln=ln, features=features,
        low_complement=low_c, high_dsdna=high_ds, c3=c3, c4=c4, ch50=ch50, dsdna=ds,
        anti_sm=(_u(rng, 20, 200), _u(rng, 0.4, 0.8)) if rng.random() < 0.3 else (_u(rng, 0.3, 3.5), 1.0),
        ana_turns_negative=responder and rng.random() < 0.25,
        upcr=upcr, creatinine_excretion=_u(rng, 0.85, 1.2), creatinine=creat,
        neutrophils=_haem(rng, neut_base, (0.03, 0.3), (4, 8), (3, 8), (4.0, 9.0)),
        lymphocytes=_haem(rng, lymph_base, (0.05, 0.15), (-1, 3), (4, 10), (20.0, 40.0)),
        other_wbc=_haem(rng, _u(rng, 0.3, 0.7), (0.2, 0.4), (4, 8), (3, 8), (4.0, 9.0)),
        platelets=_haem(rng, plt_base, (0.25, 0.6), (7, 14), (2, 6), (7.0, 14.0)),
        hemoglobin=_haem(rng, _u(rng, 10.5, 13.5) + (1.2 if male else 0.0), (0.82, 0.92), (8, 14), (2, 6),
                         (15.0, 30.0)),
        igg=(_u(rng, 8.0, 15.0), _u(rng, 0.2, 0.4)), iga=(_u(rng, 1.0, 3.2), _u(rng, 0.1, 0.3)),
        igm=(_u(rng, 0.5, 1.6), _u(rng, 0.4, 0.7)),
        cd19=(_u(rng, 20, 250), _u(rng, 80, 350),
              rng.randint(100, 250) if responder and rng.random() < 0.9 else
              (400 if responder else rng.randint(60, 150))),
        inflammation=(_u(rng, 0.5, 6.0), _u(rng, 40, 250), _u(rng, 1.5, 6.0)),
        temperature=_u(rng, 36.4, 36.9), weight=_u(rng, 52, 88) + (12 if male else 0),
        height=_u(rng, 155, 178) + (12 if male else 0), systolic=_u(rng, 108, 132) + (8 if ln else 0),
        pga=pga, kinetics=draw_kinetics(rng, dose_per_kg),
        anti_car_positive_from=rng.randint(80, 200) if rng.random() < 0.1 else PERSISTENT,
        flare=flare,
    )
