"""Writes the synthetic export: one ``<ResourceType>.ndjson`` per type plus a Bulk Data ``manifest.json``.

Deterministic: the plan and every subject's resources come from ``random.Random`` streams seeded from
``seed``; there is no clock, no OS randomness and no set iteration, so the same (subjects, seed) gives
byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .irregularities import Irregularity
from .people import organization
from .plan import TrialPlan, plan_trial
from .study import research_study
from .subject_feed import enrolled_resources, non_enrolled_resources, screen_failure_resources
from .timeline import TRANSACTION_TIME

RESOURCE_TYPES: tuple[str, ...] = (
    "Organization", "ResearchStudy", "Patient", "ResearchSubject", "Procedure", "MedicationStatement",
    "MedicationAdministration", "Observation", "AdverseEvent", "Specimen", "Condition", "AllergyIntolerance",
    "Immunization",
)
EXPORT_REQUEST = "https://ehr.hospital.example.org/fhir/Group/lcar-aio-sle/$export"
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


class NdjsonWriter:
    """One open NDJSON file per resource type, created on the first resource of that type."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.files: dict[str, IO[str]] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> NdjsonWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for f in self.files.values():
            f.close()

    def _file(self, rtype: str) -> IO[str]:
        f = self.files.get(rtype)
        if f is None:
            f = self.files[rtype] = open(  # noqa: SIM115 - closed in __exit__
                self.out_dir / f"{rtype}.ndjson", "w", encoding="utf-8", newline="\n", buffering=1 << 20)
            self.counts[rtype] = 0
        return f

    def add(self, resource: dict[str, Any]) -> None:
        rtype: str = resource["resourceType"]
        self._file(rtype).write(_encode(resource) + "\n")
        self.counts[rtype] += 1

    def add_observation(self, line: str) -> None:
        self._file("Observation").write(line + "\n")
        self.counts["Observation"] += 1


def _manifest(counts: dict[str, int]) -> dict[str, Any]:
    return {
        "transactionTime": TRANSACTION_TIME,
        "request": EXPORT_REQUEST,
        "requiresAccessToken": True,
        "output": [{"type": t, "url": f"{t}.ndjson", "count": counts[t]} for t in RESOURCE_TYPES if t in counts],
        "error": [],
    }


def write_plan_feed(out_dir: Path, plan: TrialPlan) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for t in RESOURCE_TYPES:
        (out_dir / f"{t}.ndjson").unlink(missing_ok=True)
    by_subject: dict[str, list[Irregularity]] = {}
    for ir in plan.irregularities:
        by_subject.setdefault(ir.subject_id, []).append(ir)
    n, n_other = len(plan.subjects), len(plan.non_enrolled)
    # screen failures and clinic patients appear between the study subjects, as in a real patient list
    insert_after: dict[int, list[int]] = {}
    for k in range(max(len(plan.screen_failures), n_other)):
        insert_after.setdefault((k + 1) * n // (max(len(plan.screen_failures), n_other) + 1), []).append(k)
    with NdjsonWriter(out_dir) as w:
        for site, org_id in plan.organization_ids.items():
            w.add(organization(site, org_id))
        w.add(research_study(plan.study_id))
        for i, sp in enumerate(plan.subjects):
            enrolled_resources(plan, sp, by_subject.get(sp.subject_id, []), w)
            for k in insert_after.get(i, ()):
                if k < len(plan.screen_failures):
                    screen_failure_resources(plan, plan.screen_failures[k], w)
                if k < n_other:
                    non_enrolled_resources(plan, plan.non_enrolled[k], k, w)
        counts = dict(w.counts)
    (out_dir / "manifest.json").write_text(json.dumps(_manifest(counts), indent=2) + "\n", encoding="utf-8")
    return {t: counts[t] for t in RESOURCE_TYPES if t in counts}


def write_feed(out_dir: Path, subjects: int = 34, seed: int = 7) -> dict[str, int]:
    """Write the synthetic LCAR-AIO EHR export for ``subjects`` enrolled subjects; return counts per type."""
    return write_plan_feed(Path(out_dir), plan_trial(subjects, seed))
