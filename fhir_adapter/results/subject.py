"""All derivations of one subject, run in order over its CRF (pure: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.derive.sledai2k import Sledai2kVisit, derive_sledai2k
from fhir_adapter.results.efficacy import EfficacyResults, derive_efficacy
from fhir_adapter.results.safety import SafetyResults, derive_safety_results  # safety/DLT/kinetics
from fhir_adapter.study.load import Study


@dataclass
class SubjectResults:
    crf: SubjectCRF
    sledai2k: list[Sledai2kVisit]
    efficacy: EfficacyResults = field(default_factory=EfficacyResults)  # PGA, LLDAS, steroids, renal, serology
    safety: SafetyResults | None = None  # TEAE, CRS/ICANS, DLT, cellular kinetics (results/safety.py)

    def visit_rows(self) -> list[dict[str, Any]]:
        """The ``visits`` list of this subject in ``results/study.json`` (scheduled visits only)."""
        by_visit = {s.visit: s for s in self.sledai2k}
        rows = []
        for v in self.crf.visits:
            if v.unscheduled:
                continue
            s = by_visit.get(v.visit)
            rows.append({
                "visit": v.visit,
                "date": v.date.isoformat() if v.date else None,
                "study_day": v.study_day,
                "sledai2k": s.total if s else None,
                "sledai2k_change": s.change if s else None,
                "sledai2k_baseline": bool(s and s.baseline),
                "sledai2k_descriptors": [d.model_dump() for d in s.descriptors] if s and s.total is not None else [],
                "sledai2k_not_assessed": s.not_assessed if s and s.total is not None else [],
            })
        for row in rows:  # efficacy endpoints: pga, lldas, pred_eq_mg_per_day, renal and immunology keys
            row.update(self.efficacy.visit_keys(str(row["visit"])))
        return rows


def derive_subject(crf: SubjectCRF, study: Study) -> SubjectResults:
    safety = derive_safety_results(crf, study)  # safety; sets the TEAE flag on crf.ae (CRF written after)
    sledai2k = derive_sledai2k(crf, study.sledai2k)
    return SubjectResults(crf=crf, sledai2k=sledai2k, efficacy=derive_efficacy(crf, study, sledai2k),
                          safety=safety)
