"""R4 AdverseEvent → AE (:class:`~fhir_adapter.crf.models.AdverseEvent`), driven by ``adverse_events.yaml``.

Reads both plain R4 AdverseEvents (``severity``, ``seriousness``, ``suspectEntity.causality``) and the HL7 AE
Clinical Research R4 backport (``ae-grade``, ``seriousness-criteria``, ``suspect-entity``, ``resolve-date``
extensions and the ``status`` modifierExtension; docs/clinical-rules.md#ae-grade,
docs/clinical-rules.md#ae-relatedness).
For each AdverseEvent, in order:

1. **versions** — the latest version of each id wins.
2. **excluded** — backport ``status`` in ``excluded_statuses`` (entered-in-error) and ``actuality`` potential
   (a near miss, not an event) are counted and never mapped.
3. **term** — ``event.text``, else the first coding display, else its code; ``codes`` = every coding as
   ``system|code``. An AdverseEvent without ``event`` is quarantined (``no-event``).
4. **grade** — the first case that applies: the backport ``ae-grade`` extension (NCIt CTCAE grade code of
   ``grade_codes``, or a text "Grade N") and the study-configured extensions (``grade_extension_urls``), the
   worst of their grades when they differ (warning ``ae-grade-conflict``);
   ``severity`` mild/moderate/severe → 1/2/3 with ``grade_approximate``; else None (counted ``ae.no-grade``
   and a warning ``ae-no-grade`` naming the AdverseEvent; the event is kept).
5. **seriousness** — ``seriousness`` code or text, any casing ("Serious", "non-serious"); else True when a
   ``seriousness-criteria`` extension has ``criterionPresent`` true; ``serious_criteria`` lists the present
   criteria as ``system|code``.
6. **relatedness to LCAR-AIO** — only the suspect entity that *is* LCAR-AIO counts: a reference to the
   subject's Day-1 infusion Procedure, a resource or concept carrying a ``product_codes``/infusion code, or a
   display/text naming the product. When the only suspect entity is unidentifiable (no instance, or a
   reference to nothing held and naming nothing), ``unidentified_single_entity_is_product`` decides (default:
   it is LCAR-AIO, with a warning). An entity identified as another drug never counts. Its assessments
   (``causality.assessment`` + ``productRelatedness``, or the backport ``entityRelatedness``) map by code,
   then by text: possibly/probably/definitely/certain/related → True, unlikely/not related → False,
   unassessable/unknown → None; of several assessments, True wins over False (conservative).
7. **dates** — onset = ``date``, else an ``onset_extension_urls`` extension (valueDateTime or
   valuePeriod.start), else ``detected``; none of them: onset None (counted ``ae.no-onset`` and a warning
   ``ae-no-onset`` naming the AdverseEvent; the event is kept: the safety rules list it as onset unknown).
   Resolution = the ``resolve-date`` extension, else the end of the onset extension's valuePeriod when the
   outcome is resolved. Partial dates stay partial; a dateTime also keeps its time
   (``onset_datetime``/``resolution_datetime``, in the study time zone) for durations in hours (DLT) and the
   exports' AESTDTC/AEENDTC. ``study_day`` and ``end_study_day`` count from Day 1 with no Day 0;
   ``pre_infusion`` = onset on or after lymphodepletion start and before the infusion (before Day 1, or on Day 1
   timed before the infusion's recorded time). ``teae`` is left None here: the
   safety endpoint derives it (derive/safety.py), and the CRF file shows its flag.
8. **flags** — ``crs``, ``icans``, ``hematologic`` from exact codes, code prefixes (ICD-10-CM D89.83x, G92.0x)
   and term patterns (``not_terms`` veto: "febrile neutropenia" is not haematological).

Examples (tests/mapping/test_adverse_events.py): severity "moderate" → grade 2, approximate; ae-grade
NCIt C41340 → grade 3; backport entityRelatedness NCIt C53258 with instance ``Procedure/<infusion>`` →
related True; an assessment "Possible" whose instance is ``Medication/fludarabine`` → related None.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fhir_adapter.crf.models import AdverseEvent, SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.common import (
    Unusable,
    check_code_refs,
    codings,
    first_code,
    first_text,
    latest,
    parse_date_or_reject,
    resolve_code,
    texts,
)
from fhir_adapter.mapping.references import mitigating_actions, resolve, site_qualifiers
from fhir_adapter.study.timeline import FhirDate, before_infusion, study_day
from fhir_adapter.terminology.codes import (
    AE_OUTCOME,
    EXT_AE_GRADE,
    EXT_AE_RESOLVE_DATE,
    EXT_AE_SERIOUSNESS_CRITERIA,
    EXT_AE_STATUS,
    EXT_AE_SUSPECT_ENTITY,
    FATAL_OUTCOMES,
    NCIT,
)

if TYPE_CHECKING:
    from fhir_adapter.study.load import Study

_GRADE_TEXT = re.compile(r"^\s*(?:ctcae\s*)?(?:grade\s*)?([1-5])\b", re.IGNORECASE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventClass(_Strict):
    """Codes, code prefixes and term patterns that put an event in a class (CRS, ICANS, haematological)."""

    codes: tuple[str, ...] = Field(default=(), description="AdverseEvent.event codes (alias|code) that put the event "
                                   "in the class")
    code_prefixes: tuple[str, ...] = Field(
        default=(),
        description="alias|prefix: an event code of that system starting with the prefix puts the event in the class")
    terms: tuple[str, ...] = Field(default=(), description="regular expressions, case-insensitive")
    not_terms: tuple[str, ...] = Field(
        default=(), description="regular expressions (case-insensitive) that, found in the event's term, keep it out "
        "of the class even when a code matches")

    @field_validator("terms", "not_terms")
    @classmethod
    def _regex(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a regular expression: {exc}") from None
        return v


class AdverseEventSettings(_Strict):
    """``mappings/<study>/adverse_events.yaml``."""

    code_systems: dict[str, str] = Field(
        description="alias → URI of the code systems this file's codes name (alias|code); an alias starting with "
        "meddra marks a MedDRA system (AE MedDRA code and term)")
    grade_extension_urls: tuple[str, ...] = Field(
        default=(), description="URLs of the site's own grade extensions, read beside the backport ae-grade "
        "extension; different grades on one event: the worst (docs/clinical-rules.md#ae-grade)")
    grade_codes: dict[str, int] = Field(
        description="grade codes (alias|code, e.g. NCIt CTCAE grade terms) → grade 1-5, read in the grade extensions")
    severity_grades: dict[str, int] = Field(
        default_factory=lambda: {"mild": 1, "moderate": 2, "severe": 3},
        description="AdverseEvent.severity code or text (lower case) → grade, used when no grade extension gives "
        "one; such a grade is flagged approximate")
    serious_words: tuple[str, ...] = Field(
        ("serious",), description="AdverseEvent.seriousness codes or texts meaning serious (case, spaces, - and _ "
        "ignored)")
    non_serious_words: tuple[str, ...] = Field(
        ("nonserious",), description="AdverseEvent.seriousness codes or texts meaning not serious (case, spaces, - and "
        "_ ignored); they win over serious_words")
    related_codes: tuple[str, ...] = Field(
        default=(), description="causality assessment codes (alias|code) meaning related to the study product "
        "(docs/clinical-rules.md#ae-relatedness)")
    not_related_codes: tuple[str, ...] = Field(
        default=(), description="causality assessment codes (alias|code) meaning not related to the study product")
    unknown_codes: tuple[str, ...] = Field(
        default=(), description="causality assessment codes (alias|code) meaning relatedness cannot be assessed "
        "(related stays unknown)")
    related_words: tuple[str, ...] = Field(
        default=(), description="assessment texts meaning related, compared in lower case with - and _ as spaces; "
        "read when no listed code matches")
    not_related_words: tuple[str, ...] = Field(
        default=(), description="assessment texts meaning not related, compared in lower case with - and _ as spaces")
    unknown_words: tuple[str, ...] = Field(
        default=(), description="assessment texts meaning relatedness cannot be assessed (related stays unknown)")
    product_codes: tuple[str, ...] = Field(
        default=(), description="codes (alias|code) of the study product: a suspect entity carrying one, or one of "
        "study.yaml's infusion_codes, is the product")
    product_names: tuple[str, ...] = Field(
        default=(), description="names of the study product, found as whole words in any case in a suspect entity's "
        "display or text, or its resource's code text")
    unidentified_single_entity_is_product: bool = Field(
        True, description="an AE's only suspect entity names nothing identifiable: its causality is read as about the "
        "study product (with a warning); false: ignored")
    onset_extension_urls: tuple[str, ...] = Field(
        default=(), description="extension URLs giving the onset (valueDateTime or valuePeriod.start) when "
        "AdverseEvent.date is missing; the first present is used")
    resolved_outcomes: tuple[str, ...] = Field(
        ("resolved", "resolvedWithSequelae"),
        description="outcome codes (plain or alias|code) meaning resolved: then, without a resolve-date extension, "
        "the onset extension's valuePeriod.end is the resolution")
    excluded_statuses: tuple[str, ...] = Field(
        ("entered-in-error",),
        description="backport status modifierExtension codes whose AdverseEvents are counted and never mapped")
    crs: EventClass = Field(
        EventClass(), description="what makes an event CRS (its crs flag; docs/clinical-rules.md#ae-categories)")
    icans: EventClass = Field(
        EventClass(), description="what makes an event ICANS (its icans flag; docs/clinical-rules.md#ae-categories)")
    hematologic: EventClass = Field(
        EventClass(),
        description="what makes an event haematological (its hematologic flag; docs/clinical-rules.md#ae-categories)")

    @field_validator("grade_codes", "severity_grades")
    @classmethod
    def _grades(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: g for k, g in v.items() if not 1 <= g <= 5}
        if bad:
            raise ValueError(f"grades must be 1-5: {bad}")
        return v

    @model_validator(mode="after")
    def _aliases_declared(self) -> AdverseEventSettings:
        refs = [
            *self.grade_codes,
            *self.related_codes,
            *self.not_related_codes,
            *self.unknown_codes,
            *self.product_codes,
            *(o for o in self.resolved_outcomes if "|" in o),
        ]
        for c in (self.crs, self.icans, self.hematologic):
            refs += [*c.codes, *c.code_prefixes]
        check_code_refs(refs, self.code_systems)
        return self

    def resolve(self, ref: str) -> tuple[str, str]:
        return resolve_code(ref, self.code_systems)


@dataclass(frozen=True)
class _Entity:
    """One suspect entity: what it points to, and its causality assessments (concept, text)."""

    reference: str | None
    display: str | None
    concept: dict[str, Any] | None
    assessments: tuple[tuple[dict[str, Any] | None, str | None], ...]


@dataclass(frozen=True)
class _Matcher:
    codes: frozenset[tuple[str, str]]
    prefixes: tuple[tuple[str, str], ...]
    terms: tuple[re.Pattern[str], ...]
    not_terms: tuple[re.Pattern[str], ...]

    def __call__(self, codes: list[tuple[str, str]], term: str) -> bool:
        """A code, a code prefix or a term matches, and no ``not_terms`` pattern is in the term: the veto holds
        against a code too (febrile neutropenia is coded ICD-10-CM D70.9, neutropenia, with R50.81 fever)."""
        if any(p.search(term) for p in self.not_terms):
            return False
        if any(k in self.codes for k in codes):
            return True
        if any(s == ps and c.startswith(pc) for s, c in codes for ps, pc in self.prefixes):
            return True
        return any(p.search(term) for p in self.terms)


def _ext(r: dict[str, Any], url: str, key: str = "extension") -> list[dict[str, Any]]:
    return [x for x in r.get(key) or [] if isinstance(x, dict) and x.get("url") == url]


def _sub(ext: dict[str, Any], url: str) -> dict[str, Any] | None:
    return next(iter(_ext(ext, url)), None)


def _displayed(cc: Any) -> list[tuple[str, str, str | None]]:
    """(system, code, display) of every coding of a CodeableConcept."""
    if not isinstance(cc, dict):
        return []
    return [(str(c.get("system")), str(c.get("code")), c.get("display")) for c in cc.get("coding") or []
            if isinstance(c, dict) and c.get("code")]


def _identifier(r: dict[str, Any]) -> str | None:
    ident = r.get("identifier")
    first = ident[0] if isinstance(ident, list) and ident else ident
    return str(first["value"]) if isinstance(first, dict) and first.get("value") else None


def _action_taken(r: dict[str, Any]) -> str | None:
    """Action taken with the study treatment: the first coded value among the R5 ``mitigatingAction``
    cross-version extensions (``item`` sub-extension, or its own value) — the element the FHIR-to-CDISC IG
    names for AEACN. Uncoded items are other actions (AEACNOTH); references are treatments (AECONTRT)."""
    for action in mitigating_actions(r):
        code = first_code(action.get("valueCodeableConcept"))
        if code:
            return code
    return None


def _other_actions(r: dict[str, Any]) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """(mitigatingAction recorded at all, treatment references, texts of the uncoded other actions)."""
    actions = mitigating_actions(r)
    refs = tuple(str(a["valueReference"].get("reference")) for a in actions if a.get("valueReference"))
    others = tuple(t for a in actions if a.get("valueCodeableConcept") and not codings(a["valueCodeableConcept"])
                   for t in texts(a["valueCodeableConcept"])[:1])
    return bool(actions), refs, others


def _words(text: str) -> str:
    return " ".join(re.sub(r"[-_]", " ", text.lower()).split())


def _squash(text: str) -> str:
    return re.sub(r"[\s_-]", "", text.lower())


class AdverseEventMapper:
    """Maps the AdverseEvents of one subject; holds no state between subjects but the settings."""

    def __init__(self, study: Study, log: RunLog, settings: AdverseEventSettings | None = None) -> None:
        self.s = settings or study.rule("adverse_events", AdverseEventSettings)
        self.log = log
        self.tz = study.info.timezone
        self._grade_codes = {self.s.resolve(k): g for k, g in self.s.grade_codes.items()}
        self._related = {self.s.resolve(k): True for k in self.s.related_codes}
        self._related |= {self.s.resolve(k): False for k in self.s.not_related_codes}
        self._unknown_codes = {self.s.resolve(k) for k in self.s.unknown_codes}
        self._related_words = {_words(w): True for w in self.s.related_words}
        self._related_words |= {_words(w): False for w in self.s.not_related_words}
        self._unknown_words = {_words(w) for w in self.s.unknown_words}
        self._product_codes = {self.s.resolve(k) for k in self.s.product_codes} | set(study.infusion_codes)
        self._product_names = [
            re.compile(rf"(?<!\w){re.escape(n)}(?!\w)", re.IGNORECASE) for n in self.s.product_names
        ]
        self.meddra_systems = {url for alias, url in self.s.code_systems.items() if alias.startswith("meddra")}
        self._resolved = {o for o in self.s.resolved_outcomes if "|" not in o}
        self._resolved_codes = {self.s.resolve(o) for o in self.s.resolved_outcomes if "|" in o}
        self.is_crs, self.is_icans, self.is_hematologic = (
            self._matcher(c) for c in (self.s.crs, self.s.icans, self.s.hematologic)
        )

    def _matcher(self, c: EventClass) -> _Matcher:
        return _Matcher(
            codes=frozenset(self.s.resolve(k) for k in c.codes),
            prefixes=tuple(self.s.resolve(k) for k in c.code_prefixes),
            terms=tuple(re.compile(p, re.IGNORECASE) for p in c.terms),
            not_terms=tuple(re.compile(p, re.IGNORECASE) for p in c.not_terms),
        )

    # -- public ------------------------------------------------------------------------------------
    def map(
        self,
        resources: list[dict[str, Any]],
        subject_id: str,
        *,
        day1: dt.date | None,
        lymphodepletion_start: dt.date | None,
        infusion_id: str | None,
        infusion_time: dt.datetime | None = None,
    ) -> list[AdverseEvent]:
        """The subject's AEs; ``infusion_time``: the infusion's date-time when the EHR recorded one."""
        out: list[AdverseEvent] = []
        for r in latest((x for x in resources if x.get("resourceType") == "AdverseEvent"), self.log, subject_id):
            status = next(
                (str(x.get("valueCode")) for x in _ext(r, EXT_AE_STATUS, "modifierExtension")), None
            )
            if status in self.s.excluded_statuses:
                self.log.count(f"ae.not-used.{status}")
                continue
            if r.get("actuality") == "potential":
                self.log.count("ae.not-used.potential")
                continue
            try:
                ae = self._event(r, resources, subject_id, day1, lymphodepletion_start, infusion_id)
            except Unusable as rej:
                self.log.reject(
                    "AdverseEvent", r.get("id"), rej.rule, rej.reason, rej.fix, subject_id=subject_id, raw=r
                )
                continue
            early = ae.onset_date is not None and day1 is not None and ae.onset_date < day1
            morning = before_infusion(ae.onset_date, ae.onset_datetime, day1, infusion_time)
            if morning and lymphodepletion_start is not None and ae.onset_date is not None \
                    and lymphodepletion_start <= ae.onset_date:
                ae = ae.model_copy(update={"pre_infusion": True})  # from lymphodepletion to the infusion
            if (ae.crs or ae.icans) and (early or morning):
                # a reaction to the CAR-T cells before they were given: the onset or Day 1 is wrong (not a TEAE)
                when = (f"before Day 1 {day1}" if early else
                        f"on Day 1 before the infusion at {infusion_time.isoformat() if infusion_time else ''}")
                self.log.warn(f"{'CRS' if ae.crs else 'ICANS'} with onset "
                              f"{ae.onset_datetime.isoformat() if ae.onset_datetime and not early else ae.onset_date}"
                              f", {when}: check the event's onset and the infusion date", resource=ae.source.reference,
                              subject_id=subject_id, rule="crs-before-infusion",
                              fix="correct the AE onset or the infusion record, whichever is wrong")
            out.append(ae)
        out.sort(key=lambda a: (a.onset_date is None, a.onset_date or dt.date.max, a.term, a.source.id))
        self.log.count("crf.ae", len(out))
        return out

    # -- one event ---------------------------------------------------------------------------------
    def _event(
        self,
        r: dict[str, Any],
        siblings: list[dict[str, Any]],
        subject_id: str,
        day1: dt.date | None,
        ld_start: dt.date | None,
        infusion_id: str | None,
    ) -> AdverseEvent:
        event = r.get("event")
        codes = codings(event)
        terms = texts(event)
        term = terms[0] if terms else (codes[0][1] if codes else None)
        if not term:
            raise Unusable(
                "no-event",
                "the AdverseEvent has no event (term or code)",
                "send AdverseEvent.event with the MedDRA/SNOMED/ICD-10 code and its text",
            )
        ref = f"AdverseEvent/{r.get('id')}"
        grade, approximate = self._grade(r, term, subject_id)
        if grade is None:
            self.log.count("ae.no-grade")
            self.log.warn(
                f"adverse event '{term}' has no grade (no ae-grade extension, grade extension or severity): "
                "kept with grade unknown; a TEAE counts under teae_grade_unknown and a DLT cannot be judged",
                resource=ref, subject_id=subject_id, rule="ae-no-grade",
                fix="record the CTCAE/ASTCT grade (the ae-grade extension, or severity) in the EHR",
            )
        serious, criteria = self._seriousness(r)
        if serious is False and criteria:
            self.log.warn(
                f"adverse event '{term}' is recorded non-serious with a seriousness criterion present "
                f"({', '.join(criteria)}): kept non-serious as recorded (AESER N beside the criterion's flag)",
                resource=ref, subject_id=subject_id, rule="ae-seriousness-conflict",
                fix="correct the seriousness or the criterion in the EHR")
        outcome = self._outcome(r)
        if outcome in FATAL_OUTCOMES and grade is not None and grade < 5:
            self.log.warn(
                f"adverse event '{term}' has the outcome fatal but grade {grade}: the grade is used as recorded "
                "(the grade 5 DLT rule does not see it)",
                resource=ref, subject_id=subject_id, rule="ae-fatal-grade",
                fix="check the CTCAE grade (grade 5 = death related to the event) or the outcome in the EHR")
        related, relatedness = self._relatedness(r, siblings, infusion_id, subject_id, ref)
        onset, end = self._dates(r)
        if onset is None:
            self.log.count("ae.no-onset")
            self.log.warn(
                f"adverse event '{term}' has no onset date (no date, onset extension or detected): kept "
                "without a study day; the safety rules treat it as onset unknown (treatment-emergent unless "
                "it ended before Day 1, safety.yaml missing_onset_is_teae; listed in onset_unknown_aes)",
                resource=ref, subject_id=subject_id, rule="ae-no-onset",
                fix="record the onset date (AdverseEvent.date) in the EHR",
            )
        onset_d = onset.date if onset else None
        end_d = end.date if end else None
        term_all = " ".join([*terms, term])
        meddra = next(((c, d) for sys_, c, d in _displayed(event) if sys_ in self.meddra_systems), None)
        if meddra is None:  # AEDECOD is Required in SDTM: an event coded otherwise is missing from tables by PT
            self.log.count("ae.not-meddra-coded")
            self.log.warn(
                f"adverse event '{term}' has no MedDRA coding"
                + (f" (coded {', '.join(f'{s}|{c}' for s, c in codes)})" if codes else "")
                + ": AEDECOD, AELLT and the MedDRA hierarchy stay empty in export/AE, so the event is missing "
                "from tables by preferred term until it is coded", resource=ref, subject_id=subject_id,
                rule="ae-not-meddra-coded",
                fix="code the event in MedDRA in the EHR (AdverseEvent.event coding, system "
                    "http://terminology.hl7.org/CodeSystem/mdr), or name the system the site codes MedDRA with in "
                    "adverse_events.yaml code_systems (an alias starting with 'meddra')")
        sev = r.get("severity")
        actions = _other_actions(r)
        condition = next((c for ref in r.get("resultingCondition") or []
                          if (c := resolve(r, ref, siblings)) is not None and c.get("resourceType") == "Condition"),
                         {})
        return AdverseEvent(
            term=term,
            spid=_identifier(r),
            meddra_code=meddra[0] if meddra else None,
            meddra_term=meddra[1] if meddra else None,
            severity=first_code(sev) or first_text(sev),
            action_taken=_action_taken(r),
            mitigation_recorded=actions[0], treatments=actions[1], other_actions=actions[2],
            body_site=next(iter(texts((condition.get("bodySite") or [None])[0])), None),
            qualifiers=site_qualifiers(condition, siblings),
            codes=tuple(f"{s}|{c}" for s, c in codes),
            grade=grade,
            grade_approximate=approximate,
            serious=serious,
            serious_criteria=criteria,
            related=related,
            relatedness=relatedness,
            onset_date=onset_d,
            onset_partial=onset.partial if onset else None,
            onset_datetime=onset.datetime if onset else None,
            resolution_date=end_d,
            resolution_partial=end.partial if end else None,
            resolution_datetime=end.datetime if end else None,
            outcome=outcome,
            study_day=study_day(onset_d, day1) if onset_d and day1 else None,
            end_study_day=study_day(end_d, day1) if end_d and day1 else None,
            pre_infusion=bool(onset_d and day1 and ld_start and ld_start <= onset_d < day1),
            crs=self.is_crs(codes, term_all),
            icans=self.is_icans(codes, term_all),
            hematologic=self.is_hematologic(codes, term_all),
            source=SourceRef(
                resource_type="AdverseEvent",
                id=str(r.get("id")),
                version=(r.get("meta") or {}).get("versionId"),
            ),
        )

    # -- grade and seriousness ---------------------------------------------------------------------
    def _grade_of(self, value: dict[str, Any]) -> int | None:
        """Grade from an extension's value[x]: integer, string, Coding or CodeableConcept."""
        if isinstance(value.get("valueInteger"), int):
            g: int = value["valueInteger"]
            return g if 1 <= g <= 5 else None
        cc = value.get("valueCodeableConcept")
        if isinstance(value.get("valueCoding"), dict):
            cc = {"coding": [value["valueCoding"]]}
        candidates: list[str] = [str(value["valueString"])] if value.get("valueString") else []
        for key in codings(cc):
            if key in self._grade_codes:
                return self._grade_codes[key]
        candidates += texts(cc) + [c for _, c in codings(cc)]
        for t in candidates:
            m = _GRADE_TEXT.match(t)
            if m:
                return int(m.group(1))
        return None

    def _grade(self, r: dict[str, Any], term: str = "", subject_id: str | None = None) -> tuple[int | None, bool]:
        """(grade, approximate): the recorded grade; different grades recorded on one event (the ``ae-grade``
        extension twice, or it and a configured grade extension) give the worst — a CTCAE event is graded by its worst
        grade — with a warning ``ae-grade-conflict`` (docs/clinical-rules.md#ae-grade)."""
        grades: list[int] = []
        for url in (EXT_AE_GRADE, *self.s.grade_extension_urls):
            for ext in _ext(r, url):
                g = self._grade_of(ext)
                if g is None:
                    self.log.count("ae.unreadable-grade")
                else:
                    grades.append(g)
        if grades:
            if len(set(grades)) > 1:
                self.log.warn(f"adverse event '{term}' records different grades "
                              f"({', '.join(str(g) for g in sorted(set(grades)))}): graded by the worst, "
                              f"{max(grades)}",
                              resource=f"AdverseEvent/{r.get('id')}", subject_id=subject_id,
                              rule="ae-grade-conflict", fix="record one grade per event (the worst) in the EHR")
            return max(grades), False
        sev = r.get("severity")
        words = [c for _, c in codings(sev)] + texts(sev)
        for w in words:
            g = self.s.severity_grades.get(w.strip().lower())
            if g is not None:
                return g, True
        return None, False

    def _seriousness(self, r: dict[str, Any]) -> tuple[bool | None, tuple[str, ...]]:
        criteria: list[str] = []
        for ext in _ext(r, EXT_AE_SERIOUSNESS_CRITERIA):
            code = _sub(ext, "criterionCode") or {}
            present = _sub(ext, "criterionPresent") or {}
            if present.get("valueBoolean") is False:
                continue
            criteria += [f"{s}|{c}" for s, c in codings(code.get("valueCodeableConcept"))]
        serious: bool | None = None
        cc = r.get("seriousness")
        words = {_squash(w) for w in [c for _, c in codings(cc)] + texts(cc)}
        if words & {_squash(w) for w in self.s.non_serious_words}:
            serious = False
        elif words & {_squash(w) for w in self.s.serious_words} or criteria:
            serious = True
        elif words:
            self.log.count("ae.unknown-seriousness")
        return serious, tuple(criteria)

    # -- relatedness -------------------------------------------------------------------------------
    def _entities(self, r: dict[str, Any]) -> list[_Entity]:
        out: list[_Entity] = []
        for se in r.get("suspectEntity") or []:
            inst = se.get("instance") or {}
            assessments = tuple(
                (c.get("assessment"), c.get("productRelatedness"))
                for c in se.get("causality") or []
                if isinstance(c, dict)
            )
            out.append(_Entity(inst.get("reference"), inst.get("display"), None, assessments))
        for ext in _ext(r, EXT_AE_SUSPECT_ENTITY):
            inst = _sub(ext, "instance") or {}
            ref = inst.get("valueReference") or {}
            found = []
            for cz in _ext(ext, "causality"):
                rel = _sub(cz, "entityRelatedness") or {}
                found.append((rel.get("valueCodeableConcept"), rel.get("valueString")))
            out.append(
                _Entity(
                    ref.get("reference"), ref.get("display"), inst.get("valueCodeableConcept"), tuple(found)
                )
            )
        return out

    def _names_product(self, labels: list[str]) -> bool:
        return any(p.search(t) for t in labels for p in self._product_names)

    def _is_product(
        self, e: _Entity, r: dict[str, Any], siblings: list[dict[str, Any]], infusion_id: str | None
    ) -> bool | None:
        """True: LCAR-AIO; False: something else; None: cannot tell."""
        if e.concept is not None:
            if set(codings(e.concept)) & self._product_codes or self._names_product(texts(e.concept)):
                return True
            return False if (codings(e.concept) or texts(e.concept)) else None
        if e.reference:
            if e.reference.split("/_history")[0].endswith(f"Procedure/{infusion_id}") and infusion_id:
                return True
            target = self._resolve(e.reference, r, siblings)
            if target is not None:
                concepts = [target.get(k) for k in ("code", "productCode", "medicationCodeableConcept")]
                codes = {k for cc in concepts for k in codings(cc)}
                if codes & self._product_codes or self._names_product(
                    [t for cc in concepts for t in texts(cc)]
                ):
                    return True
                if codes:
                    return False
        if e.display:
            return self._names_product([e.display]) or False
        return None

    @staticmethod
    def _resolve(reference: str, r: dict[str, Any], siblings: list[dict[str, Any]]) -> dict[str, Any] | None:
        if reference.startswith("#"):
            return next((c for c in r.get("contained") or [] if c.get("id") == reference[1:]), None)
        parts = reference.split("/_history")[0].split("/")
        if len(parts) < 2:
            return None
        rtype, rid = parts[-2], parts[-1]
        return next((x for x in siblings if x.get("resourceType") == rtype and x.get("id") == rid), None)

    def _assess(self, cc: dict[str, Any] | None, text: str | None) -> tuple[bool | None, str | None]:
        """(related, as recorded) of one assessment."""
        shown = first_text(cc) or next((c for _, c in codings(cc)), None) or text
        for key in codings(cc):
            if key in self._related:
                return self._related[key], shown
            if key in self._unknown_codes:
                return None, shown
        for t in [*texts(cc), *(c for _, c in codings(cc)), *([text] if text else [])]:
            w = _words(t)
            if w in self._related_words:
                return self._related_words[w], shown
            if w in self._unknown_words:
                return None, shown
        if shown:
            self.log.count("ae.unknown-relatedness")
        return None, shown

    def _relatedness(
        self,
        r: dict[str, Any],
        siblings: list[dict[str, Any]],
        infusion_id: str | None,
        subject_id: str,
        ref: str,
    ) -> tuple[bool | None, str | None]:
        entities = self._entities(r)
        if not entities:
            return None, None
        verdicts = [self._is_product(e, r, siblings, infusion_id) for e in entities]
        chosen = [e for e, v in zip(entities, verdicts, strict=True) if v]
        if not chosen and len(entities) == 1 and verdicts[0] is None:
            if not self.s.unidentified_single_entity_is_product:
                self.log.count("ae.unidentified-suspect-entity")
                return None, None
            self.log.warn(
                "the only suspect entity does not identify what it is; its causality is read as "
                "relatedness to the study product (adverse_events.yaml "
                "unidentified_single_entity_is_product)",
                resource=ref,
                subject_id=subject_id,
                rule="unidentified-suspect-entity",
            )
            chosen = entities
        if not chosen:
            self.log.count("ae.no-product-suspect-entity")
            return None, None
        results = [self._assess(cc, text) for e in chosen for cc, text in e.assessments]
        for wanted in (True, False):
            hits = [shown for value, shown in results if value is wanted]
            if hits:
                return wanted, hits[0]
        return None, next((shown for _, shown in results if shown), None)

    # -- dates and outcome -------------------------------------------------------------------------
    def _parse(self, value: Any) -> FhirDate:
        return parse_date_or_reject(value, self.tz)

    def _outcome(self, r: dict[str, Any]) -> str | None:
        """The outcome's code — a fatal one wherever it is among the codings, else one of a standard system (HL7
        adverse-event-outcome, NCIt: what the export's OUT terms know) before a hospital's own code, else the
        first — or its text."""
        oc = r.get("outcome")
        coded = codings(oc)
        fatal = next((c for _, c in coded if c in FATAL_OUTCOMES), None)
        standard = next((c for s, c in coded if s in (AE_OUTCOME, NCIT) and c), None)
        return fatal or standard or first_code(oc) or first_text(oc)

    def _dates(self, r: dict[str, Any]) -> tuple[FhirDate | None, FhirDate | None]:
        onset_ext = next((x for url in self.s.onset_extension_urls for x in _ext(r, url)), None)
        period_end: str | None = None
        onset_s: str | None = r.get("date")
        if onset_ext is not None:
            period = onset_ext.get("valuePeriod") or {}
            period_end = period.get("end")
            onset_s = onset_s or onset_ext.get("valueDateTime") or period.get("start")
        onset_s = onset_s or r.get("detected")
        onset = self._parse(onset_s) if onset_s else None
        end_s = next(
            (x.get("valueDateTime") or x.get("valueDate") for x in _ext(r, EXT_AE_RESOLVE_DATE)), None
        )
        if not end_s and period_end:
            oc = r.get("outcome")
            if {c for _, c in codings(oc)} & self._resolved or set(codings(oc)) & self._resolved_codes:
                end_s = period_end
        end = self._parse(end_s) if end_s else None
        return onset, end
