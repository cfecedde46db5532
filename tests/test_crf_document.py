"""OUT/crf/<subject>.json: crf_document gives what SubjectCRF.model_dump(mode="json") gives, a visit's values
converted once with the findings they are (or on their own when they are not among them)."""

from __future__ import annotations

import datetime as dt

import orjson

from fhir_adapter.crf.document import crf_document
from fhir_adapter.crf.models import Demographics, Finding, SourceRef, SubjectCRF, VisitRecord


def _finding(n: int, value: float) -> Finding:
    return Finding(domain="LB", item="lab.platelets", value=value, unit="10*9/L", orig_value=f"{value}",
                   datetime=dt.datetime(2024, 2, n, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
                   date=dt.date(2024, 2, n), study_day=n, visit="D1" if n == 1 else None, interpretation=("H",),
                   source=SourceRef(resource_type="Observation", id=f"o{n}", version="2"))


def test_the_document_is_the_models_json() -> None:
    shared, other, alone = _finding(1, 150.5), _finding(2, -0.0), _finding(3, 1e-7)
    crf = SubjectCRF(subject_id="101-001", day1=dt.date(2024, 2, 1),
                     dm=Demographics(subject_id="101-001", status="enrolled"), findings=[shared, other],
                     visits=[VisitRecord(visit="D1", target_day=1, date=dt.date(2024, 2, 1), study_day=1,
                                         values={"lab.platelets": shared}),
                             VisitRecord(visit="D3", values={"lab.platelets": alone})])
    doc = crf_document(crf)
    assert doc == crf.model_dump(mode="json")
    option = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    assert orjson.dumps(doc, option=option) == orjson.dumps(crf.model_dump(mode="json"), option=option)
