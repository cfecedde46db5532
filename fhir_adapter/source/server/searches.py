"""Which searches read one subject's resources, and what of their answer is input.

One search per resource type the mapping needs (:data:`SUBJECT_SEARCHES`): ``Observation?patient=..&combo-code=
<the mapping's codes>`` (``combo-code``: a code in ``Observation.code`` or in a ``component.code``, e.g. blood
pressure in a panel's components), ``Procedure`` (all of them: the infusion and the procedures the CRF's PR
domain lists), the four medication types (with ``_include`` of their Medication), ``AdverseEvent``,
``Condition``, ``AllergyIntolerance`` and ``Immunization``.

The adapter's own results (an identifier in its system) are never input: a SLEDAI-2K result carries the
descriptor codes the mapping reads in its components, so they are dropped from every answer.
"""

from __future__ import annotations

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import Resource
from fhir_adapter.study.load import Study
from fhir_adapter.terminology.codes import SID_RESULT

#: resource type -> (patient search parameter, extra parameters)
SUBJECT_SEARCHES: dict[str, tuple[str, dict[str, str]]] = {
    "Observation": ("patient", {}),
    "Procedure": ("patient", {}),
    "MedicationStatement": ("patient", {"_include": "MedicationStatement:medication"}),
    "MedicationRequest": ("patient", {"_include": "MedicationRequest:medication"}),
    "MedicationAdministration": ("patient", {"_include": "MedicationAdministration:medication"}),
    "MedicationDispense": ("patient", {"_include": "MedicationDispense:medication"}),
    "AdverseEvent": ("subject", {}),
    "Condition": ("patient", {}),
    "AllergyIntolerance": ("patient", {}),
    "Immunization": ("patient", {}),
}
#: characters of one code parameter; longer lists are split over several searches. 4000 keeps the URL of an
#: incremental probe (codes + PROBE_PATIENTS references) under the 8 KB request line most servers accept.
MAX_CODE_PARAM = 4000
OBSERVATION_CODE_PARAMS = ("combo-code", "code", "none")

Search = tuple[str, dict[str, str]]


class SearchPlan:
    """The searches of one subject (or of several: ``patient=Patient/a,Patient/b``) for a study.

    ``observation_code_param``: how Observations are filtered: combo-code (code or component code: panels such
    as blood pressure), code (the Observation's own code only), or none (every Observation of the patient; the
    mapping picks what it needs) — for EHRs that do not support combo-code.
    """

    def __init__(self, study: Study, observation_code_param: str = "combo-code") -> None:
        if observation_code_param not in OBSERVATION_CODE_PARAMS:
            raise ValueError(f"observation_code_param must be combo-code, code or none, not {observation_code_param!r}")
        self.study = study
        self.observation_code_param = observation_code_param
        self._code_params = _code_params(study)

    def searches(self, pids: str | list[str], extra: dict[str, str] | None = None) -> list[Search]:
        """The searches for one patient id, or for several at once (their references comma-separated)."""
        return [s for rtype in SUBJECT_SEARCHES for s in self.type_searches(rtype, pids, extra)]

    def type_searches(self, rtype: str, pids: str | list[str], extra: dict[str, str] | None = None) -> list[Search]:
        """The searches of one resource type (several for Observations when the codes need several)."""
        refs = ",".join(f"Patient/{p}" for p in ([pids] if isinstance(pids, str) else pids))
        param, params = SUBJECT_SEARCHES[rtype]
        if rtype == "Observation" and self.observation_code_param != "none":
            return [(rtype, {param: refs, self.observation_code_param: codes, **params, **(extra or {})})
                    for codes in self._code_params]
        return [(rtype, {param: refs, **params, **(extra or {})})]


def _code_params(study: Study) -> list[str]:
    """The study's codes as ``system|code`` lists of at most :data:`MAX_CODE_PARAM` characters each."""
    codes = sorted(f"{system}|{code}" for system, code in study.code_index)
    chunks: list[str] = []
    current: list[str] = []
    for c in codes:
        if current and len(",".join([*current, c])) > MAX_CODE_PARAM:
            chunks.append(",".join(current))
            current = []
        current.append(c)
    if current:
        chunks.append(",".join(current))
    return chunks


def adapter_owned(resource: Resource) -> bool:
    """A result the adapter wrote (an identifier in its system): output, never input."""
    return any(i.get("system") == SID_RESULT for i in resource.get("identifier") or [] if isinstance(i, dict))


def input_resources(resources: list[Resource], log: RunLog) -> list[Resource]:
    """Deduplicated (by type and id), without the adapter's own results (counted)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in resources:
        key = (str(r.get("resourceType")), str(r.get("id")))
        if key in seen:
            continue
        seen.add(key)
        if adapter_owned(r):
            log.count("read.skipped-adapter-results")
        else:
            out.append(r)
    return out
