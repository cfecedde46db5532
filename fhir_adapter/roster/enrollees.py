"""Who is in the trial: enrolled subjects of the study, their subject ID, arm, and Day 1.

Enrolled = a ResearchSubject of the study (ResearchStudy whose identifier value is the study id, or a
site-level ResearchStudy ``partOf`` it — the FHIR-to-CDISC mapping IG's STUDYID rule) with a status listed
in ``study.enrolled_statuses``. Data of anyone else is never read past this point, and never written. A subject
who took part and left (a status in ``study.left_statuses``) is kept apart (:attr:`Roster.left`): never read,
carried forward from the last run that read it (docs/clinical-rules.md#withdrawn-subjects).
Day 1 = the date of the completed infusion Procedure (docs/clinical-rules.md#day-1).
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from fhir_adapter.crf.models import SourceRef
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.fhir.versions import version_key
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.cdisc_details import race_ethnicity
from fhir_adapter.roster import subject_ids
from fhir_adapter.source.base import RosterInput, ref_id
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import site_date
from fhir_adapter.terminology.codes import SID_RESULT


class RosterError(RuntimeError):
    """The study itself cannot be found: nothing can run."""


@dataclass(frozen=True)
class Enrollee:
    subject_id: str
    patient_id: str
    research_subject: SourceRef
    status: str
    arm: str | None
    consent_date: dt.date | None
    site: str | None
    sex: str
    birth_date: dt.date | None
    day1: dt.date | None = None
    infusion: SourceRef | None = None
    day1_source: str | None = None  # where Day 1 came from (fhir_adapter/roster/day1.py)
    end_of_study: dt.date | None = None
    infusion_time: dt.datetime | None = None
    site_study: str | None = None   # identifier of the site-level ResearchStudy the subject is enrolled in
    race: str | None = None
    ethnicity: str | None = None
    investigator_id: str | None = None    # identifier of the principalInvestigator of the study enrolled in
    investigator_name: str | None = None  # that investigator's name (contained Practitioner) or the display
    death_date: dt.date | None = None     # Patient.deceasedDateTime
    deceased: bool | None = None          # Patient.deceased[x]: True (date or true), False, None (not sent)
    actual_arm: str | None = None         # ResearchSubject.actualArm: the arm the subject actually received


@dataclass
class Roster:
    study_ids: set[str]
    enrolled: dict[str, Enrollee]  # by patient id
    excluded: dict[str, int]       # ResearchSubject status -> count
    #: subjects who took part and left (``study.left_statuses``: withdrawn, off-study), by subject ID: never read;
    #: the pipeline carries forward the CRF of the last run that read them (docs/clinical-rules.md#withdrawn-subjects)
    left: dict[str, Enrollee] = field(default_factory=dict)
    #: subject ID -> why a subject who left cannot be carried forward (its ResearchSubjects name different
    #: patients, or none, or its patient is enrolled under another subject ID)
    left_unsure: dict[str, str] = field(default_factory=dict)

    @property
    def patient_ids(self) -> set[str]:
        return set(self.enrolled)


def _identifier_matches(res: dict[str, Any], value: str, system: str | None) -> bool:
    return any(
        isinstance(i, dict) and i.get("value") == value and (system is None or i.get("system") == system)
        for i in res.get("identifier") or []
    )


def _study_ids(data: RosterInput, study: Study, log: RunLog) -> set[str]:
    """The ResearchStudy ids of the study. With ``identifier_system`` (study.yaml, or the site overlay's
    ``study_identifier_system``), a study carrying the value under another system (or none) is not the study:
    when no study matches, the run stops naming it. Matched on the identifier value alone (no
    ``identifier_system``), the match must be unambiguous: studies carrying the value under different systems
    stop the run."""
    info = study.info
    where = study.root / "study.yaml"
    matches = [s for s in data.studies
               if isinstance(s.get("id"), str) and _identifier_matches(s, info.id, info.identifier_system)]
    if not matches and info.identifier_system is not None:
        other = [(s, i) for s in data.studies for i in s.get("identifier") or []
                 if isinstance(i, dict) and i.get("value") == info.id]
        if other:
            named = "; ".join(f"ResearchStudy/{s.get('id')} (system {i.get('system') or 'none'}, value {info.id})"
                              for s, i in other)
            system = other[0][1].get("system")
            fix = (f"If that is the hospital's system for this study, set study_identifier_system: {system} in the "
                   f"site overlay (--site mappings/sites/<site>.yaml), or study.identifier_system in {where}") \
                if system else (
                   "Its identifier has no system, so nothing tells it from another study with the same value: ask "
                   "the hospital to send the system in ResearchStudy.identifier (then set study_identifier_system "
                   "to it in the site overlay), or, knowingly, remove study.identifier_system from "
                   f"{where} to match on the value alone (a warning on every run)")
            raise RosterError(
                f"no ResearchStudy with identifier {info.identifier_system}|{info.id} in the source: {named} "
                f"carries the study's value under another system, so it is not taken for this study and none of "
                f"its subjects is enrolled. {fix}")
    if not matches:
        found = sorted({i.get("value", "?") for s in data.studies for i in s.get("identifier") or []})
        raise RosterError(
            f"no ResearchStudy with identifier '{info.id}' in the source (found: {found or 'none'}). "
            f"Check study.id in {where}, or that the export includes ResearchStudy; an EHR "
            "that holds no research resources enrols from the site roster: pass --roster-csv roster.csv"
        )
    if info.identifier_system is None:
        systems = {f"ResearchStudy/{s['id']}": sorted({str(i.get("system") or "no system")
                                                        for i in s.get("identifier") or []
                                                        if isinstance(i, dict) and i.get("value") == info.id})
                   for s in matches}
        if len({tuple(v) for v in systems.values()}) > 1 or any(len(v) > 1 for v in systems.values()):
            named = "; ".join(f"{ref} ({', '.join(v)})" for ref, v in sorted(systems.items()))
            raise RosterError(
                f"the study identifier '{info.id}' is ambiguous: {named}. Set study.identifier_system in "
                f"{where} to the system of the study's own identifier.")
        log.warn(f"ResearchStudy matched on the identifier value '{info.id}' alone; set study.identifier_system "
                 "in study.yaml so a study with the same value under another system is never taken for it",
                 rule="study-identifier-system")
    ids = {str(s["id"]) for s in matches}
    return ids | {s["id"] for s in data.studies
                  if ref_id((s.get("partOf") or [{}])[0].get("reference"), "ResearchStudy", data.base) in ids}


@dataclass(frozen=True)
class _Claim:
    """An enrolled-status ResearchSubject of the study, before ambiguity is ruled out."""

    rs: dict[str, Any]
    rid: str
    status: str
    patient_id: str
    patient: dict[str, Any]
    subject_id: str


def is_owned(resource: dict[str, Any]) -> bool:
    """A resource the adapter made (an identifier in its system): a ResearchSubject from the roster CSV."""
    return any(i.get("system") == SID_RESULT for i in resource.get("identifier") or [])


def _claimant(c: _Claim) -> str:
    """A ResearchSubject as whoever must correct it knows it: the EHR's by its id, the adapter's by its CSV row."""
    return f"the roster CSV row of subject {c.subject_id}" if is_owned(c.rs) else f"ResearchSubject/{c.rid}"


def _look_alike(subject_id: str) -> str:
    """What a subject ID is to a reader: without surrounding blanks, in one Unicode form (NFC). Two subject IDs
    alike in this are one subject ID claimed twice. (IDs that differ in letter case only are two subjects whose
    file names clash on some disks: the second one fails naming both, job/outpaths.py.)"""
    return unicodedata.normalize("NFC", subject_id).strip()


def _ambiguous(claims: list[_Claim], data: RosterInput) -> dict[str, tuple[str, str, bool]]:
    """ResearchSubject id -> (rule, reason, whether a roster CSV row is among the claimants) for every claim the
    roster cannot attribute to one person: a subject ID claimed by several ResearchSubjects, a Patient enrolled
    by several, or a Patient the source holds in differing copies. Every claimant is refused, never the first
    one kept."""
    by_sid: dict[str, list[_Claim]] = {}
    by_pid: dict[str, list[_Claim]] = {}
    for c in claims:
        by_sid.setdefault(_look_alike(c.subject_id), []).append(c)
        by_pid.setdefault(c.patient_id, []).append(c)
    out: dict[str, tuple[str, str, bool]] = {}
    for group in by_sid.values():
        if len(group) > 1:
            named = ", ".join(f"{_claimant(c)} (Patient/{c.patient_id})" for c in group)
            csv = any(is_owned(c.rs) for c in group)
            ids = sorted({c.subject_id for c in group})
            what = f"subject ID {ids[0]} is" if len(ids) == 1 else \
                (f"subject IDs {', '.join(repr(i) for i in ids)}, which differ only in Unicode form or surrounding "
                 "blanks (one subject ID to a reader and to a data manager's tools), are")
            for c in group:
                out[c.rid] = ("duplicate-subject-id", f"{what} claimed by {named}", csv)
    for pid, group in by_pid.items():
        if len(group) > 1:
            named = ", ".join(f"{_claimant(c)} (subject {c.subject_id})" for c in group)
            csv = any(is_owned(c.rs) for c in group)
            for c in group:
                out.setdefault(c.rid, ("duplicate-subject", f"Patient/{pid} is enrolled twice in the study: {named}",
                                       csv))
        if pid in data.duplicate_patients:
            where = ", ".join(data.duplicate_patients[pid])
            for c in group:
                out.setdefault(c.rid, ("duplicate-patient",
                                       f"the source holds differing Patient resources with id {pid} ({where})", False))
    return out


def build_roster(data: RosterInput, study: Study, log: RunLog) -> Roster:
    info = study.info
    study_ids = _study_ids(data, study, log)
    site_studies = {str(s["id"]): _first_value(s.get("identifier") or []) or str(s["id"])
                    for s in data.studies if s.get("id") in study_ids and s.get("partOf")}
    investigators = {str(s["id"]): _investigator(s) for s in data.studies if s.get("id") in study_ids}
    excluded: dict[str, int] = {}
    claims: list[_Claim] = []
    left_rss: list[dict[str, Any]] = []
    for rs in data.subjects:
        if ref_id((rs.get("study") or {}).get("reference"), "ResearchStudy", data.base) not in study_ids:
            continue
        rid = rs.get("id")
        problem = r4_problem(rs)
        if problem:
            log.reject("ResearchSubject", rid, "r4-invalid", problem, "correct the ResearchSubject in the EHR", raw=rs)
            continue
        status = rs.get("status", "")
        if status not in info.enrolled_statuses:  # withdrawn, off-study…: docs/clinical-rules.md#withdrawn-subjects
            excluded[status] = excluded.get(status, 0) + 1
            if status in info.left_statuses:
                left_rss.append(rs)
            continue
        ref = (rs.get("individual") or {}).get("reference")
        pid = ref_id(ref, "Patient", data.base)
        patient = data.patients.get(pid or "")
        if pid is None or patient is None:
            log.reject("ResearchSubject", rid, "unknown-patient",
                       f"individual {ref} is not a Patient of this source" if pid is None else
                       f"individual Patient/{pid} is not in the source",
                       "export the Patient with its ResearchSubject and reference it as Patient/<id>", raw=rs)
            continue
        sid = subject_ids.subject_id(rs, study.subject_id_rule)
        if sid is None:
            reason, fix = subject_ids.missing_fix(rs, study)
            log.reject("ResearchSubject", rid, "no-subject-id", reason, fix)
            continue
        claims.append(_Claim(rs=rs, rid=str(rid), status=status, patient_id=pid, patient=patient, subject_id=sid))
    refused = _ambiguous(claims, data)
    enrolled: dict[str, Enrollee] = {}
    for c in claims:
        if c.rid in refused:
            rule, reason, from_csv = refused[c.rid]
            log.reject("ResearchSubject", c.rid, rule, f"{reason}: none of them is processed",
                       "correct the roster CSV (or the EHR, where one of them is the EHR's ResearchSubject) so that "
                       "each subject ID names one patient and each patient one subject ID" if from_csv else
                       "correct the EHR so that each subject ID belongs to one ResearchSubject of one Patient",
                       subject_id=c.subject_id)
            continue
        enrolled[c.patient_id] = _enrollee(c, data, study, investigators, site_studies, log)
    left, unsure = _leavers(left_rss, enrolled, data, study)
    for sid in unsure:  # a subject who left and an enrolled one whose IDs a reader cannot tell apart: neither
        twin = next((e for e in enrolled.values() if e.subject_id != sid
                     and _look_alike(e.subject_id) == _look_alike(sid)), None)
        if twin is not None:
            del enrolled[twin.patient_id]
            log.reject("ResearchSubject", twin.research_subject.id, "duplicate-subject-id",
                       f"subject ID {twin.subject_id!r} differs only in Unicode form or surrounding blanks from "
                       f"{sid!r}, a subject who left the study: none of them is processed",
                       "correct the EHR so that each subject ID belongs to one ResearchSubject of one Patient",
                       subject_id=twin.subject_id)
    log.count("roster.enrolled", len(enrolled))
    for status, n in excluded.items():
        log.count(f"roster.excluded.{status or 'no-status'}", n)
    return Roster(study_ids=study_ids, enrolled=enrolled, excluded=excluded, left=left, left_unsure=unsure)


def _leavers(rss: list[dict[str, Any]], enrolled: dict[str, Enrollee], data: RosterInput,
             study: Study) -> tuple[dict[str, Enrollee], dict[str, str]]:
    """The subjects who left, by subject ID, from their ResearchSubjects alone (their Patient need not be in the
    source: nothing of them is read), and the subject IDs that cannot be carried forward, with why. A subject ID
    enrolled under another ResearchSubject is the enrolled subject (a patient enrolled again); several
    ResearchSubjects of one subject ID and one patient give the latest version's status and dates."""
    enrolled_sids = {e.subject_id for e in enrolled.values()}
    alike = {_look_alike(s): s for s in enrolled_sids}
    by_sid: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
    unsure: dict[str, str] = {}
    for rs in rss:
        sid = subject_ids.subject_id(rs, study.subject_id_rule)
        if sid is not None and sid not in enrolled_sids and _look_alike(sid) in alike:
            unsure[sid] = (f"its subject ID differs only in Unicode form or surrounding blanks from the enrolled "
                           f"subject {alike[_look_alike(sid)]!r} (one subject ID to a reader)")
        elif sid is not None and sid not in enrolled_sids:
            pid = ref_id((rs.get("individual") or {}).get("reference"), "Patient", data.base)
            by_sid.setdefault(sid, []).append((rs, pid))
    left: dict[str, Enrollee] = {}
    for sid, group in by_sid.items():
        named = ", ".join(f"ResearchSubject/{rs.get('id')}" for rs, _ in group)
        pids = {pid for _, pid in group}
        if None in pids:
            unsure[sid] = f"{named} names no Patient (individual)"
        elif len(pids) > 1:
            unsure[sid] = f"{named} name different patients ({', '.join(sorted(f'Patient/{p}' for p in pids))})"
        elif (pid := str(next(iter(pids)))) in enrolled:
            unsure[sid] = f"its Patient/{pid} is enrolled as subject {enrolled[pid].subject_id}"
        else:
            rs = max((rs for rs, _ in group), key=lambda r: (version_key(r), str(r.get("id"))))
            period = rs.get("period") or {}
            left[sid] = Enrollee(
                subject_id=sid, patient_id=pid, status=str(rs.get("status")), arm=rs.get("assignedArm"),
                research_subject=_reference(rs),
                consent_date=_date(period.get("start"), study), end_of_study=_date(period.get("end"), study),
                site=None, sex="U", birth_date=None, actual_arm=rs.get("actualArm"))
    return left, unsure


