"""The study configuration as typed models: what ``mappings/<study>/*.yaml`` may say.

Every model forbids unknown keys, so a typo in a mapping file is an error with its line, not a silent no-op.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_RATIO = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*/\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")


def _ratio(value: Any) -> Any:
    """A conversion factor given as a ratio, ``"1/113.12"`` (mg/mmol → mg/mg: ÷ the molar mass of creatinine),
    is that quotient: written as the rule says, not rounded to a few digits (× 0.00884017 puts 56.56 mg/mmol at
    0.5000000152, above a strict 0.5 threshold; ÷ 113.12 gives 0.5)."""
    if isinstance(value, str) and (m := _RATIO.match(value)):
        numerator, denominator = float(m.group(1)), float(m.group(2))
        if numerator == 0 or denominator == 0:
            raise ValueError(f"the factor {value!r} is {'undefined' if denominator == 0 else 'zero'}: a unit's "
                             "factor into the CRF unit is a positive number or ratio, e.g. \"1/113.12\"")
        return numerator / denominator
    return value


#: a unit's conversion factor into the CRF unit: a number, or a ratio written ``"a/b"``
Factor = Annotated[float, BeforeValidator(_ratio), Field(gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyInfo(Strict):
    """``study.yaml`` → ``study``: who is in the trial and what marks Day 1."""

    id: str = Field(description="ResearchStudy.identifier value, e.g. SYN-LN-0001")
    name: str = Field("", description="the study's full name: ODM StudyDescription and the title of a ResearchStudy "
                      "the adapter writes for it (roster CSV, synth); without it, study.id")
    identifier_system: str | None = Field(None, description="if set, ResearchStudy.identifier.system must match")
    subject_identifier_system: str | None = Field(
        None, description="ResearchSubject.identifier system holding the subject ID; else the first identifier"
    )
    enrolled_statuses: tuple[str, ...] = Field(
        ("on-study", "on-study-intervention", "on-study-observation", "follow-up"),
        description="ResearchSubject.status values that make a subject enrolled: only enrolled subjects' data are read")
    left_statuses: tuple[str, ...] = Field(
        ("withdrawn", "off-study"),
        description="statuses of a subject who took part and left: the CRF of the last run that read it is "
                    "carried forward, never read again (docs/clinical-rules.md#withdrawn-subjects)")
    timezone: str = Field("UTC", description="site time zone in which dates are compared (IANA name)")
    infusion_codes: tuple[str, ...] = Field(description="codes (alias|code) of the Procedure that is Day 1")
    infusion_medication_codes: tuple[str, ...] = Field(
        default=(), description="codes of the cell product: a MedicationAdministration of it is Day 1")
    lymphodepletion_codes: tuple[str, ...] = Field(
        default=(), description="codes of the lymphodepleting agents (medication resources)"
    )
    history_excluded_codes: tuple[str, ...] = Field(
        default=(), description="codes (alias|code) of Condition categories or Condition codes that are not medical "
        "history (social circumstances, administrative entries): such a Condition is left out of MH (counted "
        "mh.not-used.excluded), so it never leaves the hospital in an export")
    product_name: str = Field("the study product", description="the study product as outputs name it")
    repeated_doses: bool = Field(
        False, description="the product is given more than once: Day 1 is its first dose, the others are expected")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        return known_zone(v)

    @model_validator(mode="after")
    def _left_is_not_enrolled(self) -> StudyInfo:
        both = sorted(set(self.left_statuses) & set(self.enrolled_statuses))
        if both:
            raise ValueError(f"status {', '.join(both)} is in both enrolled_statuses and left_statuses: a subject "
                             "is either read (enrolled) or has left; remove it from one of them")
        return self


class Visit(Strict):
    id: str = Field(description="the visit id in the CRF, results, exports and write-back identifiers (never rename a "
                    "published one)")
    label: str = Field("", description="the visit's name in the exports (VISIT, ODM) and the review pages; without "
                       "it, the id")
    day: int = Field(description="target study day")
    window: tuple[int, int] = Field(description="[earliest, latest] study day that belongs to the visit, both "
                                    "inclusive; holds `day`, never overlaps another window")
    baseline: bool = Field(False, description="marks the protocol's baseline visit for the reader; no rule reads it "
                           "(the baseline is the last value on or before Day 1, docs/clinical-rules.md#baseline)")

    @model_validator(mode="after")
    def _window_contains_target(self) -> Visit:
        lo, hi = self.window
        if lo > hi:
            raise ValueError(f"visit {self.id}: window start {lo} is after its end {hi}")
        if not lo <= self.day <= hi:
            raise ValueError(f"visit {self.id}: target day {self.day} lies outside its window {self.window}")
        if self.day == 0 or lo == 0 or hi == 0:
            raise ValueError(
                f"visit {self.id}: study day 0 does not exist (Day 1 is the infusion; the day before is -1)")
        return self


ParticipationStart = Literal["consent", "screening_window"]
ParticipationEnd = Literal["end_of_study", "last_window"]


class Participation(Strict):
    """``schedule.yaml`` → ``participation``: the span in which visits and results may lie.

    ``start``: the first known of ``consent`` (ResearchSubject.period.start, which the roster CSV's
    consent_date fills) and ``screening_window`` (the start of the earliest visit window); ``end``: the first
    known of ``end_of_study`` (ResearchSubject.period.end) and ``last_window`` (the end of the latest window).
    """

    start: tuple[ParticipationStart, ...] = Field(
        ("consent", "screening_window"),
        description="participation starts at the first known of: consent (ResearchSubject.period.start), "
                    "screening_window (start of the earliest window); must list screening_window")
    end: tuple[ParticipationEnd, ...] = Field(
        ("end_of_study", "last_window"),
        description="participation ends at the first known of: end_of_study (ResearchSubject.period.end), "
                    "last_window (end of the latest window); must list last_window")

    @model_validator(mode="after")
    def _has_fallback(self) -> Participation:
        if "screening_window" not in self.start or "last_window" not in self.end:
            raise ValueError("participation needs the schedule as its last resort: start must list "
                             "screening_window and end must list last_window")
        return self


class BaselineRule(Strict):
    """``schedule.yaml`` → ``baseline`` (docs/clinical-rules.md#baseline): the baseline of a measure is its last
    value dated on or before Day 1 and no more than ``lookback_days`` before it — from a visit, or from a result
    in no visit (before consent, or between visit windows). ``screening_window`` (the default): as far back as
    the earliest visit window starts; null: no limit."""

    lookback_days: int | Literal["screening_window"] | None = Field(
        "screening_window",
        description="how many days before Day 1 a baseline value may lie: a number ≥ 0, screening_window (as far "
                    "back as the earliest visit window starts) or null (no limit)")

    @field_validator("lookback_days")
    @classmethod
    def _not_negative(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 0:
            raise ValueError("lookback_days must be >= 0 (days before Day 1), 'screening_window' or null")
        return v


class Schedule(Strict):
    visits: tuple[Visit, ...] = Field(description="the scheduled visits, in study days (Day 1 = the infusion or first "
                                      "dose, the day before is -1, no Day 0)")
    unscheduled_items: tuple[str, ...] = Field(
        default=(), description="items whose results outside every window become unscheduled visits (UNS<study day>); "
        "another item's stay in no visit (coverage: out of window)")
    participation: Participation = Field(
        Participation(),
        description="the span in which visits and results may lie (docs/clinical-rules.md#participation)")
    baseline: BaselineRule = Field(
        BaselineRule(), description="how far before Day 1 a baseline may lie (docs/clinical-rules.md#baseline)")

    def baseline_lookback_days(self) -> int | None:
        """Days before Day 1 a baseline may lie (None: no limit); ``screening_window`` resolved."""
        v = self.baseline.lookback_days
        if v == "screening_window":
            return max(0, -min(w.window[0] for w in self.visits)) if self.visits else None
        assert not isinstance(v, str)
        return v

    @model_validator(mode="after")
    def _no_overlap(self) -> Schedule:
        ids = [v.id for v in self.visits]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"visit ids must be unique: {sorted(dup)}")
        flagged = [v.id for v in self.visits if v.baseline]
        if len(flagged) > 1:
            raise ValueError(f"visits {', '.join(flagged)} are all flagged baseline: true; flag the one visit the "
                             "protocol calls baseline (the baseline of a measure is its last value on or before Day 1 "
                             "whatever the flag: docs/clinical-rules.md#baseline)")
        late = [v.id for v in self.visits if v.baseline and v.window[0] > 1]
        if late:
            raise ValueError(f"visit {late[0]} is flagged baseline: true but its window starts after Day 1: a "
                             "baseline lies on or before Day 1 (docs/clinical-rules.md#baseline)")
        spans = sorted((v.window[0], v.window[1], v.id) for v in self.visits)
        for (_a0, a1, a), (b0, _b1, b) in pairwise(spans):
            if b0 <= a1:
                raise ValueError(f"visit windows of {a} and {b} overlap: a result could belong to both")
        return self


SelectRule = Literal["closest", "first", "last", "max", "min", "worst", "any_true"]
#: which way an item's value is more abnormal (``select: worst`` keeps the most abnormal value of the window)
Worse = Literal["high", "low"]
ValueType = Literal["quantity", "boolean", "coded", "text"]
Domain = Literal["LB", "VS", "PC", "QS", "IS"]


class Item(Strict):
    """One CRF item of a findings domain and the EHR codes that feed it."""

    domain: Domain = Field(description="SDTM findings domain: LB lab, VS vital sign, PC cellular kinetics, QS "
                           "questionnaire or score, IS immunogenicity")
    label: str = Field(min_length=1, max_length=40,
                       description="the item's name in the exports (--TEST, at most 40 characters in the SDTMIG; "
                                   "ODM) and the review pages")
    testcd: str | None = Field(
        None, pattern=r"^[A-Z][A-Z0-9_]{0,7}$",
        description="CDISC --TESTCD in the exports (SDTM CT where one exists); default: derived from the item id",
    )
    codes: tuple[str, ...] = Field(description="alias|code, e.g. loinc|777-3; any number of site-local codes")
    value: ValueType = Field("quantity", description="the result's value: quantity (a number with a unit), boolean, "
                             "coded (positive or negative, by positive_codes/negative_codes) or text")
    unit: str | None = Field(None, description="UCUM unit the CRF stores the item in")
    accept_units: tuple[str, ...] = Field(default=(), description="other UCUM units converted by UCUM rules")
    factors: dict[str, Factor] = Field(
        default_factory=dict, description="unit -> factor into `unit` for analyte-specific conversions (a number, "
        "or a ratio such as \"1/113.12\")"
    )
    decimals: int | None = Field(
        None, ge=0, le=12, description="the precision the CRF keeps: a value converted from another unit is rounded "
        "to it (docs/clinical-rules.md#converted-precision); without it, 12 significant digits")
    select: SelectRule = Field(
        "closest", description="which result a visit keeps when its window holds several: closest to the target day, "
        "first, last, max, min, worst (needs `worse`) or any_true")
    worse: Worse | None = Field(None, description="which way a value is more abnormal (high or low); required by "
                                "select: worst, read by nothing else")
    bounds: tuple[float, float] | None = Field(None, description="physiological bounds in `unit`")
    positive_codes: tuple[str, ...] = Field(
        default=(), description="codes (alias|code) of a coded result that mean positive (present)")
    negative_codes: tuple[str, ...] = Field(
        default=(), description="codes (alias|code) of a coded result that mean negative (absent)")
    lloq: float | None = Field(None, description="lower limit of quantification in `unit`: a result below it is below "
                               "LLOQ (kinetics, review); --LLOQ in the exports")

    @model_validator(mode="after")
    def _unit_for_quantities(self) -> Item:
        if self.value == "quantity" and not self.unit:
            raise ValueError(f"item '{self.label}': a quantity item needs `unit` (UCUM)")
        if self.value != "quantity" and (self.accept_units or self.factors):
            raise ValueError(f"item '{self.label}': units apply to quantity items only")
        return self

    @model_validator(mode="after")
    def _direction_for_worst(self) -> Item:
        if self.select == "worst" and self.value != "quantity":
            raise ValueError(f"item '{self.label}': select: worst compares quantities; a {self.value} item takes "
                             "first, last, closest or any_true")
        if self.select == "worst" and self.worse is None:
            raise ValueError(f"item '{self.label}': select: worst needs the direction that is worse — add "
                             "`worse: high` (a higher value is more abnormal) or `worse: low` to the item")
        if self.worse is not None and self.select != "worst":
            raise ValueError(f"item '{self.label}': `worse` is read only by select: worst (this item selects "
                             f"{self.select}) — remove `worse`, or set `select: worst`")
        return self


class ItemsFile(Strict):
    code_systems: dict[str, str] = Field(description="alias → URI of every code system the study's codes name (a "
                                         "code is written alias|code); a site overlay adds its own")
    items: dict[str, Item] = Field(description="the CRF items of the findings domains, by item id, and the EHR codes "
                                   "that feed them")


class SubjectIdentifierRule(Strict):
    """Which ``ResearchSubject.identifier`` holds the subject ID — one of: ``system`` (the identifier with
    this system), ``type`` (the identifier whose ``type`` has this code, ``system|code`` or a bare code), or
    ``only: true`` (the ResearchSubject's only identifier, whatever its system)."""

    system: str | None = Field(None, description="identifier.system holding the subject ID")
    type: str | None = Field(None, description="identifier.type code (system|code or code) of the subject ID")
    only: bool = Field(False, description="the ResearchSubject's only identifier is the subject ID")

    @model_validator(mode="after")
    def _one_rule(self) -> SubjectIdentifierRule:
        given = [k for k in ("system", "type") if getattr(self, k)] + (["only"] if self.only else [])
        if len(given) != 1:
            raise ValueError("subject_identifier takes exactly one of `system: <uri>`, `type: <code>`, `only: true`"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


def known_zone(v: str) -> str:
    """``v`` when it is an IANA time zone name this machine knows (``Europe/Berlin``, ``UTC``), else a
    ValueError saying what to write (an offset such as ``+08:00`` is not a zone: it has no daylight saving)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone '{v}': use an IANA name such as Europe/Berlin, Asia/Shanghai or UTC "
                         "(as written, without spaces; an offset such as +08:00 is not a zone)") from exc
    return v


class SiteOverlay(Strict):
    """``--site mappings/sites/<name>.yaml``: local codes and units added to the study mapping."""

    site: str = Field(description="the site's name, echoed in results/study.json (settings.site_overlay) and by check")
    code_systems: dict[str, str] = Field(
        default_factory=dict,
        description="alias → URI of the site's local code systems; an alias the study declares cannot change")
    items: dict[str, SiteItem] = Field(
        default_factory=dict,
        description="items of items.yaml this site adds codes or units to (it cannot create items)")
    timezone: str | None = Field(
        None, description="site time zone (IANA name) in which dates are compared; overrides study.yaml's timezone")

    @field_validator("timezone")
    @classmethod
    def _site_zone(cls, v: str | None) -> str | None:
        return None if v is None else known_zone(v)

    infusion_codes: tuple[str, ...] = Field(
        default=(), description="the site's own codes (alias|code) of the infusion Procedure, added to the study's")
    history_excluded_codes: tuple[str, ...] = Field(
        default=(), description="the site's own codes (alias|code) of Condition categories or codes that are not "
        "medical history (social findings its EHR records as diagnoses), added to the study's")
    subject_identifier: SubjectIdentifierRule | None = Field(
        None, description="which ResearchSubject identifier is the subject ID at this site (overrides study.yaml)")
    study_identifier_system: str | None = Field(
        None, description="the identifier system of the study's ResearchStudy in this site's EHR (overrides "
        "study.yaml's study.identifier_system)")
    medication_list_complete: bool | None = Field(
        None, description="the site's EHR medication list is complete: no glucocorticoid record = 0 mg/day")
    siteid: Literal["research-study", "organization"] = Field(
        "research-study",
        description="SITEID: the identifier of the site-level ResearchStudy the subject is enrolled in (the "
        "FHIR-to-CDISC IG's rule; the Patient's managing organisation when there is none), or always the "
        "managing organisation (its identifier: the site number)")
    meddra_dir: str | None = Field(
        None, description="folder of the site's MedDRA release (MedAscii: llt.asc, mdhier.asc), relative to "
        "this file; gives AEHLT/AEHLGT/AESOC")
    country: str | None = Field(
        None, pattern=r"^[A-Z]{3}$",
        description="DM.COUNTRY: the ISO 3166-1 alpha-3 code of the site's country (DEU, FRA, USA)")
    unit_synonyms: dict[str, str] = Field(
        default_factory=dict,
        description="unit spellings of this site's EHR that are not UCUM codes → their UCUM code, added to "
        "mappings/units/synonyms.yaml (only spellings that mean one unit)")


class SiteItem(Strict):
    codes: tuple[str, ...] = Field(default=(), description="the site's own codes (alias|code), added to the item's")
    accept_units: tuple[str, ...] = Field(
        default=(), description="more UCUM units converted by UCUM rules into the item's CRF unit, added to the item's")
    factors: dict[str, Factor] = Field(default_factory=dict, description="factors for units the study has none for")
    override_factors: dict[str, Factor] = Field(
        default_factory=dict,
        description="a different factor for a unit the study defines one for; reported by check and the run report")


SiteOverlay.model_rebuild()
