"""Builders for the efficacy-endpoint tests: subjects whose visits carry selected values, settings read from
the study's own rule files (so the tests exercise the shipped defaults)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from fhir_adapter.crf.models import ConMed, Demographics, Finding, SourceRef, SubjectCRF, VisitRecord
from tests.helpers import DAY1, d, finding

STUDY = Path(__file__).resolve().parent.parent / "mappings" / "lcar-aio"
M = TypeVar("M", bound=BaseModel)
_ids = itertools.count(1)


def rule(name: str, model: type[M], **update: Any) -> M:
    """The settings of ``mappings/lcar-aio/<name>.yaml``, with ``update`` applied."""
    data = yaml.safe_load((STUDY / f"{name}.yaml").read_text())
    return model.model_validate({**data, **update})


def visit_crf(visits: Mapping[str, tuple[int, Mapping[str, Finding | float]]], *, day1: dt.date | None = DAY1,
              cm: list[ConMed] | None = None, findings: list[Finding] | None = None) -> SubjectCRF:
    """A subject with visits ``{id: (study day, {item: Finding or plain value})}``; plain values become
    findings dated on the visit day."""
    recs = []
    all_findings = list(findings or [])
    for vid, (day, values) in visits.items():
        vals: dict[str, Finding] = {}
        for item, v in values.items():
            f = v if isinstance(v, Finding) else finding(item, day, float(v))
            vals[item] = f
            all_findings.append(f)
        recs.append(VisitRecord(visit=vid, date=d(day), study_day=day, values=vals))
    recs.sort(key=lambda r: r.date or dt.date.min)
    return SubjectCRF(subject_id="T-001", arm="DL1", day1=day1, dm=Demographics(subject_id="T-001", status="follow-up"),
                      findings=all_findings, visits=recs, cm=cm or [])


def conmed(drug: str, start: int | None, end: int | None = None, *, dose: float | None = None,
           freq: float | None = 1.0, unit: str | None = "mg", route: str | None = "oral", kind: str = "statement",
           daily: float | None = None, **kw: Any) -> ConMed:
    """A CM record from study day ``start`` to ``end`` (inclusive; None = ongoing)."""
    return ConMed(
        drug=drug, dose=dose, dose_unit=unit, frequency_per_day=freq, daily_dose_mg=daily, route=route,
        start_date=d(start) if start is not None else None, end_date=d(end) if end is not None else None,
        source_kind=kind, source=SourceRef(resource_type="MedicationStatement", id=f"m{next(_ids)}"),
        **kw,
    )
