"""Writes the synthetic CAR-T lupus trial export: one ``<ResourceType>.ndjson`` per type plus a Bulk Data
``manifest.json``.

Deterministic: the plan and every subject's resources come from ``random.Random`` streams seeded from
``seed``; there is no clock, no OS randomness and no set iteration, so the same (subjects, seed) gives
byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from ..medication_records import FORMULARY_INGREDIENTS, formulary_medication
from ..people import organization
from ..sink import NdjsonWriter, clear_feed, write_manifest
from ..timeline import TRANSACTION_TIME
from .irregularities import Irregularity
from .plan import TrialPlan, plan_trial
from .study import research_study, site_research_study
from .subject_feed import enrolled_resources, non_enrolled_resources, screen_failure_resources

RESOURCE_TYPES: tuple[str, ...] = (
    "Organization", "ResearchStudy", "Medication", "Patient", "ResearchSubject", "Procedure", "MedicationStatement",
    "MedicationAdministration", "Observation", "AdverseEvent", "Specimen", "Condition", "AllergyIntolerance",
    "Immunization",
)
EXPORT_REQUEST = "https://ehr.hospital.example.org/fhir/Group/lcar-aio-sle/$export"


def write_plan_feed(out_dir: Path, plan: TrialPlan) -> dict[str, int]:
    clear_feed(out_dir, RESOURCE_TYPES)
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
        for site in plan.organization_ids:
            w.add(site_research_study(plan.study_id, site))
            for drug in FORMULARY_INGREDIENTS:
                w.add(formulary_medication(site, drug))
        for i, sp in enumerate(plan.subjects):
            enrolled_resources(plan, sp, by_subject.get(sp.subject_id, []), w)
            for k in insert_after.get(i, ()):
                if k < len(plan.screen_failures):
                    screen_failure_resources(plan, plan.screen_failures[k], w)
                if k < n_other:
                    non_enrolled_resources(plan, plan.non_enrolled[k], k, w)
        counts = dict(w.counts)
    return write_manifest(out_dir, counts, RESOURCE_TYPES, EXPORT_REQUEST, TRANSACTION_TIME)


def write_feed(out_dir: Path, subjects: int = 34, seed: int = 7) -> dict[str, int]:
    """Write the synthetic LCAR-AIO EHR export for ``subjects`` enrolled subjects; return counts per type."""
    return write_plan_feed(Path(out_dir), plan_trial(subjects, seed))
