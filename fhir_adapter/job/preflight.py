"""Before the first run against an EHR: does the mapping load, and does the FHIR server offer what the
adapter will ask of it? ``fhir-adapter check`` prints the answers; nothing is written.

``check`` also reads the roster as a run does — a server where the run would enrol nobody is an error
(:func:`probe_study`) — and times the study's Observation searches on its first enrolled patient, filtered and
unfiltered: what ``observation_code_param: auto`` picks.

What the adapter needs of a server (FHIR R4 ``CapabilityStatement.rest[mode=server]``):

* reading (every run): search on ResearchStudy (``identifier``), ResearchSubject (``study``), Patient
  (``_id``), Observation (``patient`` + the ``observation_code_param`` setting; ``auto`` needs no code
  parameter: a server that refuses ``combo-code`` is read unfiltered), Procedure (``patient``,
  ``code``), the four medication types, AdverseEvent, Condition, AllergyIntolerance and Immunization
  (``patient``/``subject``);
* incremental runs (``--since``): ``_lastUpdated`` on those types; ``history-type`` for deletions;
* writing back (``--post``): the system ``transaction`` interaction, ``create`` with ``conditionalCreate``
  (``If-None-Exist``) on Observation and Device, ``update`` on Observation (with ``If-Match``), ``create`` on
  Provenance (conditional, on its ``_tag``: else a write sent again may leave its Provenance twice).

A server may support more than it declares: every gap is reported with what happens if it is real.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fhir_adapter.fhir.capability import interactions, search_params, searchable
from fhir_adapter.source.base import MEDICATION_TYPES

if TYPE_CHECKING:
    from pathlib import Path

    from fhir_adapter.fhir import FhirClient
    from fhir_adapter.job.runlog import RunLog
    from fhir_adapter.roster.enrollees import Roster
    from fhir_adapter.source.base import RosterInput
    from fhir_adapter.source.server.probe import SearchTiming
    from fhir_adapter.study.load import Study

#: resource type -> (search parameters every run needs, what is lost without the type)
READS: dict[str, tuple[tuple[str, ...], str]] = {
    "ResearchStudy": (("identifier",), "the study cannot be found: nothing runs"),
    "ResearchSubject": (("study",), "no roster: nothing runs"),
    "Patient": (("_id",), "Patients the server does not _include cannot be read"),
    "Observation": (("patient",), "no labs, vital signs, SLEDAI-2K, PGA or CAR-T kinetics"),
    "Procedure": (("patient", "code"), "no infusion: Day 1 unknown, no visits"),
    "MedicationStatement": (("patient",), "no concomitant medications from statements"),
    "MedicationRequest": (("patient",), "no concomitant medications from orders"),
    "MedicationAdministration": (("patient",), "no lymphodepletion or administrations"),
    "MedicationDispense": (("patient",), "no concomitant medications from dispenses"),
    "AdverseEvent": (("subject",), "no adverse events: TEAE and DLT not derivable"),
    "Condition": (("patient",), "no medical history (MH) from conditions"),
    "AllergyIntolerance": (("patient",), "no allergies in the medical history (MH)"),
    "Immunization": (("patient",), "no vaccinations among the concomitant medications (CM)"),
}
CRITICAL = {"ResearchStudy", "ResearchSubject", "Observation", "Procedure"}
#: the per-subject data an incremental run probes for changes and deletions
SUBJECT_DATA = set(READS) - {"ResearchStudy", "ResearchSubject", "Patient"}


@dataclass(frozen=True)
class Gap:
    level: Literal["error", "warning"]
    what: str
    consequence: str


def _server_rest(cs: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in cs.get("rest") or [] if r.get("mode") == "server"), None)


def capability_gaps(cs: dict[str, Any], *, observation_code_param: str = "combo-code",
                    post: bool = False) -> list[Gap]:
    """What the server's CapabilityStatement does not declare of what the adapter needs."""
    gaps: list[Gap] = []
    version = str(cs.get("fhirVersion", ""))
    if not version.startswith("4.0"):
        gaps.append(Gap("error", f"fhirVersion is '{version or 'missing'}'", "the adapter reads FHIR R4 (4.0.x)"))
    rest = _server_rest(cs)
    if rest is None:
        return [*gaps, Gap("error", "no rest entry with mode=server", "the server declares no REST API")]
    resources = {r.get("type"): r for r in rest.get("resource") or []}
    no_last_updated: list[str] = []
    no_history: list[str] = []
    for rtype, (params, lost) in READS.items():
        needed = list(params)
        if rtype == "Observation" and observation_code_param not in ("none", "auto"):
            needed.append(observation_code_param)
        level: Literal["error", "warning"] = "error" if rtype in CRITICAL else "warning"
        res = resources.get(rtype)
        if res is None or "search-type" not in interactions(res):
            gaps.append(Gap(level, f"{rtype}: no search", lost))
            continue
        declared = search_params(res)
        for p in needed:
            if p in declared:
                continue
            if rtype == "Observation" and p == observation_code_param:
                gaps.append(Gap("error", f"Observation: search parameter '{p}' not declared",
                                "set observation_code_param: code (or none) in the --config file"))
            else:
                gaps.append(Gap(level, f"{rtype}: search parameter '{p}' not declared", lost))
        if rtype in SUBJECT_DATA and "_lastUpdated" not in declared:
            no_last_updated.append(rtype)
        if rtype in SUBJECT_DATA and "history-type" not in interactions(res):
            no_history.append(rtype)
    if no_last_updated:
        gaps.append(Gap("warning", f"_lastUpdated not declared on {', '.join(no_last_updated)}",
                        "--since may not find changes of these types: a server that refuses or ignores the "
                        "parameter has every subject read in full, as a run without --since"))
    if no_history:
        gaps.append(Gap("warning", f"no history-type on {', '.join(no_history)}",
                        "under --since a deletion alone is picked up by the next full run"))
    # what --since also asks (source/server/incremental.py): a subject's Specimens changed, a Medication its
    # records name changed
    for rtype, params, what in (("Specimen", ("patient", "_lastUpdated"), "a Specimen change"),
                                ("Medication", ("_lastUpdated",), "a Medication change"),
                                *((t, ("medication",), f"a Medication change (on {t})") for t in MEDICATION_TYPES)):
        if not searchable(cs, rtype, params):
            gaps.append(Gap("warning", f"{rtype}: no search by {', '.join(params)}",
                            f"under --since {what} alone is picked up by the next full run"))
    rs = resources.get("ResearchSubject") or {}
    if "ResearchSubject:individual" not in (rs.get("searchInclude") or []):
        gaps.append(Gap("warning", "ResearchSubject: _include ResearchSubject:individual not declared",
                        "Patients are read by _id instead (one request per 50 subjects)"))
    if post:
        if "transaction" not in {i.get("code") for i in rest.get("interaction") or []}:
            gaps.append(Gap("error", "no system transaction interaction", "--post cannot write results"))
        for rtype in ("Observation", "Device"):
            res = resources.get(rtype) or {}
            if "create" not in {i.get("code") for i in res.get("interaction") or []} or not res.get(
                    "conditionalCreate"):
                gaps.append(Gap("error", f"{rtype}: no conditional create",
                                "--post cannot create results without risking duplicates (If-None-Exist)"))
        if "update" not in {i.get("code") for i in (resources.get("Observation") or {}).get("interaction") or []}:
            gaps.append(Gap("error", "Observation: no update", "--post cannot update or retract results"))
        prov = resources.get("Provenance") or {}
        if "create" not in {i.get("code") for i in prov.get("interaction") or []}:
            gaps.append(Gap("error", "Provenance: no create", "--post cannot record where results came from"))
        elif not prov.get("conditionalCreate"):
            gaps.append(Gap("warning", "Provenance: no conditional create",
                            "a write sent again (its answer was lost) may leave its Provenance twice "
                            "(If-None-Exist: _tag=…)"))
    return gaps


