"""The LLDAS result Observation of a visit: ``lldas`` — ``valueBoolean`` (LLDAS met), one component per
evaluated criterion (code ``lldas-<criterion id with hyphens>`` of the results CodeSystem, ``valueBoolean`` =
criterion met), ``derivedFrom`` the sources of every criterion (``LldasVisit.sources``: the SLEDAI-2K
descriptors of the visit and of the previous assessment, PGA and medication records). Written only where LLDAS is
evaluable (true/false): a null LLDAS has no Observation.

The PGA is a clinician-entered input already in the EHR, so it is not written back.
"""

from __future__ import annotations

from typing import Any

from fhir_adapter.derive.lldas import CRITERIA, LldasSettings, LldasVisit
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.terminology.codes import CS_RESULTS
from fhir_adapter.version import __version__
from fhir_adapter.writeback.observations import result_display, result_observation


def criterion_code(criterion: str) -> str:
    """Results CodeSystem code of an LLDAS criterion id (``pga_le_1`` → ``lldas-pga-le-1``)."""
    return "lldas-" + criterion.replace("_", "-")


def lldas_observation(e: Enrollee, study_id: str, v: LldasVisit, s: LldasSettings) -> dict[str, Any]:
    assert v.lldas is not None
    components = []
    for c in CRITERIA:
        if c not in v.criteria:
            continue
        code = criterion_code(c)
        coding = {"system": CS_RESULTS, "code": code, "display": result_display(code)}
        components.append({"code": {"coding": [coding]}, "valueBoolean": v.criteria[c]})
    fifth = ", with Franklyn criterion 5" if s.maintenance_criterion else ""
    previous = v.previous_visit or f"the assessment of {v.previous_date}"
    method = (f"LLDAS (Franklyn 2016), protocol criteria 1-4{fifth}: SLEDAI-2K <= {s.sledai_max} without "
              f"major organ activity, no new features vs {previous}, PGA <= {s.pga_max}, "
              f"prednisolone-eq <= {s.pred_eq_max_mg} mg/day; fhir-adapter {__version__}")
    return result_observation(e, study_id, v.visit, "lldas", v.date, {"valueBoolean": v.lldas},
                              derived_from=v.sources, components=components, method=method)