def _reference(rs: dict[str, Any]) -> SourceRef:
    """The ResearchSubject as the CRF cites it (DM's source): id and version."""
    return SourceRef(resource_type="ResearchSubject", id=str(rs.get("id")),
                     version=(rs.get("meta") or {}).get("versionId"))


def _enrollee(c: _Claim, data: RosterInput, study: Study, investigators: dict[str, tuple[str | None, str | None]],
              site_studies: dict[str, str], log: RunLog) -> Enrollee:
    """The :class:`Enrollee` of one ResearchSubject the roster keeps."""
    rs, patient = c.rs, c.patient
    enrolled_in = str(ref_id((rs.get("study") or {}).get("reference"), "ResearchStudy", data.base))
    inv_id, inv_name = investigators.get(enrolled_in, (None, None))
    death_date, deceased = _death(patient, study)
    consent = _date((rs.get("period") or {}).get("start"), study)
    return Enrollee(
        subject_id=c.subject_id,
        patient_id=c.patient_id,
        research_subject=_reference(rs),
        status=c.status,
        arm=rs.get("assignedArm"),
        actual_arm=rs.get("actualArm"),
        consent_date=consent,
        end_of_study=_date((rs.get("period") or {}).get("end"), study),
        site=_site(patient, data),
        sex={"male": "M", "female": "F"}.get(patient.get("gender", ""), "U"),
        birth_date=_birth_date(patient, c.patient_id, c.subject_id, consent, study, log),
        site_study=site_studies.get(enrolled_in),
        race=race_ethnicity(patient)[0],
        ethnicity=race_ethnicity(patient)[1],
        investigator_id=inv_id, investigator_name=inv_name, death_date=death_date, deceased=deceased,
    )


