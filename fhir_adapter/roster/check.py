"""A roster that enrols nobody is a failed run (exit 1), not an empty one: when the source holds
ResearchSubjects of the study, the message lists what it holds (identifier systems, statuses) and the line that
fixes it; when it holds none, what was looked for (the study identifier, the enrolled statuses) and how to
enrol. An incremental run with nothing changed still enrols its subjects (they are taken from OUT/crf).
"""

from __future__ import annotations

from collections import Counter

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.enrollees import Roster
from fhir_adapter.roster.subject_ids import describe, overlay_line, subject_id
from fhir_adapter.source.base import RosterInput, ref_id
from fhir_adapter.study.load import Study

#: roster problems quoted in the message of a run that enrolled nobody (a failed run writes no OUT to look in)
_QUOTED = 3


def _why(log: RunLog | None) -> str:
    """The roster's own reasons, quoted: the quarantined roster resources and the roster warnings (a roster
    CSV row naming no Patient of the source, …), at most :data:`_QUOTED` of each kind."""
    if log is None:
        return ""
    reasons = [f"{q.resource_type}/{q.id}: {q.reason} ({q.fix})" for q in log.quarantine[:_QUOTED]]
    reasons += [w["message"] for w in log.warnings[:_QUOTED]]
    more = max(0, len(log.quarantine) - _QUOTED) + max(0, len(log.warnings) - _QUOTED)
    if not reasons:
        return ""
    return " Why: " + "; ".join(reasons) + (f"; and {more} more" if more else "")


def nobody_enrolled(data: RosterInput, roster: Roster, study: Study, log: RunLog | None = None,
                    *, roster_csv: bool = False) -> str | None:
    """The error message when ``roster`` enrolled nobody; else None. ``log``: the run's log so far, whose roster
    reasons the message quotes (no run report is written when nobody is enrolled); ``roster_csv``: the run
    enrols from a site roster CSV (then the fix is in its rows, not in passing one)."""
    if roster.enrolled:
        return None
    of_study = [rs for rs in data.subjects
                if ref_id((rs.get("study") or {}).get("reference"), "ResearchStudy", data.base) in roster.study_ids]
    if not of_study:
        info = study.info
        looked = f"{info.identifier_system}|{info.id}" if info.identifier_system else info.id
        studies = ", ".join(f"ResearchStudy/{i}" for i in sorted(roster.study_ids))
        if roster_csv:
            return (f"nobody to process: no row of the roster CSV enrolled a subject of study {info.id}. Check "
                    "that each row's patient_identifier (system|value) names a Patient of the source and that "
                    f"its dates and status are valid.{_why(log)}")
        return (f"nobody to process: the source holds no ResearchSubject of study {info.id} ({studies}, "
                f"identifier {looked}; enrolled statuses {list(info.enrolled_statuses)}). Export the "
                "ResearchSubjects with the ResearchStudy (a Bulk export: ResearchSubject in _type), or enrol from "
                "the site roster: --roster-csv roster.csv (its rows must name Patients of the source by "
                f"patient_identifier).{_why(log)}")
    systems = Counter(str(i.get("system")) for rs in of_study for i in rs.get("identifier") or []
                      if isinstance(i, dict))
    statuses = Counter(str(rs.get("status") or "(none)") for rs in of_study)
    enrolled_status = [rs for rs in of_study if rs.get("status") in study.info.enrolled_statuses]
    without_id = [rs for rs in enrolled_status if subject_id(rs, study.subject_id_rule) is None]
    seen = (f"the source holds {len(of_study)} ResearchSubjects of study {study.info.id} but none was processed — "
            f"identifier systems seen: {_fmt(systems)}; statuses seen: {_fmt(statuses)}")
    if not enrolled_status:
        return (f"{seen}. None has an enrolled status {list(study.info.enrolled_statuses)}: check the "
                "ResearchSubject.status the EHR writes, or enrolled_statuses in study.yaml")
    if without_id:
        return (f"{seen}. The subject ID is read from {describe(study.subject_id_rule)} "
                f"({study.subject_id_rule_origin or 'study.yaml'}). If the hospital keeps the trial ID under its "
                f"own identifier system, add to your site overlay (--site mappings/sites/<site>.yaml): "
                f"{overlay_line(sorted(systems))}")
    return f"{seen}.{_why(log) or ' The roster gave no reason: run again with -v for the roster log'}"


def _fmt(c: Counter[str]) -> str:
    return ", ".join(f"{k} ({n})" for k, n in c.most_common()) or "none"
