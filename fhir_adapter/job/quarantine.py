"""``OUT/quarantine/<Type>.ndjson``: what is kept of bad input, one line per quarantined resource or line.

By default only what is needed to fix the export: type, id, file, line (and Bundle entry), the rule, reason
and fix, and the offending element (its path and value; value null for a missing one) — not the rest of the
resource, which may carry names, MRNs and free text. The whole resource (or the unparsable line) is kept only with
``--quarantine-full-copies``.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_adapter.job.runlog import Quarantined

#: the element that names the patient, for the rules that are about it
_PATIENT_PATHS = ("subject.reference", "patient.reference", "individual.reference")
#: the element a rule finds missing, by rule and resource type: the quarantine line names it with value null
#: (the date a medication record starts on: mapping/medications/dates.py)
MISSING_ELEMENTS: dict[tuple[str, str], str] = {
    ("missing-date", "Observation"): "effective[x]",
    ("missing-date", "MedicationAdministration"): "effective[x]",
    ("missing-date", "MedicationStatement"): "effective[x]",
    ("missing-date", "MedicationRequest"): "authoredOn",
    ("missing-date", "MedicationDispense"): "whenHandedOver",
}
_PATH_IN_REASON = re.compile(r"(?:^|FHIR R4: )([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*): ")


def _at(node: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def offending_element(q: Quarantined) -> dict[str, Any] | None:
    """``{"path": ..., "value": ...}`` of the element the reason is about, when the resource has it; of the
    element a rule finds missing (:data:`MISSING_ELEMENTS`), with value None."""
    if not isinstance(q.raw, dict):
        return None
    if (missing := MISSING_ELEMENTS.get((q.rule, q.resource_type))) is not None:
        return {"path": missing, "value": None}
    if q.rule in ("unknown-patient", "no-patient"):
        paths: tuple[str, ...] = _PATIENT_PATHS
    else:
        m = _PATH_IN_REASON.search(q.reason)
        paths = (m.group(1),) if m else ()
    for path in paths:
        found, value = _at(q.raw, path)
        if found:
            return {"path": path, "value": value}
    return None


def quarantine_record(q: Quarantined, *, full_copy: bool = False) -> dict[str, Any]:
    """One line of ``OUT/quarantine/``."""
    record: dict[str, Any] = {"reason": q.as_report()}
    element = offending_element(q)
    if element is not None:
        record["element"] = element
    if full_copy:
        record["resource"] = q.raw
    return record
