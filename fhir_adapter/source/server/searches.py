"""Which searches read one subject's resources, and what of their answer is input.

One search per resource type the mapping needs (:data:`SUBJECT_SEARCHES`): ``Observation?patient=..&combo-code=
<the mapping's codes>`` (``combo-code``: a code in ``Observation.code`` or in a ``component.code``, e.g. blood
pressure in a panel's components), ``Procedure`` (all of them: the infusion and the procedures the CRF's PR
domain lists), the four medication types (with ``_include`` of their Medication), ``AdverseEvent``,
``Condition``, ``AllergyIntolerance`` and ``Immunization``. Unfiltered Observation searches
(``observation_code_param: none``, or what ``auto`` chose) are filtered here instead: an Observation none of
whose codes (own or component) is the study's is not input (:meth:`SearchPlan.keep`).

The adapter's own results (an identifier in its system) are never input: a SLEDAI-2K result carries the
descriptor codes the mapping reads in its components, so they are dropped from every answer.
"""

from __future__ import annotations

from typing import Any

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
#: ``auto``: the run times a code-filtered and an unfiltered search once and reads with the faster (:mod:`.probe`)
OBSERVATION_CODE_PARAMS = ("auto", "combo-code", "code", "none")

Search = tuple[str, dict[str, str]]


class SearchPlan:
    """The searches of one subject (or of several: ``patient=Patient/a,Patient/b``) for a study.

    ``observation_code_param``: how Observations are filtered: combo-code (code or component code: panels such
    as blood pressure), code (the Observation's own code only), none (every Observation of the patient, kept
    on the client when its code or a component code is one of the study's: the same Observations as combo-code),
    or auto (the run picks combo-code or none, whichever the server answers faster: :meth:`choose`; until then
    the searches are those of combo-code).
    """

    def __init__(self, study: Study, observation_code_param: str = "combo-code") -> None:
        if observation_code_param not in OBSERVATION_CODE_PARAMS:
            raise ValueError("observation_code_param must be auto, combo-code, code or none, not "
                             f"{observation_code_param!r}")
        self.study = study
        self.observation_code_param = observation_code_param
        self._code_params = _code_params(study)

    def choose(self, observation_code_param: str) -> None:
        """Settle ``auto`` on one of the concrete ways (combo-code, code, none)."""
        if observation_code_param not in OBSERVATION_CODE_PARAMS or observation_code_param == "auto":
            raise ValueError(f"cannot choose observation_code_param {observation_code_param!r}")
        self.observation_code_param = observation_code_param

    @property
    def code_param(self) -> str:
        """The way Observations are searched now (``auto`` not yet settled searches as combo-code)."""
        return "combo-code" if self.observation_code_param == "auto" else self.observation_code_param

    def searches(self, pids: str | list[str], extra: dict[str, str] | None = None) -> list[Search]:
        """The searches for one patient id, or for several at once (their references comma-separated)."""
        return [s for rtype in SUBJECT_SEARCHES for s in self.type_searches(rtype, pids, extra)]

    def type_searches(self, rtype: str, pids: str | list[str], extra: dict[str, str] | None = None, *,
                      code_param: str | None = None) -> list[Search]:
        """The searches of one resource type (several for Observations when the codes need several);
        ``code_param``: of the Observation searches, instead of the plan's."""
        refs = ",".join(f"Patient/{p}" for p in ([pids] if isinstance(pids, str) else pids))
        param, params = SUBJECT_SEARCHES[rtype]
        how = code_param or self.code_param
        if rtype == "Observation" and how != "none":
            return [(rtype, {param: refs, how: codes, **params, **(extra or {})}) for codes in self._code_params]
        return [(rtype, {param: refs, **params, **(extra or {})})]

    def keep(self, resource: Resource) -> bool:
        """False for an Observation an unfiltered search (``none``) returned whose code and component codes
        are none of the study's: the server would not have returned it to a combo-code search."""
        if self.code_param != "none" or resource.get("resourceType") != "Observation":
            return True
        index = self.study.code_index
        parts = [resource.get("code"), *(c.get("code") for c in resource.get("component") or [] if isinstance(c, dict))]
        return any(key in index for cc in parts for key in _codings(cc))


def _codings(cc: Any) -> list[tuple[str, str]]:
    if not isinstance(cc, dict):
        return []
    return [(str(c.get("system", "")), str(c.get("code", ""))) for c in cc.get("coding") or [] if isinstance(c, dict)]


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


def input_resources(resources: list[Resource], log: RunLog, plan: SearchPlan | None = None) -> list[Resource]:
    """Deduplicated (by type and id), without the adapter's own results (counted) and, with a ``plan``,
    without the Observations it does not keep (:meth:`SearchPlan.keep`, counted)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in resources:
        key = (str(r.get("resourceType")), str(r.get("id")))
        if key in seen:
            continue
        seen.add(key)
        if adapter_owned(r):
            log.count("read.skipped-adapter-results")
        elif plan is not None and not plan.keep(r):
            log.count("read.skipped-observations-outside-study")
        else:
            out.append(r)
    return out
