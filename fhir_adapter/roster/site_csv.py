"""A site roster CSV reconciled into ResearchSubjects, for EHRs that hold no ResearchSubject.

Columns (header row required; extra columns ignored)::

    subject_id,patient_identifier,consent_date,arm,status
    101-001,https://hospital.example.org/site-101/mrn|MRN0001,2024-01-10,DL1,follow-up

``patient_identifier`` is ``system|value`` (or a bare value, matched against any Patient identifier).
An optional ``infusion_date`` column (ISO date or date-time) gives Day 1 for sites whose infusion is recorded
in another system; the EHR's own infusion record wins when there is one (fhir_adapter/roster/day1.py).

When the EHR holds no ResearchStudy of the study (a hospital whose EHR knows nothing of the trial), the study's
own definition in ``study.yaml`` stands in for it: an adapter-owned ResearchStudy (identifier ``study.id``,
a deterministic id) is created and written back with the first subject's results.
Reconciliation is idempotent: a subject the EHR already holds a ResearchSubject for (same subject ID) is
left to the EHR; any other row becomes a ResearchSubject **owned by the adapter** — it carries a second
identifier in the adapter's system, so the write-back may create and later update it (status, actualArm)
with ``PUT ResearchSubject/<id>`` (a deterministic id, so result Observations can reference it in the same
transaction), and never touches a ResearchSubject it did not create (the sink checks the identifier of
whatever the server holds under that id first).
"""

from __future__ import annotations

import csv
import re
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any, TextIO

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.day1 import RosterInfusion
from fhir_adapter.roster.enrollees import RosterError, is_owned
from fhir_adapter.roster.subject_ids import subject_id, subject_id_system
from fhir_adapter.source.base import RosterInput
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import DateError, parse_fhir_date
from fhir_adapter.terminology.codes import SD_RESEARCH_STUDY, SD_RESEARCH_SUBJECT, SID_RESULT
from fhir_adapter.writeback.identifiers import result_identifier

REQUIRED = ("subject_id", "patient_identifier", "consent_date", "arm", "status")
#: ResearchSubject.status (FHIR R4 required binding research-subject-status)
R4_STATUSES = ("candidate", "eligible", "follow-up", "ineligible", "not-registered", "off-study", "on-study",
               "on-study-intervention", "on-study-observation", "pending-on-study", "potential-candidate",
               "screening", "withdrawn")
#: a consent_date as the guide asks for it: a date, or a FHIR dateTime with its offset (Python reads 20240117,
#: 2024-W03-3 or a time without offset too; FHIR does not, and ResearchSubject.period.start is a FHIR dateTime)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2}))?")
_NS = uuid.UUID("0b3c1f2e-8d4a-5e6f-9a1b-2c3d4e5f6a7b")


class RosterCsvError(RosterError):
    """The roster CSV cannot be read as a roster (a missing column): the message names the file and the fix."""


def owned_identifier(study: Study, subject_id: str) -> str:
    return result_identifier(study.info.id, subject_id, "subject", "research-subject")


def _find_patients(patients: dict[str, dict[str, Any]], ident: str) -> list[str]:
    """The ids of every Patient holding ``ident`` (``system|value``, or a bare value: any system), sorted."""
    system, _, value = ident.rpartition("|")
    return sorted(pid for pid, p in patients.items()
                  if any(isinstance(i, dict) and i.get("value") == value and (not system or i.get("system") == system)
                         for i in p.get("identifier") or []))


class _Lines:
    """A file's lines, counted as the CSV reader takes them (a record may span several)."""

    def __init__(self, fh: TextIO) -> None:
        self.fh, self.taken = fh, 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self.fh)
        self.taken += 1
        return line


