"""Condition / AllergyIntolerance → MH and Procedure (other than the study infusion) → PR, following the
FHIR-to-CDISC Joint Mapping IG (MH and PR rows; docs/cdisc-mapping.md).

* **MH** — every Condition and AllergyIntolerance of the subject whose onset (``onset[x]``, else
  ``recordedDate``) is before Day 1 (or undated, or with no Day 1 known): the subject's medical history. An
  event that starts on or after Day 1 is an adverse event, reported in AE, not here. ``entered-in-error``
  (verificationStatus) is not used; ``refuted`` gives MHOCCUR = N. MHENRTPT/ongoing from ``clinicalStatus``
  (active, recurrence, relapse → ongoing; inactive, remission, resolved → not).
* **PR** — every Procedure except the study infusion and lymphodepletion codes (EX) and ``entered-in-error``;
  ``not-done`` gives PROCCUR = N with PRREASND from ``statusReason``. PRDECOD is the display of a coding in a
  procedure dictionary (:func:`dictionary_term`), every coding is kept as sent (PRCODE), PRCAT is the
  category's text or display.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from fhir_adapter.crf.models import MedicalHistory, ProcedureRecord, SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.common import codings, first_code, first_text, identifier_value, latest
from fhir_adapter.mapping.references import mitigated_by, referenced_identifier, site_qualifiers
from fhir_adapter.study.timeline import DateError, FhirDate, parse_fhir_date, study_day
from fhir_adapter.terminology.codes import PROCEDURE_DICTIONARIES

if TYPE_CHECKING:
    from fhir_adapter.study.load import Study

ONGOING = {"active", "recurrence", "relapse"}
NOT_ONGOING = {"inactive", "remission", "resolved"}


def source_ref(r: dict[str, Any]) -> SourceRef:
    return SourceRef(resource_type=str(r.get("resourceType")), id=str(r.get("id")),
                     version=(r.get("meta") or {}).get("versionId"))


def _first_code(cc: Any) -> str | None:
    c = codings(cc)
    return f"{c[0][0]}|{c[0][1]}" if c else None


def _category(r: dict[str, Any]) -> str | None:
    cat = r.get("category")
    if isinstance(cat, list):  # Condition/Procedure: CodeableConcept list or AllergyIntolerance: code list
        first = cat[0] if cat else None
        if isinstance(first, str):
            return first
        return first_code(first) or first_text(first)
    return first_code(cat) or first_text(cat)


def _procedure_category(r: dict[str, Any]) -> str | None:
    """PRCAT: the text, else the coding display, of Procedure.category (R4: one CodeableConcept; the first when
    a list is sent); a bare code (SNOMED CT 387713003) is no readable category: None, counted by the caller."""
    cat = r.get("category")
    if isinstance(cat, list):
        cat = cat[0] if cat else None
    return first_text(cat)


def dictionary_term(cc: Any) -> str | None:
    """PRDECOD: the display of the first coding of Procedure.code in a procedure dictionary (SNOMED CT, then
    ICD-10-PCS, CPT, OPS: :data:`~fhir_adapter.terminology.codes.PROCEDURE_DICTIONARIES`); None for a code of
    the hospital's own catalogue only, or a dictionary coding without display (SDTMIG: no decode → null)."""
    displayed = _displayed(cc)
    for system in PROCEDURE_DICTIONARIES:
        for s, _, display in displayed:
            if s == system and display:
                return str(display)
    return None


def _subcategory(r: dict[str, Any]) -> str | None:
    """MHSCAT: the second category of a Condition (CodeableConcept list) or an AllergyIntolerance (code list),
    e.g. an allergy to a monoclonal antibody sent as ``medication`` and ``biologic``."""
    cat = r.get("category")
    if not isinstance(cat, list) or len(cat) < 2:
        return None
    second = cat[1]
    if isinstance(second, str):
        return second
    return first_code(second) or first_text(second)


#: R5 Procedure.occurrence[x] pre-adopted in R4 (the IG's PRDOSFRQ path ``extension('R5/occurrenceTiming')``)
R5_OCCURRENCE = ("http://hl7.org/fhir/5.0/StructureDefinition/extension-Procedure.occurrence",
                 "http://hl7.org/fhir/5.0/StructureDefinition/extension-Procedure.occurrenceTiming")
_PER_DAY = {"h": 24.0, "d": 1.0, "wk": 1 / 7, "mo": 1 / 30, "a": 1 / 365}