def _date(value: Any, study: Study) -> dt.date | None:
    return site_date(value, study.info.timezone)


#: an age at consent above this is no one's: the birth date is a data-entry error (e.g. 0001-01-01)
MAX_AGE_YEARS = 120


def _birth_date(patient: dict[str, Any], pid: str, subject_id: str, consent: dt.date | None, study: Study,
                log: RunLog) -> dt.date | None:
    """``Patient.birthDate`` as a date for DM's AGE, None — with a warning ``birth-date`` — when it is not a full
    date, falls after consent, or makes the subject older than :data:`MAX_AGE_YEARS` at consent: an age read from
    it would be wrong (−75 for 2099-01-01)."""
    sent = patient.get("birthDate")
    if sent is None:
        return None
    birth = _date(sent, study)
    problem = ("is not a full date" if birth is None else
               f"is after consent ({consent})" if consent is not None and birth > consent else
               f"makes the subject older than {MAX_AGE_YEARS} at consent ({consent})"
               if consent is not None and _years(birth, consent) > MAX_AGE_YEARS else None)
    if problem is None:
        return birth
    log.warn(f"birthDate {sent!r} {problem}: AGE is left empty", resource=f"Patient/{pid}", subject_id=subject_id,
             rule="birth-date", fix="correct Patient.birthDate in the EHR")
    return None


