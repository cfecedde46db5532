"""The prednisolone-equivalent daily dose Observation of a visit: ``pred-eq-daily-dose`` — ``valueQuantity``
in ``mg/d`` (UCUM), ``derivedFrom`` the medication records active on the visit date. Written only where the
dose is evaluable."""

from __future__ import annotations

from typing import Any

from fhir_adapter.derive.glucocorticoids import GlucocorticoidSettings, PredEqVisit
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.terminology.codes import UCUM
from fhir_adapter.version import __version__
from fhir_adapter.writeback.observations import result_observation


def pred_eq_observation(
    e: Enrollee, study_id: str, v: PredEqVisit, s: GlucocorticoidSettings,
) -> dict[str, Any]:
    assert v.mg_per_day is not None
    routes = ", ".join(s.systemic_routes)
    method = (f"Sum of systemic ({routes}) glucocorticoid doses active on the visit date x prednisolone "
              f"equivalence (BNF/US tables), averaged per day; fhir-adapter {__version__}")
    value = {"valueQuantity": {"value": v.mg_per_day, "unit": "mg/d", "system": UCUM, "code": "mg/d"}}
    return result_observation(e, study_id, v.visit, "pred-eq-daily-dose", v.date, value,
                              derived_from=v.sources, method=method, category="therapy")
