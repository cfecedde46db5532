"""All endpoints a study names, derived for one subject in run order over its CRF (pure: no I/O, the CRF is
never changed), and the subject's rows of ``results/study.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.derive.baseline import BaselineSource
from fhir_adapter.endpoints.registry import Endpoint, OutputInput, SubjectInput, endpoints_of, run_order
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study

T = TypeVar("T")


@dataclass
class SubjectResults:
    crf: SubjectCRF
    #: endpoint name → its typed result (per-subject endpoints the study names)
    results: dict[str, Any] = field(default_factory=dict)
    #: the per-subject endpoints in study.yaml's order (outputs follow it)
    endpoints: list[Endpoint] = field(default_factory=list)

    def get(self, name: str, kind: type[T]) -> T | None:
        """The result of endpoint ``name`` (None when the study does not name it)."""
        value = self.results.get(name)
        assert value is None or isinstance(value, kind)
        return value

    def visit_rows(self) -> list[dict[str, Any]]:
        """The ``visits`` list of this subject in ``results/study.json`` (scheduled visits only)."""
        rows = []
        for v in self.crf.visits:
            if v.unscheduled:
                continue
            row: dict[str, Any] = {"visit": v.visit, "date": v.date.isoformat() if v.date else None,
                                   "study_day": v.study_day}
            for ep in self.endpoints:
                if ep.visit_keys is not None:
                    row.update(ep.visit_keys(self.results[ep.name], v.visit))
            rows.append(row)
        return rows

    def observations(self, e: Enrollee, study: Study, only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """The write-back Observations of the named endpoints (or of those in ``only``), in study.yaml's order."""
        out: list[dict[str, Any]] = []
        for ep in self.endpoints:
            if ep.observations is not None and (only is None or ep.name in only):
                out += ep.observations(OutputInput(result=self.results[ep.name], enrollee=e, study=study,
                                                   settings=study.rules[ep.name], day1=self.crf.day1))
        return out

    def export_updates(self) -> dict[str, Any]:
        """CRF field updates that show the endpoints' derived flags in the exports (a copy of the CRF takes
        them; the CRF itself is the mapping's output)."""
        out: dict[str, Any] = {}
        for ep in self.endpoints:
            if ep.annotate is not None:
                out.update(ep.annotate(self.results[ep.name]))
        return out

    def baselines(self) -> list[BaselineSource]:
        """Every baseline taken from a result in no visit (before consent, or between visit windows), from the
        endpoints whose result lists them (``baselines``), in study.yaml's order."""
        out: list[BaselineSource] = []
        for ep in self.endpoints:
            out += getattr(self.results[ep.name], "baselines", [])
        return out

    def subject_keys(self) -> dict[str, Any]:
        """The per-subject keys of the named endpoints."""
        out: dict[str, Any] = {}
        for ep in self.endpoints:
            if ep.subject_keys is not None:
                out.update(ep.subject_keys(self.results[ep.name]))
        return out


def derive_subject(crf: SubjectCRF, study: Study) -> SubjectResults:
    """Every per-subject endpoint of the study, each after those it needs."""
    results: dict[str, Any] = {}
    named = endpoints_of(study)
    for ep in run_order(named):
        if ep.derive is None:
            continue
        needed = {n: results[n] for n in ep.needs if n in results}
        value = ep.derive(SubjectInput(crf=crf, study=study, settings=study.rules[ep.name], results=needed,
                                       endpoint=ep.name))
        results[ep.name] = value
    return SubjectResults(crf=crf, results=results,
                          endpoints=[ep for ep in named if ep.derive is not None])