def bulk_export_levels(cs: dict[str, Any]) -> list[str]:
    """The levels at which the CapabilityStatement declares the Bulk Data ``$export`` operation (``system``,
    ``Patient``, ``Group``): as a system operation (named by its definition: export, patient-export,
    group-export) or on the Patient/Group resource; empty when it declares none."""
    rest = _server_rest(cs) or {}
    levels: set[str] = set()
    for op in rest.get("operation") or []:
        if not isinstance(op, dict) or str(op.get("name", "")).lstrip("$") not in ("export", "bulk-export"):
            continue
        definition = str(op.get("definition", ""))
        levels.add("Patient" if definition.endswith("patient-export") else "Group"
                   if definition.endswith("group-export") else "system")
    for res in rest.get("resource") or []:
        if res.get("type") in ("Patient", "Group") and any(
                isinstance(op, dict) and str(op.get("name", "")).lstrip("$") == "export"
                for op in res.get("operation") or []):
            levels.add(str(res["type"]))
    return sorted(levels)


async def study_roster(client: FhirClient, study: Study, log: RunLog,
                       roster_csv: Path | None = None) -> tuple[RosterInput, Roster]:
    """The roster as a run reads and builds it from a server: its ResearchStudy and ResearchSubjects, and the
    rows of the site's roster CSV reconciled into them (the Patients the CSV names read by identifier). A CSV
    the run could not read raises :class:`~fhir_adapter.roster.site_csv.RosterCsvError`; its rows the run would
    not process are in ``RosterInput.roster_rows_skipped``, its warnings in ``log``."""
    from fhir_adapter.roster.enrollees import build_roster
    from fhir_adapter.roster.site_csv import csv_identifiers, infusion_dates, reconcile
    from fhir_adapter.source.server.roster import read_roster

    wanted = sorted(csv_identifiers(roster_csv)) if roster_csv is not None else []
    data = await read_roster(client, study, log, str(client.base_url).rstrip("/"), wanted)
    if roster_csv is not None:
        data = reconcile(data, roster_csv, study, log)
        infusion_dates(roster_csv, study, log)  # its warnings: an infusion_date a run would not use
    return data, build_roster(data, study, log)