def read_roster(fh: TextIO) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The column names of a roster CSV and its rows as (the line the row starts on, {column: cell}). Column names
    are read as the guide writes them whatever a spreadsheet did to them (``Subject_ID``, a space or a quoted
    name after ``, ``); blank lines are skipped but counted, as are cells holding a line break or a quote left
    open; cells beyond the header's are not any column's, a missing cell is empty."""
    lines = _Lines(fh)
    records = csv.reader(lines, skipinitialspace=True)
    header: list[str] = []
    rows: list[tuple[int, dict[str, str]]] = []
    while True:
        start = lines.taken + 1
        try:
            record = next(records)
        except StopIteration:
            return header, rows
        if not any(cell.strip() for cell in record):
            continue
        if not header:
            header = [name.strip().lower() for name in record]
            continue
        rows.append((start, {name: (record[i] if i < len(record) else "") for i, name in enumerate(header)}))


def _reader(fh: TextIO) -> list[dict[str, str]]:
    return [row for _, row in read_roster(fh)[1]]


def csv_subject_ids(path: Path) -> frozenset[str]:
    """The subject IDs a roster CSV names (its rows enrol them, or date their infusion)."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            return frozenset(v for row in _reader(fh) if (v := (row.get("subject_id") or "").strip()))
    except (OSError, UnicodeDecodeError, csv.Error):
        return frozenset()


def csv_identifiers(path: Path) -> frozenset[str]:
    """The ``patient_identifier`` values of a roster CSV: the Patients a source must read besides those its
    ResearchSubjects name (an unreadable or malformed CSV is reported by :func:`reconcile`)."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            return frozenset(v for row in _reader(fh) if (v := (row.get("patient_identifier") or "").strip()))
    except (OSError, UnicodeDecodeError, csv.Error):
        return frozenset()


def row_status(row: dict[str, str]) -> str:
    """The row's status as an R4 code: spaces around it dropped, in lower case (``Follow-Up`` is ``follow-up``)."""
    return (row.get("status") or "").strip().lower()


def _one_row_per_subject(rows: list[tuple[int, dict[str, str]]], path: Path, data: RosterInput, log: RunLog,
                         held: Collection[str | None]) -> list[tuple[int, dict[str, str]]]:
    """The rows, a subject ID given on several lines once: the first of identical rows (a warning), none of rows
    that differ — which one is right cannot be told, so the subject is not processed (named with its lines).
    A subject the EHR's own ResearchSubject enrols (``held``) keeps its rows: the CSV does not count for it."""
    lines_of: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for n, row in rows:
        lines_of.setdefault((row.get("subject_id") or "").strip(), []).append((n, row))
    out: list[tuple[int, dict[str, str]]] = []
    for n, row in rows:
        sid = (row.get("subject_id") or "").strip()
        same = lines_of.get(sid, [])
        if not sid or len(same) == 1 or sid in held:
            out.append((n, row))
            continue
        if n != same[0][0]:
            continue
        where = f"{path}:{','.join(str(k) for k, _ in same)}"
        contents = {tuple((k, (v or "").strip()) for k, v in sorted(r.items(), key=lambda kv: str(kv[0])))
                    for _, r in same}
        if len(contents) == 1:
            log.warn(f"{where}: subject {sid} is given on {len(same)} identical rows; the first is used",
                     rule="roster-csv", subject_id=sid)
            out.append((n, row))
        else:
            message = f"{where}: subject {sid} is given on {len(same)} rows that differ: none is used"
            log.warn(message, rule="roster-csv", subject_id=sid)
            data.roster_rows_skipped[sid] = message
    return out


def _warn_disagreement(row: dict[str, str], rs: dict[str, Any], where: str, sid: str, log: RunLog) -> None:
    """A warning ``roster-csv-conflict`` when the row of a subject the EHR's own ResearchSubject enrols gives
    another arm, status or consent date than that ResearchSubject: the EHR's is used, and a data manager who
    keeps the CSV learns which of the two to correct."""
    period: dict[str, Any] = rs["period"] if isinstance(rs.get("period"), dict) else {}
    ehr: dict[str, Any] = {"arm": rs.get("assignedArm"), "status": rs.get("status"),
                           "consent_date": period.get("start")}
    csv_values = {"arm": (row.get("arm") or "").strip(), "status": row_status(row),
                  "consent_date": (row.get("consent_date") or "").strip()}

    def same(column: str) -> bool:  # a consent date: the same day, whether either gives a time or not
        theirs, ours = ehr[column], csv_values[column]
        return isinstance(theirs, str) and (theirs[:10] == ours[:10] if column == "consent_date" else theirs == ours)

    differ = [f"{column} {csv_values[column]!r} (EHR: {ehr[column]!r})" for column in ("arm", "status", "consent_date")
              if csv_values[column] and not same(column)]
    if differ:
        log.warn(f"{where}: subject {sid}: the roster CSV gives {'; '.join(differ)}; the EHR's "
                 f"ResearchSubject/{rs.get('id')} is used", rule="roster-csv-conflict", subject_id=sid,
                 resource=f"ResearchSubject/{rs.get('id')}",
                 fix="correct the EHR's ResearchSubject or the CSV row, whichever is wrong (the CSV stands in only "
                     "for subjects the EHR does not hold)")


