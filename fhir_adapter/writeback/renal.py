"""The lupus nephritis renal response Observation of a visit: ``renal-response`` — ``valueCodeableConcept``
``renal-response-complete``, ``renal-response-partial`` or ``renal-response-none`` of the results CodeSystem,
``derivedFrom`` the proteinuria results (visit and baseline) and, where kidney function was judged, the eGFR
results. Written only where the visit was graded (docs/clinical-rules.md#renal-response)."""

from __future__ import annotations

from typing import Any

from fhir_adapter.derive.renal import RenalResponse, RenalResponseSettings, RenalResponseVisit
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.terminology.codes import CS_RESULTS
from fhir_adapter.version import __version__
from fhir_adapter.writeback.observations import result_display, result_observation

MEASURE_NAMES = {"upcr": "urine protein/creatinine ratio", "protein_24h": "24-h urine protein"}


def renal_response_observation(e: Enrollee, study_id: str, r: RenalResponse, v: RenalResponseVisit,
                               s: RenalResponseSettings) -> dict[str, Any]:
    assert v.response is not None and r.measure is not None
    code = f"renal-response-{v.response}"
    value = {"valueCodeableConcept": {"coding": [{"system": CS_RESULTS, "code": code,
                                                  "display": result_display(code)}]}}
    egfr = f", eGFR >= {1 - s.egfr_max_decline:g} x baseline" if s.require_egfr or v.egfr_change is not None else ""
    method = (f"KDIGO 2024 renal response by {MEASURE_NAMES[r.measure]} vs baseline {r.baseline_value} "
              f"({r.baseline_visit}): complete < {s.complete_below:g} g/g, partial >= {s.partial_reduction:.0%} "
              f"reduction and < {s.partial_below:g} g/g{egfr}; fhir-adapter {__version__}")
    return result_observation(e, study_id, v.visit, "renal-response", v.date, value, derived_from=v.sources,
                              method=method)