def _frequency_per_day(r: dict[str, Any]) -> float | None:
    """Sessions per day of a Procedure's R5 occurrence Timing: repeat.frequency per repeat.period periodUnit."""
    for ext in r.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") not in R5_OCCURRENCE:
            continue
        rep = (ext.get("valueTiming") or {}).get("repeat") or {}
        freq, period, unit = rep.get("frequency", 1), rep.get("period"), rep.get("periodUnit")
        if isinstance(freq, int) and isinstance(period, int | float) and period > 0 and unit in _PER_DAY:
            return round(freq / period * _PER_DAY[unit], 6)
    return None


class HistoryMapper:
    def __init__(self, study: Study, log: RunLog, meddra_systems: set[str]) -> None:
        self.study = study
        self.log = log
        self.tz = study.info.timezone
        self.meddra_systems = meddra_systems
        self.ex_codes = study.infusion_codes | study.lymphodepletion_codes

    def _date(self, value: Any, r: dict[str, Any], subject_id: str) -> FhirDate | None:
        if not isinstance(value, str):
            return None
        try:
            return parse_fhir_date(value, self.tz)
        except DateError as exc:
            self.log.warn(f"unreadable date {value!r}: {exc}", resource=f"{r.get('resourceType')}/{r.get('id')}",
                          subject_id=subject_id, rule="bad-date")
            return None

    def medical_history(self, resources: list[dict[str, Any]], subject_id: str,
                        day1: dt.date | None, participation_end: dt.date | None = None) -> list[MedicalHistory]:
        """Conditions and allergies before Day 1. One that began on or after Day 1 is not history: an
        AdverseEvent that names it (``resultingCondition``) is the AE; any other one is listed in the run
        report (warning ``condition-on-study``) for the investigator to judge whether it is an adverse event —
        up to ``participation_end`` (after it: counted only)."""
        out: list[MedicalHistory] = []
        of_events = {str(ref.get("reference")) for r in resources if r.get("resourceType") == "AdverseEvent"
                     for ref in r.get("resultingCondition") or [] if isinstance(ref, dict)}
        for r in latest(x for x in resources if x.get("resourceType") in ("Condition", "AllergyIntolerance")):
            if f"Condition/{r.get('id')}" in of_events:
                self.log.count("mh.not-used.adverse-event")  # the condition an AdverseEvent resulted in: AE
                continue
            verification = {c for _, c in codings(r.get("verificationStatus"))}
            if "entered-in-error" in verification:
                self.log.count("mh.not-used.entered-in-error")
                continue
            if self._not_history(r):
                self.log.count("mh.not-used.excluded")
                continue
            code = r.get("code")
            term = first_text(code)
            if not term:
                self.log.reject(str(r.get("resourceType")), r.get("id"), "no-code", "no code text or display",
                                "send code with its text or a coding display", subject_id=subject_id, raw=r)
                continue
            onset_s = r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start")
            onset = self._date(onset_s, r, subject_id)
            recorded = self._date(r.get("recordedDate"), r, subject_id)
            start = onset or recorded
            if day1 and start and start.date and start.date >= day1:
                if participation_end is not None and start.date > participation_end:
                    self.log.count("mh.not-used.after-end")
                else:
                    self.log.count("mh.not-used.on-study")  # on/after Day 1: an adverse event, not history
                    if "refuted" not in verification:
                        self._on_study(r, term, start.date, day1, subject_id)
                continue
            end = self._date(r.get("abatementDateTime") or (r.get("abatementPeriod") or {}).get("end")
                             or r.get("lastOccurrence"), r, subject_id)
            clinical = {c for _, c in codings(r.get("clinicalStatus"))}
            ongoing = True if clinical & ONGOING else (False if clinical & NOT_ONGOING else None)
            meddra = next(((c, d) for s, c, d in _displayed(code) if s in self.meddra_systems), None)
            kind = "allergy" if r.get("resourceType") == "AllergyIntolerance" else "condition"
            body = first_text((r.get("bodySite") or [None])[0])
            out.append(MedicalHistory(
                term=term, kind=kind, category=_category(r), subcategory=_subcategory(r), spid=identifier_value(r),
                code=_first_code(code),
                meddra_code=meddra[0] if meddra else None, meddra_term=meddra[1] if meddra else None,
                occurred="refuted" not in verification, ongoing=ongoing,
                recorded_date=recorded.date if recorded else None,
                start_date=onset.date if onset else None, start_partial=onset.partial if onset else None,
                end_date=end.date if end else None, end_partial=end.partial if end else None,
                body_site=body, source=source_ref(r),
            ))
        out.sort(key=lambda m: (m.start_date or dt.date.min, m.term, m.source.id))
        self.log.count("crf.mh", len(out))
        return out

    def _not_history(self, r: dict[str, Any]) -> bool:
        """A Condition whose category or code is one of the study's ``history_excluded_codes`` (social
        circumstances, administrative entries): not medical history, never exported."""
        excluded = self.study.history_excluded_codes
        if not excluded or r.get("resourceType") != "Condition":
            return False
        category = r.get("category")
        concepts: list[Any] = [*(category if isinstance(category, list) else []), r.get("code")]
        return any(c in excluded for cc in concepts for c in codings(cc))

    def _on_study(self, r: dict[str, Any], term: str, start: dt.date, day1: dt.date, subject_id: str) -> None:
        what = "allergy" if r.get("resourceType") == "AllergyIntolerance" else "condition"
        ref = f"{r.get('resourceType')}/{r.get('id')}"
        # R4 links an AdverseEvent to the Condition it resulted in (resultingCondition), never to an allergy
        fix = (f"if it is an adverse event, record an AdverseEvent whose resultingCondition is {ref}" if what ==
               "condition" else "if it is an adverse event (a new allergy), record it as an AdverseEvent; R4 cannot "
               "link an AdverseEvent to an AllergyIntolerance, so this allergy stays listed: review it once")
        self.log.warn(f"{what} '{term}' began on study day {study_day(start, day1)} ({start}), after Day 1, and no "
                      "AdverseEvent names it: it is not medical history, and not an AE of the trial unless the "
                      "EHR records one", resource=ref, subject_id=subject_id, rule="condition-on-study", fix=fix)

    def procedures(self, resources: list[dict[str, Any]], subject_id: str,
                   day1: dt.date | None) -> list[ProcedureRecord]:
        out: list[ProcedureRecord] = []
        mitigated = mitigated_by(resources)
        for r in latest(x for x in resources if x.get("resourceType") == "Procedure"):
            if set(codings(r.get("code"))) & self.ex_codes:
                continue  # the infusion and lymphodepletion are study treatment (EX)
            status = str(r.get("status"))
            if status == "entered-in-error":
                self.log.count("pr.not-used.entered-in-error")
                continue
            term = first_text(r.get("code"))
            if not term:
                self.log.reject("Procedure", r.get("id"), "no-code", "no code text or display",
                                "send Procedure.code with its text or a coding display", subject_id=subject_id, raw=r)
                continue
            when = r.get("performedDateTime") or (r.get("performedPeriod") or {}).get("start") or \
                (r.get("performedRange") or {}).get("low")
            start = self._date(when, r, subject_id)
            end = self._date((r.get("performedPeriod") or {}).get("end"), r, subject_id)
            reason = r.get("reasonCode") or []
            meddra = next(((c, d) for s, c, d in _displayed(r.get("code")) if s in self.meddra_systems), None)
            category = _procedure_category(r)
            if category is None and r.get("category"):
                self.log.count("pr.category-without-text")
            out.append(ProcedureRecord(
                term=term, code=_first_code(r.get("code")), frequency_per_day=_frequency_per_day(r),
                codes=tuple(f"{s}|{c}" for s, c, _ in _displayed(r.get("code"))),
                dictionary_term=dictionary_term(r.get("code")),
                meddra_code=meddra[0] if meddra else None, meddra_term=meddra[1] if meddra else None,
                category=category, spid=identifier_value(r),
                occurred=status != "not-done", status=status,
                reason_not_done=first_text(r.get("statusReason")) if status in ("not-done", "stopped") else None,
                indication=first_text(reason[0]) if reason else None,
                body_site=first_text((r.get("bodySite") or [None])[0]),
                qualifiers=site_qualifiers(r, resources), status_reason=first_text(r.get("statusReason")),
                ae_spid=referenced_identifier(r, "reasonReference", "AdverseEvent", resources)
                or mitigated.get(f"Procedure/{r.get('id')}"),
                start=start.datetime if start else None, start_date=start.date if start else None,
                start_partial=start.partial if start else None, end_date=end.date if end else None,
                study_day=study_day(start.date, day1) if start and start.date and day1 else None,
                source=source_ref(r),
            ))
        out.sort(key=lambda p: (p.start_date or dt.date.max, p.term, p.source.id))
        self.log.count("crf.pr", len(out))
        return out


def _displayed(cc: Any) -> list[tuple[str, str, str | None]]:
    if not isinstance(cc, dict):
        return []
    return [(str(c.get("system")), str(c.get("code")), c.get("display")) for c in cc.get("coding") or []
            if isinstance(c, dict) and c.get("code")]