def _years(birth: dt.date, on: dt.date) -> int:
    """Whole years from ``birth`` to ``on`` (an age)."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _site(patient: dict[str, Any], data: RosterInput) -> str | None:
    """SITEID from the Patient's managing organisation: the site number — the identifier the reference carries,
    else the first identifier of the Organization it names (read by the source with the roster) — else the
    Organization's id, else the reference's display (docs/cdisc-mapping.md)."""
    org = patient.get("managingOrganization") or {}
    oid = ref_id(org.get("reference"), "Organization", data.base)
    number = _first_value([org.get("identifier")])
    if number is None and oid in data.organizations:
        number = _first_value(data.organizations[oid].get("identifier") or [])
    return number or oid or org.get("display")


def _first_value(identifiers: list[Any]) -> str | None:
    """The value of the first Identifier that has one (the rule of a site-level ResearchStudy's identifier too)."""
    return next((str(i["value"]) for i in identifiers if isinstance(i, dict) and i.get("value")), None)


def _investigator(research_study: dict[str, Any]) -> tuple[str | None, str | None]:
    """(identifier value, name) of a ResearchStudy's principalInvestigator (the FHIR-to-CDISC IG's DM.INVID:
    ``study.resolve().principalInvestigator.resolve().identifier``): resolved when the Practitioner or
    PractitionerRole is contained in the ResearchStudy, else the Reference's own ``identifier`` and ``display``."""
    pi = research_study.get("principalInvestigator")
    if not isinstance(pi, dict):
        return None, None
    ref = pi.get("reference")
    target: dict[str, Any] = {}
    if isinstance(ref, str) and ref.startswith("#"):
        target = next((c for c in research_study.get("contained") or []
                       if isinstance(c, dict) and c.get("id") == ref[1:]), {})
    ids = [i for i in target.get("identifier") or [] if isinstance(i, dict) and i.get("value")]
    ident = ids[0] if ids else pi.get("identifier")
    value = ident.get("value") if isinstance(ident, dict) else None
    return (str(value) if value else None), _person_name(target) or pi.get("display")


def _person_name(resource: dict[str, Any]) -> str | None:
    for name in resource.get("name") or []:
        if isinstance(name, dict):
            if name.get("text"):
                return str(name["text"])
            parts = [*(name.get("given") or []), name.get("family") or ""]
            text = " ".join(str(x) for x in parts if x)
            if text:
                return text
    return None


def _death(patient: dict[str, Any], study: Study) -> tuple[dt.date | None, bool | None]:
    """Patient.deceased[x]: (date of death, deceased) — a deceasedDateTime is a death on that date (in the site
    time zone), deceasedBoolean says only whether; neither sent: (None, None)."""
    if "deceasedDateTime" in patient:
        return _date(patient.get("deceasedDateTime"), study), True
    flag = patient.get("deceasedBoolean")
    return None, flag if isinstance(flag, bool) else None
