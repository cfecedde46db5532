"""Safety result Observations of one subject (scope ``subject`` in the identifier).

* ``dlt`` — ``valueBoolean`` (a DLT in the DLT window), sources (``result-source`` extensions) the infusion
  Procedure and the AdverseEvents evaluated (those that could fall in the window, the DLTs among them), the
  method text naming the window's dates and how many AEs were considered, so a "no DLT" says what it was
  judged from; ``effectiveDateTime`` = the last day of the DLT window. Written only where the evaluation is
  true or false (a "not evaluable" subject has none).
* ``cart-cmax`` — ``valueQuantity`` in ``{copies}/ug{DNA}`` (UCUM), effective on the day of Cmax;
* ``cart-tmax`` — ``valueQuantity`` in ``d`` (fractional days after the infusion), effective on the day of Cmax;
* ``cart-auc0-28d`` — ``valueQuantity`` in ``{copies}/ug{DNA}.d``, effective on day 28 after the infusion.
  The kinetics Observations are derived from the transgene (PC) Observations used, and written only
  where the value is not None.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fhir_adapter.derive.dlt import DltResult, DltSettings
from fhir_adapter.derive.kinetics import Kinetics, KineticsSettings
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.timeline import date_of_study_day
from fhir_adapter.terminology.codes import UCUM
from fhir_adapter.version import __version__
from fhir_adapter.writeback.identifiers import SUBJECT_SCOPE
from fhir_adapter.writeback.observations import result_observation

SCOPE = SUBJECT_SCOPE
TRANSGENE_UNIT = "{copies}/ug{DNA}"


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def dlt_observations(d: DltResult, e: Enrollee, study_id: str, s: DltSettings, day1: dt.date | None,
                     ) -> list[dict[str, Any]]:
    """The ``dlt`` Observation of one subject (only where the evaluation is true or false)."""
    if d.dlt is None or day1 is None:
        return []
    w = s.window
    rules = ", ".join(sorted({ev.rule for ev in d.dlt_events})) or "none met"
    window = f"{date_of_study_day(w.first_day, day1)} to {date_of_study_day(w.last_day, day1)}"
    judged = f"{len(d.evaluated)} adverse event(s) considered" if d.evaluated else "no adverse event in the window"
    method = (f"DLT rules of dlt.yaml (onset study days {w.first_day}-{w.last_day}, {window}; CTCAE v5.0, "
              f"ASTCT 2019 CRS/ICANS); rules met: {rules}; judged from the infusion "
              f"{e.infusion.reference if e.infusion else '(unknown)'} and {judged}; fhir-adapter {__version__}")
    sources = [*([e.infusion.reference] if e.infusion else []), *d.evaluated]
    return [result_observation(e, study_id, SCOPE, "dlt", date_of_study_day(w.last_day, day1),
                               {"valueBoolean": d.dlt}, derived_from=sources, method=method, category="exam")]


def kinetics_observations(kin: Kinetics, e: Enrollee, study_id: str, ks: KineticsSettings, day1: dt.date | None,
                          ) -> list[dict[str, Any]]:
    """The CAR-T kinetics Observations of one subject's transgene series (only where the value is known)."""
    k = kin.primary
    if k is None or day1 is None:
        return []
    out: list[dict[str, Any]] = []
    blq = (f" (LLOQ {k.lloq:g}; BLQ 0 before the first quantifiable value, excluded after it)"
           if k.lloq is not None else "")
    method = (f"Non-compartmental analysis of {k.item}{blq}, actual sampling times in fractional days after the "
              f"infusion's date-time (else Day 1 00:00), "
              f"AUC {ks.auc_method}; fhir-adapter {__version__}")
    unit = k.unit or TRANSGENE_UNIT
    at_tmax = k.tmax_date
    values: list[tuple[str, float | None, str, dt.date | None]] = [
        ("cart-cmax", k.cmax, unit, at_tmax),
        ("cart-tmax", k.tmax_day, "d", at_tmax),
        ("cart-auc0-28d", k.auc0_28, f"{unit}.d", day1 + dt.timedelta(days=ks.auc_end_day)),
    ]
    for code, value, u, effective in values:
        if value is None:
            continue
        out.append(result_observation(e, study_id, SCOPE, code, effective, _quantity(value, u),
                                      derived_from=k.sources, method=method, category="laboratory"))
    return out
