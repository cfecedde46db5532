"""How often and for how long: administrations per day of a FHIR ``Timing`` and the days of a Duration.

``Timing.repeat``: frequency (``frequencyMax`` by ``range_choice``; else the number of ``timeOfDay`` or
``when`` entries; else 1) / (period × ``period_days[periodUnit]``), times *k*/7 when ``dayOfWeek`` lists *k*
days of a daily schedule; else ``Timing.code`` via ``timing_codes``. A fixed interval in hours (one
administration per period of N h, or the code Q<N>H) is kept beside it as the interval, which CDISC names
(CMDOSFRQ Q4H is not "6 TIMES PER DAY").
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fhir_adapter.mapping.common import codings
from fhir_adapter.mapping.medications.settings import MedicationSettings

RangeChoice = Literal["high", "mid", "low"]


def pick(low: float | None, high: float | None, choice: RangeChoice) -> float | None:
    """One number of a range: its ``high``, ``low`` or ``mid`` end; the end that is there when one is missing.

    >>> pick(10, 20, "mid"), pick(None, 20, "low"), pick(10, None, "high")
    (15.0, 20, 10)
    """
    if low is None or high is None:
        return high if low is None else low
    return {"high": high, "low": low, "mid": (low + high) / 2}[choice]


def duration_days(duration: Any, period_days: dict[str, float]) -> float | None:
    """Days of a FHIR Duration (``code``, else ``unit``, else days); None without a value or a known unit.

    >>> duration_days({"value": 2, "code": "wk"}, {"d": 1, "wk": 7})
    14.0
    """
    if not isinstance(duration, dict) or duration.get("value") is None:
        return None
    unit = str(duration.get("code") or duration.get("unit") or "d")
    unit = {"day": "d", "days": "d", "week": "wk", "weeks": "wk", "month": "mo", "months": "mo"}.get(unit, unit)
    factor = period_days.get(unit)
    return float(duration["value"]) * factor if factor is not None else None


def frequency_per_day(timing: dict[str, Any], s: MedicationSettings) -> float | None:
    """Administrations per day of a FHIR ``Timing`` (None when it says nothing about frequency)."""
    rep = timing.get("repeat") or {}
    if any(rep.get(k) for k in ("frequency", "period", "timeOfDay", "when", "dayOfWeek")):
        unit = str(rep.get("periodUnit") or "d")
        unit_days = s.period_days.get(unit)
        if unit_days is None:
            return None
        dow = set(rep.get("dayOfWeek") or [])
        if rep.get("frequency"):
            freq = pick(rep["frequency"], rep.get("frequencyMax"), s.range_choice) or rep["frequency"]
        elif rep.get("timeOfDay"):
            freq = len(rep["timeOfDay"])
        elif rep.get("when"):
            freq = len(rep["when"])
        elif dow and unit_days >= 7:
            freq = len(dow)
        else:
            freq = 1
        period = rep.get("period") or 1
        if rep.get("periodMax"):
            # a longer period is the less frequent schedule: "high" takes the shorter one
            lo, hi = sorted((float(period), float(rep["periodMax"])))
            period = {"high": lo, "low": hi, "mid": (lo + hi) / 2}[s.range_choice]
        per_day = float(freq) / (float(period) * unit_days)
        if dow and unit_days < 7:
            per_day *= len(dow) / 7
        return per_day
    cc = timing.get("code")
    if not isinstance(cc, dict):
        return None
    for _, code in codings(cc):
        if code.upper() in s.timing_codes:
            return s.timing_codes[code.upper()]
    text = str(cc.get("text") or "").strip().upper()
    return s.timing_codes.get(text)


_EVERY_N_HOURS = re.compile(r"Q(\d+)H")


def interval_hours(timing: dict[str, Any]) -> float | None:
    """Hours between administrations when ``timing`` is a fixed interval: ``repeat`` of one administration per
    period of N hours (no range, times of day, events or weekdays), else a ``Timing.code`` (a coding or the text)
    Q<N>H; None otherwise.

    >>> interval_hours({"repeat": {"frequency": 1, "period": 4, "periodUnit": "h"}})
    4.0
    >>> interval_hours({"code": {"text": "q6h"}}), interval_hours({"repeat": {"frequency": 2, "periodUnit": "d"}})
    (6.0, None)
    """
    rep = timing.get("repeat") or {}
    if any(rep.get(k) for k in ("frequency", "period", "timeOfDay", "when", "dayOfWeek")):
        hours = {"h": 1.0, "min": 1 / 60}.get(str(rep.get("periodUnit")))  # a period in days is a count (QD, QOD)
        fixed = (hours is not None and rep.get("period") and not rep.get("periodMax")
                 and (rep.get("frequency") or 1) == 1 and (rep.get("frequencyMax") or 1) == 1
                 and not any(rep.get(k) for k in ("timeOfDay", "when", "dayOfWeek")))
        return float(f"{float(rep['period']) * hours:.10g}") if fixed and hours is not None else None
    cc = timing.get("code")
    if not isinstance(cc, dict):
        return None
    for value in [code for _, code in codings(cc)] + [str(cc.get("text") or "")]:
        m = _EVERY_N_HOURS.fullmatch(value.strip().upper())
        if m:
            return float(m.group(1))
    return None
