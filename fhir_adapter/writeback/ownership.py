"""What the adapter may touch on a FHIR server.

A resource on the server is the adapter's only when all three hold:

1. it carries an identifier in the adapter's system (``https://fhir-adapter.org/fhir/sid/result``);
2. it carries the adapter's ``meta.tag`` (``https://fhir-adapter.org/fhir/CodeSystem/tags|fhir-adapter``),
   which the adapter puts on everything it writes;
3. it is about the enrolled subject's Patient (``subject``, or ``individual`` for a ResearchSubject).

Anything else — a hospital Observation that happens to use the adapter's identifier system, a result about
another patient — is never updated nor retracted.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from fhir_adapter.terminology.codes import CS_TAGS, SID_RESULT

_JSON_ONLY = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
OWNER_TAG = {"system": CS_TAGS, "code": "fhir-adapter", "display": "Written by fhir-adapter"}


def has_owner_tag(res: dict[str, Any]) -> bool:
    return any(isinstance(t, dict) and t.get("system") == CS_TAGS and t.get("code") == OWNER_TAG["code"]
               for t in (res.get("meta") or {}).get("tag") or [])


def with_owner_tag(res: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``res`` carrying the adapter's tag (once)."""
    if has_owner_tag(res):
        return res
    try:  # JSON data: a round trip through orjson is a deep copy, many times faster than copy.deepcopy
        out: dict[str, Any] = orjson.loads(orjson.dumps(res, option=_JSON_ONLY))
    except TypeError:  # something that is not plain JSON data (a date object, an int beyond 64 bits…)
        out = copy.deepcopy(res)
    meta = out.setdefault("meta", {})
    meta["tag"] = [*(meta.get("tag") or []), dict(OWNER_TAG)]
    return out


def tagged(res: dict[str, Any]) -> dict[str, Any]:
    """:func:`with_owner_tag` for a resource that is only serialised (the offline bundle file): a new
    top-level dict and ``meta``, everything else shared with ``res``."""
    if has_owner_tag(res):
        return res
    meta = res.get("meta") or {}
    return {**res, "meta": {**meta, "tag": [*(meta.get("tag") or []), dict(OWNER_TAG)]}}


def patient_of(res: dict[str, Any]) -> str | None:
    ref = (res.get("subject") or res.get("individual") or {}).get("reference")
    return ref if isinstance(ref, str) else None


def why_not_owned(res: dict[str, Any], patient_id: str) -> str | None:
    """None when the adapter owns ``res`` for ``Patient/<patient_id>``; else what is missing."""
    if not any(isinstance(i, dict) and i.get("system") == SID_RESULT for i in res.get("identifier") or []):
        return f"no identifier in {SID_RESULT}"
    if not has_owner_tag(res):
        return f"no meta.tag {CS_TAGS}|{OWNER_TAG['code']}"
    # the adapter's ResearchStudy (from study.yaml, for an EHR without one) is about no patient
    if res.get("resourceType") != "ResearchStudy" and patient_of(res) != f"Patient/{patient_id}":
        return f"it is about {patient_of(res)}, not Patient/{patient_id}"
    return None
