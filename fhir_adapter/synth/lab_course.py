"""Lab values of one subject of any study, by study day, in each analyte's canonical unit (lab_catalog).

A subject has a response class drawn by the plan — ``complete``, ``partial`` or ``none`` — and every analyte
with a course below moves from a baseline drawn in its "active disease" range towards a target that depends
on that class, exponentially with a time constant drawn per subject (days after Day 1). Analytes without a
course here are drawn inside the lab's reference range at every visit. Nothing here knows a study: which
analytes are drawn comes from the study's items (``study_feed``).

The shapes are those of treated lupus nephritis: proteinuria falling over months (below 0.5 g/g in complete
responders, by half but not below 0.5 in partial responders, barely in non-responders), complement rising
and anti-dsDNA falling in responders, eGFR stable in responders and drifting down in some non-responders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random

from .lab_catalog import ANALYTES, SEX_RANGES

RESPONSES: tuple[str, ...] = ("complete", "partial", "none")
#: share of subjects per response class (complete, partial, none)
RESPONSE_SHARES: tuple[float, ...] = (0.45, 0.30, 0.25)


@dataclass(frozen=True, slots=True)
class AnalyteCourse:
    """Baseline range, and the target as a fraction of baseline (lo, hi) per response class; ``floor``: the
    target is never below it (canonical unit); ``cap``: nor above it."""

    baseline: tuple[float, float]
    complete: tuple[float, float]
    partial: tuple[float, float]
    none: tuple[float, float]
    tau: tuple[float, float] = (40.0, 90.0)
    noise: float = 0.06
    floor: float = 0.0
    cap: float = math.inf


#: analyte key -> its course (canonical units; targets are fractions of the baseline)
COURSES: dict[str, AnalyteCourse] = {
    "upcr": AnalyteCourse((1.2, 4.5), complete=(0.05, 0.12), partial=(0.25, 0.45), none=(0.75, 1.05),
                          noise=0.10, floor=0.08),
    "protein_24h": AnalyteCourse((1.3, 5.0), complete=(0.05, 0.12), partial=(0.25, 0.45), none=(0.75, 1.05),
                                 noise=0.10, floor=0.08),
    "egfr": AnalyteCourse((50.0, 105.0), complete=(1.0, 1.12), partial=(0.95, 1.05), none=(0.70, 0.95),
                          tau=(60.0, 150.0), noise=0.03, cap=120.0),
    "c3": AnalyteCourse((0.45, 0.80), complete=(1.5, 2.1), partial=(1.2, 1.6), none=(0.95, 1.15), cap=1.6),
    "c4": AnalyteCourse((0.04, 0.09), complete=(2.0, 3.5), partial=(1.4, 2.2), none=(0.9, 1.2), cap=0.35),
    "ch50": AnalyteCourse((18.0, 36.0), complete=(1.8, 2.4), partial=(1.3, 1.8), none=(0.9, 1.2), cap=90.0),
    # a B-cell-depleting study drug: CD19+ B cells fall within days in every class, least in non-responders
    "cd19": AnalyteCourse((60.0, 400.0), complete=(0.0, 0.004), partial=(0.0, 0.02), none=(0.02, 0.3),
                          tau=(3.0, 10.0), noise=0.15),
    "dsdna": AnalyteCourse((60.0, 400.0), complete=(0.03, 0.12), partial=(0.15, 0.40), none=(0.6, 1.0),
                           noise=0.08, floor=2.0),
}
#: serum creatinine follows eGFR inversely: eGFR ~ creatinine^-1.2 (CKD-EPI 2021 above the knot)
CREATININE_EXPONENT = -1 / 1.2


@dataclass(frozen=True, slots=True)
class Trajectory:
    base: float
    target: float
    tau: float
    noise: float

    def at(self, study_day: int) -> float:
        if study_day <= 1:
            return self.base
        return self.target + (self.base - self.target) * math.exp(-(study_day - 1) / self.tau)


class LabCourse:
    """One subject's lab values: ``value(key, study_day, rng)`` in the analyte's canonical unit."""

    def __init__(self, rng: Random, response: str, sex: str, keys: tuple[str, ...]) -> None:
        self.response = response
        self.sex = sex
        self.paths: dict[str, Trajectory] = {}
        for key in keys:
            course = COURSES.get(key)
            if course is None:
                continue
            base = rng.uniform(*course.baseline)
            lo, hi = getattr(course, response)
            target = min(max(base * rng.uniform(lo, hi), course.floor), max(course.cap, base))
            self.paths[key] = Trajectory(base, target, rng.uniform(*course.tau), course.noise)
        self.creatinine_base = rng.uniform(0.8, 1.6) * (1.15 if sex == "male" else 1.0)

    def value(self, key: str, study_day: int, rng: Random) -> float:
        path = self.paths.get(key)
        if path is not None:
            return max(0.0, path.at(study_day) * (1.0 + path.noise * (rng.random() - 0.5) * 2))
        if key == "creatinine" and "egfr" in self.paths:
            egfr = self.paths["egfr"]
            ratio = egfr.at(study_day) / egfr.base
            return float(self.creatinine_base * ratio ** CREATININE_EXPONENT * (1.0 + 0.04 * (rng.random() - 0.5)))
        low, high = SEX_RANGES.get((key, self.sex), (ANALYTES[key].low, ANALYTES[key].high))
        lo = low if low is not None else 0.0
        hi = high if high is not None else (lo * 2 if lo else 1.0)
        return rng.uniform(lo, hi)


def draw_response(rng: Random) -> str:
    return rng.choices(RESPONSES, weights=RESPONSE_SHARES)[0]