def _row_problem(row: dict[str, str], data: RosterInput, study_id: str | None,
                 study: Study) -> tuple[str | None, str | None]:
    """(why the roster row is skipped, else None; the id of its Patient)."""
    empty = [c for c in REQUIRED if not (row.get(c) or "").strip()]
    if empty:  # a short row (fewer cells than the header) or a blank cell
        return f"no {', '.join(empty)}; the row is skipped until it has them", None
    consent = (row.get("consent_date") or "").strip()
    try:
        consent_ok = _ISO_DATE.fullmatch(consent) is not None and parse_fhir_date(consent, study.info.timezone).date
    except DateError:
        consent_ok = False
    if not consent_ok:
        return (f"consent_date {consent!r} is not a date; write YYYY-MM-DD (or a date-time with its offset, "
                "2024-01-17T09:30:00+01:00; the row is skipped until it is)"), None
    if row_status(row) not in R4_STATUSES:
        return (f"status {(row.get('status') or '').strip()!r} is not an R4 ResearchSubject status; write one of "
                f"{', '.join(R4_STATUSES)} (the row is skipped until it is)"), None
    ident = (row.get("patient_identifier") or "").strip()
    found = _find_patients(data.patients, ident)
    if not found:
        return "no Patient with identifier " + row.get("patient_identifier", ""), None
    if len(found) > 1:  # never the first of several: the subject's results would go to whichever came first
        fix = "merge the duplicate Patients in the EHR" if "|" in ident \
            else "write the identifier as system|value (the MRN's system), or merge the duplicate Patients in the EHR"
        named = ", ".join(f"Patient/{p}" for p in found)
        return (f"patient_identifier {ident!r} names {len(found)} Patients ({named}); the row is skipped until it "
                f"names one: {fix}"), None
    pid = found[0]
    if study_id is None:
        return "ResearchStudy not found", None
    return None, pid


