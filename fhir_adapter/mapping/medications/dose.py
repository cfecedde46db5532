"""Dose arithmetic: the dose or rate of a Dosage line and what it is in mg and mg/day.

``doseQuantity``; ``doseRange`` reduced to one number by ``range_choice``; ``rateQuantity``/``rateRatio``/
``rateRange`` (mass per time: a continuous infusion gives its mg/day; with ``Timing.repeat.duration`` the rate ×
duration is the dose of one administration). Mass units convert to mg by UCUM; tablet units — and a dose with
no unit (or ``1``), a count of units of presentation — convert by the strength of the identified drug
(docs/clinical-rules.md#dosage-arithmetic). Each problem comes back as (reason, fix) for the quarantine.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fhir_adapter.mapping.common import quantity_unit
from fhir_adapter.mapping.medications.timing import RangeChoice, duration_days, pick
from fhir_adapter.terminology import units

Problem = tuple[str, str]


def line_dose(line: dict[str, Any], choice: RangeChoice) -> tuple[float | None, str | None, bool]:
    """(value, unit, is_rate) of the first doseAndRate entry that carries a dose or a rate.

    >>> line_dose({"doseAndRate": [{"doseRange": {"low": {"value": 10, "code": "mg"},
    ...                                           "high": {"value": 20, "code": "mg"}}}]}, "high")
    (20.0, 'mg', False)
    """
    for dar in line.get("doseAndRate") or []:
        if not isinstance(dar, dict):
            continue
        if isinstance(dar.get("doseQuantity"), dict) and dar["doseQuantity"].get("value") is not None:
            q = dar["doseQuantity"]
            return float(q["value"]), quantity_unit(q), False
        if isinstance(dar.get("doseRange"), dict):
            lo, hi = dar["doseRange"].get("low") or {}, dar["doseRange"].get("high") or {}
            value = pick(lo.get("value"), hi.get("value"), choice)
            if value is not None:
                return float(value), quantity_unit(hi) or quantity_unit(lo), False
        if isinstance(dar.get("rateQuantity"), dict) and dar["rateQuantity"].get("value") is not None:
            q = dar["rateQuantity"]
            return float(q["value"]), quantity_unit(q), True
        if isinstance(dar.get("rateRatio"), dict):
            num, den = dar["rateRatio"].get("numerator") or {}, dar["rateRatio"].get("denominator") or {}
            if num.get("value") is not None and den.get("value"):
                unit = (
                    f"{quantity_unit(num)}/{quantity_unit(den)}"
                    if float(den["value"]) == 1
                    else f"{quantity_unit(num)}/({den['value']}.{quantity_unit(den)})"
                )
                return float(num["value"]), unit, True
        if isinstance(dar.get("rateRange"), dict):
            lo, hi = dar["rateRange"].get("low") or {}, dar["rateRange"].get("high") or {}
            value = pick(lo.get("value"), hi.get("value"), choice)
            if value is not None:
                return float(value), quantity_unit(hi) or quantity_unit(lo), True
    return None, None, False


def mass_mg(value: float, unit: str | None) -> float | None:
    """``value unit`` in mg, None when the unit is not a mass.

    >>> mass_mg(0.5, "g"), mass_mg(2, "{tbl}")
    (500.0, None)
    """
    if unit is None:
        return None
    try:
        return units.convert(value, unit, "mg")
    except units.UnitError:
        return None


def dose_mg(
    value: float, unit: str | None, strength_mg: float | None, tablet_units: Collection[str]
) -> tuple[float | None, Problem | None]:
    """A dose in mg: a mass converted, or a count of tablets (units of presentation) × ``strength_mg``."""
    if unit in tablet_units or (unit in (None, "1") and strength_mg is not None):
        if strength_mg is None:
            return None, (
                f"dose {value} {unit} in tablets, and the tablet strength is unknown",
                "send the SCD code, a Medication with ingredient.strength, or add strength_mg to "
                "the drug's code in medications.yaml",
            )
        return float(f"{value * strength_mg:.10g}"), None
    mg = mass_mg(value, unit)
    if mg is None:
        return None, (
            f"dose {value} {unit or '(no unit)'} is not a mass",
            "send the dose in mg (UCUM), or in tablets with a known strength",
        )
    return mg, None


def rate_daily(
    rate: float, unit: str | None, timing: dict[str, Any], per_day: float | None, period_days: dict[str, float]
) -> tuple[float | None, float | None, Problem | None]:
    """(mg/day, administrations/day, problem) of a rate; continuous unless repeat.duration is given."""
    try:
        mg_day = units.convert(rate, unit or "", "mg/d")
    except units.UnitError:
        return (
            None,
            per_day,
            (
                f"rate {rate} {unit or '(no unit)'} is not a mass per time",
                "send rateQuantity in a mass per time unit such as mg/h",
            ),
        )
    rep = timing.get("repeat") or {}
    length = duration_days({"value": rep.get("duration"), "code": rep.get("durationUnit") or "h"}, period_days)
    if length is not None and per_day is not None:
        return float(f"{mg_day * length * per_day:.10g}"), per_day, None
    return float(f"{mg_day:.10g}"), None, None
