"""A CRF as the JSON document of ``OUT/crf/<subject>.json`` (what ``SubjectCRF.model_dump(mode="json")`` gives).

A visit's values are the subject's findings that the visit keeps — the same :class:`Finding` objects as in
``findings`` — so each finding is converted once (all of them in one call) and a visit's ``values`` reuse
those dicts; a value that is not among ``findings`` is converted on its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from fhir_adapter.crf.models import Finding, SubjectCRF

_FINDINGS: TypeAdapter[list[Finding]] = TypeAdapter(list[Finding])


def crf_document(crf: SubjectCRF) -> dict[str, Any]:
    doc = crf.model_dump(mode="json", exclude={"findings", "visits"})
    findings: list[dict[str, Any]] = _FINDINGS.dump_python(crf.findings, mode="json")
    dumped = {id(f): d for f, d in zip(crf.findings, findings, strict=True)}
    visits = []
    for v in crf.visits:
        visit = v.model_dump(mode="json", exclude={"values"})
        visit["values"] = {item: dumped.get(id(f)) or f.model_dump(mode="json") for item, f in v.values.items()}
        visits.append(visit)
    doc["findings"], doc["visits"] = findings, visits
    return doc