def reconcile(data: RosterInput, path: Path, study: Study, log: RunLog) -> RosterInput:
    """Add a ResearchSubject for every roster row the EHR does not hold; returns ``data`` extended."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            header, rows = read_roster(fh)
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise RosterCsvError(f"{path}: missing column(s) {missing}; the header must have {list(REQUIRED)}")
    except UnicodeDecodeError as exc:
        raise RosterCsvError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the roster as UTF-8 "
                             "CSV (e.g. 'CSV UTF-8' in a spreadsheet program)") from None
    except csv.Error as exc:
        raise RosterCsvError(f"{path}: not a readable CSV ({exc}); save it as comma-separated UTF-8 CSV") from None
    system = subject_id_system(study)
    # the EHR's own ResearchSubjects win over the CSV; one the adapter wrote from this CSV before (--post) is
    # made again from the row as it is now (an edited row takes effect, the next --post updates it)
    owned_held = {subject_id(rs, study.subject_id_rule): rs for rs in data.subjects if is_owned(rs)}
    held = {subject_id(rs, study.subject_id_rule): rs for rs in data.subjects if not is_owned(rs)}
    study_system = study.info.identifier_system  # the value under another system is not the study
    study_id = next((s["id"] for s in data.studies
                     if any(i.get("value") == study.info.id and study_system in (None, i.get("system"))
                            for i in s.get("identifier") or [])), None)
    if study_id is None:
        owned_study = research_study_resource(study)
        data.studies.append(owned_study)
        study_id = owned_study["id"]
        log.count("roster_csv.research_study_from_study_yaml")
    rows = _one_row_per_subject(rows, path, data, log, held)
    for n, row in rows:
        sid = (row.get("subject_id") or "").strip()
        if not sid:
            log.warn(f"{path}:{n}: row without subject_id skipped", rule="roster-csv")
            continue
        if sid in held:
            log.count("roster_csv.held_by_ehr")
            _warn_disagreement(row, held[sid], f"{path}:{n}", sid, log)
            continue
        why, pid = _row_problem(row, data, study_id, study)
        if why is not None or pid is None:
            if sid in owned_held:  # the ResearchSubject an earlier run made from the row stands
                log.warn(f"{path}:{n}: subject {sid}: {why}; the ResearchSubject made from its earlier row is used",
                         rule="roster-csv", subject_id=sid)
                continue
            message = f"{path}:{n}: subject {sid}: {why}"
            log.warn(message, rule="roster-csv", subject_id=sid)
            status = row_status(row)
            if status not in R4_STATUSES or status in study.info.enrolled_statuses:  # enrolled, or not known:
                data.roster_rows_skipped[sid] = message                             # a subject not processed
            continue
        if sid in owned_held:
            data.subjects.remove(owned_held[sid])
        ident = [{"system": SID_RESULT, "value": owned_identifier(study, sid)}]
        if system:
            ident.insert(0, {"system": system, "value": sid})
        data.subjects.append({
            "resourceType": "ResearchSubject",
            "id": str(uuid.uuid5(_NS, study.info.id + "|" + sid)),
            "meta": {"profile": [SD_RESEARCH_SUBJECT]},
            "identifier": ident,
            "status": row_status(row),
            "period": {"start": row["consent_date"].strip()},
            "study": {"reference": f"ResearchStudy/{study_id}"},
            "individual": {"reference": f"Patient/{pid}"},
            "assignedArm": row["arm"].strip(),
        })
        log.count("roster_csv.created")
    return data


SID_RESEARCH_STUDY = "https://fhir-adapter.org/fhir/sid/research-study"


def research_study_resource(study: Study) -> dict[str, Any]:
    """The ResearchStudy of ``study.yaml``, owned by the adapter (for an EHR that holds none)."""
    return {
        "resourceType": "ResearchStudy",
        "id": str(uuid.uuid5(_NS, "ResearchStudy|" + study.info.id)),
        "meta": {"profile": [SD_RESEARCH_STUDY]},
        "identifier": [{"system": study.info.identifier_system or SID_RESEARCH_STUDY, "value": study.info.id},
                       {"system": SID_RESULT, "value": result_identifier(study.info.id, "study", "study",
                                                                         "research-study")}],
        "title": study.info.name or study.info.id,
        "status": "active",
    }


def infusion_dates(path: Path, study: Study, log: RunLog) -> dict[str, RosterInfusion]:
    """subject_id -> the ``infusion_date`` of the roster CSV (the column is optional)."""
    out: dict[str, RosterInfusion] = {}
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        header, rows = read_roster(fh)
        if "infusion_date" not in header:
            return out
        for n, row in rows:
            sid, value = (row.get("subject_id") or "").strip(), (row.get("infusion_date") or "").strip()
            if not sid or not value:
                continue
            try:
                d = parse_fhir_date(value, study.info.timezone)
            except DateError as exc:
                log.warn(f"{path}:{n}: subject {sid}: infusion_date {value!r} not used ({exc}); write YYYY-MM-DD "
                         "or an ISO date-time", rule="roster-csv", subject_id=sid)
                continue
            if d.partial or d.date is None:
                log.warn(f"{path}:{n}: subject {sid}: infusion_date {value!r} is not a full date; not used",
                         rule="roster-csv", subject_id=sid)
                continue
            out[sid] = RosterInfusion(date=d.date, where=f"{Path(path).name}:{n}", at=d.datetime)
    return out


def research_subject_resource(rs: dict[str, Any], infused: bool) -> dict[str, Any]:
    """The adapter-owned ResearchSubject as written back: ``actualArm`` set once the subject is infused,
    and a status before treatment moved to ``on-study-intervention`` by the infusion."""
    out = dict(rs)
    if infused:
        out["actualArm"] = rs.get("assignedArm")
        if out.get("status") in ("candidate", "eligible", "pending-on-study", "on-study", "screening"):
            out["status"] = "on-study-intervention"
    return out
