"""``results/study.json``: the results contract other tools rely on (keys are added, never renamed).

Top level: ``study``, ``generated_by``, ``settings`` (the rules in force), ``subjects``, then the study-level
keys of the named endpoints (``lldas_rate``, ``teae_summary``, ``dose_levels``, ``rp2d``...). Per subject:
``subject_id``, ``arm``, ``day1`` (YYYY-MM-DD), ``visits``, the per-subject keys of the named endpoints and
``baselines`` (each baseline taken from a result in no visit — before consent or between visit windows:
{item, value, date, study_day, sources, before_participation, comparator, unit}); per visit: ``visit``,
``date`` (the actual visit date), ``study_day`` and the per-visit keys of the named endpoints. Each
endpoint's keys are documented in its module of :mod:`fhir_adapter.endpoints`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_adapter.endpoints.registry import StudyInput, endpoints_of
from fhir_adapter.results.subject import SubjectResults
from fhir_adapter.study.load import Study
from fhir_adapter.version import __version__

#: the keys of every subject row that no endpoint declares (the endpoints' keys follow their contracts)
BASE_SUBJECT_KEYS = ("subject_id", "arm", "day1", "visits", "baselines")


def settings_echo(study: Study) -> dict[str, Any]:
    """The rules in force, so a reader knows which rule produced a number."""
    return {
        "study_folder": str(study.root),
        "site_overlay": study.site,
        "mapping_files_sha256": study.files,
        "timezone": study.info.timezone,
        "day1": f"date of the {study.info.product_name} {'first dose' if study.info.repeated_doses else 'infusion'}; "
                "study day = d - day1 + 1 on/after Day 1, d - day1 before (no Day 0)",
        "enrolled_statuses": list(study.info.enrolled_statuses),
        "baseline_lookback_days": study.schedule.baseline_lookback_days(),
        "site_overrides": [{k: v for k, v in o.items() if k != "where"} for o in study.overrides],
        **{name: rule.model_dump(mode="json", exclude={"descriptors"}) for name, rule in study.rules.items()},
    }


def subject_row(r: SubjectResults) -> dict[str, Any]:
    return {
        "subject_id": r.crf.subject_id,
        "arm": r.crf.arm,
        "day1": r.crf.day1.isoformat() if r.crf.day1 else None,
        "visits": r.visit_rows(),
        **r.subject_keys(),
        "baselines": [b.model_dump(mode="json") for b in r.baselines()],
    }


def study_keys(study: Study, subjects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The study-level keys of the named endpoints, from all subject rows (study.yaml's order)."""
    out: dict[str, Any] = {}
    for ep in endpoints_of(study):
        if ep.study_keys is not None:
            out.update(ep.study_keys(StudyInput(study=study, settings=study.rules[ep.name], rows=subjects)))
    return out


def study_json(study: Study, subjects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {**study_head(study), "subjects": sorted(subjects, key=lambda s: s["subject_id"]),
            **study_keys(study, subjects)}


def study_head(study: Study) -> dict[str, Any]:
    """The top-level keys before ``subjects`` and the endpoints' study-level keys."""
    return {
        "study": study.info.id,
        "generated_by": f"fhir-adapter {__version__}",
        "endpoints": list(study.endpoints),
        "settings": settings_echo(study),
    }
