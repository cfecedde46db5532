"""Canonical-unit value of each lab item for a subject's disease course on a study day (with assay noise)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date
from random import Random

from .course import DiseaseCourse

ValueModel = Callable[[DiseaseCourse, int, date, Random], float]


def _noise(rng: Random, cv: float) -> float:
    return 1.0 + cv * (2.0 * rng.random() - 1.0)


def _toward(base: float, target: float, tau: float, sd: int) -> float:
    """Exponential approach from base (up to Day 1) to target after the infusion."""
    t = sd - 1
    return base if t <= 0 else target + (base - target) * math.exp(-t / tau)


def _tracked(name: str, cv: float) -> ValueModel:
    def model(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
        p: tuple[float, float, float] = getattr(c, name)
        return _toward(p[0], p[1], p[2], sd) * _noise(rng, cv)

    return model


def _wbc(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return (_neut(c, sd, _d, rng) + _lymph(c, sd, _d, rng)
            + c.other_wbc.base * c.other_wbc.factor(sd) * _noise(rng, 0.08))


def _neut(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return c.neutrophils.base * c.neutrophils.factor(sd) * _noise(rng, 0.08)


def _lymph(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    car = c.kinetics.cells(sd - 1, 0.0) / 1000.0 if sd >= 1 else 0.0
    return c.lymphocytes.base * c.lymphocytes.factor(sd) * _noise(rng, 0.08) + car


def _plt(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return c.platelets.base * c.platelets.factor(sd) * _noise(rng, 0.07)


def _hb(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return c.hemoglobin.base * c.hemoglobin.factor(sd) * _noise(rng, 0.03)


def _creatinine(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    base, change = c.creatinine
    frac = min(1.0, max(0.0, (sd - 1) / 180.0))
    return base * (1.0 + change * frac) * _noise(rng, 0.05)


def egfr_ckd_epi_2021(creatinine: float, age: int, female: bool) -> float:
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine / kappa
    value = float(142.0 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.200 * 0.9938**age)
    return value * 1.012 if female else value


def _upcr(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    base, floor, tau = c.upcr
    return _toward(base, floor, tau, sd) * _noise(rng, 0.10)


def _protein_24h(c: DiseaseCourse, sd: int, d: date, rng: Random) -> float:
    return _upcr(c, sd, d, rng) * c.creatinine_excretion * _noise(rng, 0.06)


def _urine_rbc(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return float(rng.randint(8, 45) if c.active("hematuria", sd) else rng.randint(0, 2))


def _urine_wbc(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return float(rng.randint(6, 20) if c.active("pyuria", sd) else rng.randint(0, 4))


def _casts(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return float(rng.randint(1, 4) if c.active("urinary-casts", sd) else 0)


def _anti_sm(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    base, left = c.anti_sm
    frac = min(1.0, max(0.0, (sd - 1) / 365.0))
    return base * (1.0 - (1.0 - left) * frac) * _noise(rng, 0.1)


def _ig(index: int) -> ValueModel:
    def model(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
        base, depth = (c.igg, c.iga, c.igm)[index]
        t = sd - 1
        if t <= 0:
            dip = 0.0
        elif t <= 90:
            dip = t / 90.0
        else:
            dip = max(0.4, 1.0 - 0.6 * (t - 90) / 270.0)
        return base * (1.0 - depth * dip) * _noise(rng, 0.05)

    return model


def _cd19(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    base, recovered, day = c.cd19
    if sd < 1:
        return base * _noise(rng, 0.15)
    if sd < day:
        return 0.4 * rng.random()
    return recovered * (1.0 - math.exp(-(sd - day) / 45.0)) * _noise(rng, 0.1) + 0.4 * rng.random()


def _crs_bump(c: DiseaseCourse, sd: int, scale: float) -> float:
    total = 0.0
    for onset, _end, grade in c.crs:
        peak = onset + 1
        if sd < onset - 1:
            continue
        width = 1.5 if sd < peak else 3.0
        total += scale * (1.0 + 0.6 * (grade - 1)) * math.exp(-abs(sd - peak) / width)
    return total


def _crp(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return (c.inflammation[0] + _crs_bump(c, sd, 90.0)) * _noise(rng, 0.1)


def _ferritin(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return (c.inflammation[1] + _crs_bump(c, sd, 900.0)) * _noise(rng, 0.1)


def _il6(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return (c.inflammation[2] + _crs_bump(c, sd, 80.0)) * _noise(rng, 0.15)


def _crs_grade_on(c: DiseaseCourse, sd: int) -> int:
    return max((g for onset, end, g in c.crs if onset <= sd <= end), default=0)


def _temperature(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    if _crs_grade_on(c, sd):
        return 38.2 + 1.4 * rng.random()
    return c.temperature + 0.4 * (rng.random() - 0.5)


def _weight(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    drift = -1.5 * min(1.0, max(0.0, (sd - 1) / 200.0)) if c.responder else 0.0
    return c.weight + drift + 0.6 * (rng.random() - 0.5)


def _spo2(c: DiseaseCourse, sd: int, _d: date, rng: Random) -> float:
    return float(rng.randint(92, 95) if _crs_grade_on(c, sd) >= 2 else rng.randint(95, 99))


VALUE_MODELS: dict[str, ValueModel] = {
    "leukocytes": _wbc, "neutrophils": _neut, "lymphocytes": _lymph, "platelets": _plt, "hemoglobin": _hb,
    "creatinine": _creatinine, "upcr": _upcr, "protein_24h": _protein_24h, "urine_rbc": _urine_rbc,
    "urine_wbc": _urine_wbc, "rbc_casts": _casts, "granular_casts": _casts,
    "c3": _tracked("c3", 0.04), "c4": _tracked("c4", 0.05), "ch50": _tracked("ch50", 0.06),
    "dsdna": _tracked("dsdna", 0.08), "anti_sm": _anti_sm, "igg": _ig(0), "iga": _ig(1), "igm": _ig(2),
    "cd19": _cd19, "crp": _crp, "ferritin": _ferritin, "il6": _il6, "temperature": _temperature,
    "weight": _weight, "spo2": _spo2,
}


def crs_grade_on(c: DiseaseCourse, sd: int) -> int:
    return _crs_grade_on(c, sd)