async def probe_study(client: FhirClient, study: Study, log: RunLog,
                      roster_csv: Path | None = None) -> tuple[SearchTiming | str | None, str | None]:
    """The roster as a run reads and builds it (:func:`study_roster`, with the site's roster CSV when it enrols
    from one), and the Observation searches timed on its first enrolled patients
    (:func:`~fhir_adapter.source.server.probe.time_observation_searches`). (timing, None) — the timing is the
    error's text when those searches failed (a run would fail that subject, not stop); or (None, why) when the run
    would enrol nobody — no ResearchStudy of the study, no subject with an enrolled status, no usable row of the
    roster CSV — or could not read the CSV, naming what it found, as the run's own error does. Reading the roster
    failing raises, as it stops a run."""
    from fhir_adapter.fhir.errors import FhirAuthError, FhirError, FhirServerUnavailable
    from fhir_adapter.roster.check import nobody_enrolled
    from fhir_adapter.roster.enrollees import RosterError
    from fhir_adapter.roster.site_csv import RosterCsvError
    from fhir_adapter.source.server.probe import PROBE_PATIENTS, time_observation_searches
    from fhir_adapter.source.server.searches import SearchPlan

    try:
        data, roster = await study_roster(client, study, log, roster_csv)
    except RosterCsvError:
        raise  # the CSV cannot be read: said as such, not as "nobody enrolled"
    except RosterError as exc:
        return None, str(exc)
    if (why := nobody_enrolled(data, roster, study, log, roster_csv=roster_csv is not None)) is not None:
        return None, why
    pids = sorted(roster.enrolled)[:PROBE_PATIENTS]
    try:
        return await time_observation_searches(client, SearchPlan(study, "auto"), pids), None
    except (FhirServerUnavailable, FhirAuthError):
        raise  # the server seen down, the credentials refused: as a run stops
    except FhirError as exc:
        return str(exc), None
