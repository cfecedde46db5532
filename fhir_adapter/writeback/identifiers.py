"""Stable business identifiers for everything the adapter writes.

The identifier value is built from study, subject, visit (or ``subject`` for per-subject results) and
result code, so a re-run finds and updates the same resource instead of creating a new one, and the
conditional update ``PUT Observation?identifier=system|value`` never duplicates. Characters outside
``[A-Za-z0-9.-]`` in the parts are percent-encoded so the value is safe inside a search URL (where its own
``%`` is escaped again: :func:`in_query`).
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

from fhir_adapter.terminology.codes import SID_RESULT

_NAMESPACE = uuid.UUID("6f1c7d4e-3b7a-5c2e-9d1f-0a4b8e6c2d10")
#: the scope of a per-subject result (DLT evaluation, kinetics) in its identifier, where a visit's id stands
#: for a visit's result
SUBJECT_SCOPE = "subject"


def _part(text: str) -> str:
    return quote(text, safe="-.")


def result_identifier(study_id: str, subject_id: str, scope: str, code: str) -> str:
    """``LCAR-AIO-SLE.101-001.W4.sledai-2k`` (scope = visit id, or ``subject`` for per-subject results)."""
    return ".".join(_part(p) for p in (study_id, subject_id, scope, code))


def study_prefix(study_id: str) -> str:
    """What every identifier value of the study's results starts with (``LCAR-AIO-SLE.``)."""
    return f"{_part(study_id)}."


def subject_prefix(study_id: str, subject_id: str) -> str:
    """What every identifier value of one subject's results starts with (``LCAR-AIO-SLE.101-001.``)."""
    return f"{study_prefix(study_id)}{_part(subject_id)}."


def full_url(system: str, value: str) -> str:
    """Deterministic ``urn:uuid`` for a bundle entry, derived from the identifier."""
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, system + '|' + value)}"


def in_query(value: str) -> str:
    """An identifier value as it goes into a query string (a conditional create's ``If-None-Exist``, a
    conditional update's URL): the server decodes the query once, so the ``%`` of a value's own percent-encoding
    (subject ``101/001`` → ``101%2F001``) is sent as ``%25`` — else the condition looks for ``101/001`` and never
    matches, and a replay duplicates the result."""
    return value.replace("%", "%25")


def conditional_url(resource_type: str, value: str, system: str = SID_RESULT) -> str:
    return f"{resource_type}?identifier={system}|{in_query(value)}"
