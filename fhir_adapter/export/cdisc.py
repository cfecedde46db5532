"""CRF → CDISC-style rows (CDASH/SDTM variable names), one list of rows per domain. Pure: no I/O.

One row per subject (DM), per exposure (EX), per medication record (CM), per adverse event (AE), and per
subject/visit/item for the findings domains (LB, VS, PC, QS, IS): the value the visit keeps by the item's
selection rule — what a CRF page shows — not every result of the timeline.

Column conventions (SDTM IG v3.4 names; ``--`` is the domain prefix):

* ``USUBJID`` = ``STUDYID-SUBJID``; ``SITEID`` = the site-level ResearchStudy's identifier (else the Patient's
  managing organisation, by the overlay's ``siteid`` rule); ``INVID`` = the identifier of the principalInvestigator
  of the ResearchStudy the subject is enrolled in (DM also ``INVNAM``).
* ``DTHDTC``/``DTHFL`` (DM) from Patient.deceased[x]; AE carries ``DTHDTC`` on the fatal event's row.
* DM ``RFXSTDTC``/``RFXENDTC``: the earliest EXSTDTC / latest EXENDTC; ``RFENDTC`` = ``RFPENDTC`` = the end of
  participation (ResearchSubject.period.end); ``ACTARMCD``/``ACTARM``: :func:`_actual_arm`; ``COUNTRY``: the
  site overlay's ISO 3166-1 alpha-3 code.
* EX ``EXDOSU``/``EXROUTE`` in CDISC UNIT/ROUTE terms; ``EXDOSTXT`` = the dose level when the record has no dose.
* PR ``PRDECOD``: the display of the Procedure.code coding in a procedure dictionary (SNOMED CT, ICD-10-PCS, CPT,
  OPS), else the MedDRA PT; empty for a hospital catalogue code only. ``PRCODE``: every coding as sent
  (``system|code``, as ``AECODE``); ``PRCAT``: the category's text or display, upper case.
* ``--TPT``/``--TPTREF``/``--ELTM``: the planned time point of a cqf-relativeDateTime extension on the Specimen
  (else on the Observation): ``1 H BEFORE LCAR-AIO INFUSION``, the reference event, ``-PT1H``.
* ``--ORRES``/``--ORRESU``: the value and unit as the EHR sent them; ``--STRESC``/``--STRESN``/``--STRESU``:
  in the CRF unit of ``items.yaml`` (``--STRESN`` is empty for censored values such as ``<0.2``).
* ``--LLOQ`` (:func:`lloq`): in the CRF unit — the item's ``lloq`` (items.yaml) on every result of the test,
  else the limit of a result reported below it (``<0.05`` gives 0.05) on that result's row.
* ``--ORNRLO``/``--ORNRHI``: the reference range in the original unit as the EHR sent it (also when the value
  was converted into the CRF unit); ``--STNRLO``/``--STNRHI``: the range in the CRF unit.
* ``--NRIND``: from the interpretation code (H, HH → HIGH; L, LL → LOW; N → NORMAL; A, AA → ABNORMAL),
  else from the range.
* ``--STAT``/``--REASND``: a cancelled Observation, or one with a dataAbsentReason and no value, gives a row
  with ``--STAT`` = NOT DONE and ``--REASND`` = the reason, without result columns (:meth:`RowBuilder._not_done`);
  ``--STAT`` is empty on every row with a result.
* ``--DTC``: ISO 8601 in the site time zone; a partial date stays partial (``2024-03``), never imputed.
* ``VISITNUM``: the position of the visit in ``schedule.yaml`` (1, 2, …); an unscheduled visit gets the
  number of the last scheduled visit whose target day precedes it plus .01, .02, … (SDTM convention);
  ``VISITDY``: the planned study day (empty for unscheduled visits).
* ``SRCREF``: the FHIR resource the value came from (``Observation/123/_history/2``); ``SRCSTAT``: its
  status (``final``, ``amended``, ``corrected``, ``preliminary``).
* ``--BLFL``: ``Y`` on the one record per test that is its baseline by the rule every derivation uses
  (docs/clinical-rules.md#baseline: the last result on or before Day 1 inside the look-back); a baseline that is
  no visit's value (a result in no visit, or a later result of a window than the one its visit kept) gets its
  own row (VISIT empty, ``--BLFL`` = Y) so the flagged record is in the dataset.
* ``REVSTAT``: the value's review status (``unreviewed``, ``accepted``, ``changed``, ``not-available``,
  ``query``, ``re-review``; docs/review.md) — empty when the rows were built without review. An item a reviewer
  declared not available has a NOT DONE row (``--STAT`` = NOT DONE, ``--REASND`` = the reviewer's reason, no
  result; ``SRCREF`` = the result set aside) with ``REVSTAT`` = ``not-available``.

No name, MRN, address or birth date is ever written: DM carries the age at consent only.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from fhir_adapter.crf.models import ConMed, Exposure, Finding, NotDone, SubjectCRF, VisitRecord
from fhir_adapter.derive.baseline import after_infusion, baseline_index, in_lookback, prior_result
from fhir_adapter.export.ct import Terminology, load_terminology
from fhir_adapter.export.meddra import Meddra
from fhir_adapter.study.load import Study
from fhir_adapter.study.models import Item
from fhir_adapter.study.timeline import elapsed, study_day
from fhir_adapter.terminology.codes import FATAL_OUTCOMES

FINDINGS_DOMAINS = ("LB", "VS", "PC", "QS", "IS")
DOMAINS = ("DM", "EX", *FINDINGS_DOMAINS, "CM", "AE", "MH", "PR")
#: the SDTMIG dataset labels: the same for every study (a second trial's QS holds no SLEDAI-2K)
DOMAIN_LABELS = {
    "DM": "Demographics", "EX": "Exposure", "LB": "Laboratory Test Results", "VS": "Vital Signs",
    "PC": "Pharmacokinetics Concentrations", "QS": "Questionnaires",
    "IS": "Immunogenicity Specimen Assessments", "CM": "Concomitant Medications", "AE": "Adverse Events",
    "MH": "Medical History", "PR": "Procedures",
}
_IDS = ("STUDYID", "DOMAIN", "USUBJID", "SUBJID", "SITEID", "INVID")

#: ODM DataType of each column (``--`` stands for the domain prefix); any other column is text
DATA_TYPES: dict[str, str] = {
    "AGE": "integer", "RFSTDTC": "date", "RFICDTC": "date", "DTHDTC": "date", "RFENDTC": "date",
    "RFPENDTC": "date", "RFXSTDTC": "partialDatetime", "RFXENDTC": "partialDatetime", "VISITNUM": "float",
    "VISITDY": "integer",
    # --ORNRLO/--ORNRHI and --TOXGR are Char in the SDTMIG (a limit as sent may be ">60"): text, as any column
    "--SEQ": "integer", "--STRESN": "float", "--STNRLO": "float",
    "--STNRHI": "float", "--LLOQ": "float", "--DTC": "partialDatetime", "--DY": "integer",
    "--DOSE": "float", "--DOSTOT": "float", "--STDTC": "partialDatetime", "--ENDTC": "partialDate",
    "LBENDTC": "partialDatetime",  # the end of a timed collection (Specimen.collection.collectedPeriod.end)
    "--STDY": "integer", "--ENDY": "integer",
    "AEENDTC": "partialDatetime",   # the resolution time, when the EHR sent one
}

#: the CDISC CT codelist (mappings/cdisc/ct.yaml) of each coded column (``--`` = the domain prefix)
CODELISTS: dict[str, str] = {
    "AGEU": "AGEU", "SEX": "SEX", "DTHFL": "NY", "RACE": "RACE", "ETHNIC": "ETHNIC", "EPOCH": "EPOCH",
    "--ORRESU": "UNIT", "--STRESU": "UNIT", "--NRIND": "NRIND", "--STAT": "ND", "--FAST": "NY",
    "CMROUTE": "ROUTE", "EXROUTE": "ROUTE", "CMDOSFRM": "FRM", "CMDOSFRQ": "FREQ", "PRDOSFRQ": "FREQ", "CMDOSU": "UNIT",
    "EXDOSU": "UNIT", "AESEV": "AESEV", "AEOUT": "OUT", "AEACN": "ACN", "AESER": "NY", "AEREL": "NY",
    "AESDTH": "NY", "AESLIFE": "NY", "AESHOSP": "NY", "AESDISAB": "NY", "AESCONG": "NY", "AESMIE": "NY",
    "--BLFL": "NY", "AETRTEM": "NY", "AETOXAPP": "NY", "AEPREINF": "NY", "MHOCCUR": "NY", "PROCCUR": "NY",
    "MHENRTPT": "STENRF", "AEENRTPT": "STENRF", "PRENRTPT": "STENRF", "--STRF": "STENRF", "CMOCCUR": "NY",
    "MHCTRL": "NY", "PRITRPYN": "NY", "AECONTRT": "NY", "AEACNOYN": "NY", "--LAT": "LAT", "--DIR": "DIR",
    "--POS": "POSITION", "--SPCUFL": "NY",
}


def codelist(column: str) -> str | None:
    """The CT codelist of an export column, or None for a free-text column."""
    if column in CODELISTS:
        return CODELISTS[column]
    return CODELISTS.get("--" + column[2:]) if len(column) > 2 else None


def _findings_columns(p: str) -> tuple[str, ...]:
    extra = (f"{p}LOINC", f"{p}REFID", f"{p}SPEC", f"{p}SPCCND", f"{p}LOC", f"{p}FAST", f"{p}METHOD", f"{p}NAM",
             f"{p}STNRC", f"{p}POS") if p in ("LB", "IS", "PC") else (f"{p}LOINC", f"{p}LOC", f"{p}METHOD")
    if p == "VS":
        extra = (*extra, "VSLAT", "VSDIR", "VSPOS")
    if p == "LB":
        extra = (*extra, "LBANTREG", "LBSPCUFL", "LBTOXGR", "LBTOX")
    return (*_IDS, f"{p}SEQ", f"{p}SPID", f"{p}TESTCD", f"{p}TEST", f"{p}CAT", f"{p}ORRES", f"{p}ORRESU",
            f"{p}STRESC", f"{p}STRESN", f"{p}STRESU", f"{p}ORNRLO", f"{p}ORNRHI", f"{p}STNRLO", f"{p}STNRHI",
            f"{p}NRIND", f"{p}STAT", f"{p}REASND", *extra, f"{p}LLOQ", f"{p}BLFL", "VISITNUM", "VISIT", "VISITDY",
            "EPOCH", f"{p}TPT", f"{p}TPTREF", f"{p}ELTM", f"{p}DTC", *((f"{p}ENDTC", f"{p}DUR") if p == "LB" else ()),
            f"{p}DY", *((f"{p}ENDY",) if p == "LB" else ()), f"{p}ORUCUM", f"{p}STUCUM",
            "SRCSTAT", "SRCREF", "REVSTAT")


_MEDDRA = ("LLT", "LLTCD", "DECOD", "PTCD", "HLT", "HLTCD", "HLGT", "HLGTCD", "SOC", "SOCCD")

COLUMNS: dict[str, tuple[str, ...]] = {
    "DM": (*_IDS, "INVNAM", "AGE", "AGEU", "SEX", "RACE", "ETHNIC", "ARMCD", "ARM", "ACTARMCD", "ACTARM", "COUNTRY",
           "RFSTDTC", "RFENDTC", "RFXSTDTC", "RFXENDTC", "RFICDTC", "RFPENDTC", "DTHDTC", "DTHFL", "SRCREF"),
    "EX": (*_IDS, "EXSEQ", "EXTRT", "EXCAT", "EXDOSE", "EXDOSTXT", "EXDOSU", "EXROUTE", "EXSTDTC", "EXENDTC", "EXSTDY",
           "EXENDY", "EPOCH", "SRCREF"),
    **{d: _findings_columns(d) for d in FINDINGS_DOMAINS},
    "CM": (*_IDS, "CMSEQ", "CMSPID", "CMTRT", "CMDECOD", "CMINGRD", "CMCODE", "CMCAT", "CMCLAS", "CMCLASCD", "CMINDC",
           "CMOCCUR",
           "CMAENO", "CMMHNO", "CMDOSE",
           "CMDOSTXT", "CMDOSU",
           "CMDOSFRM", "CMDOSFRQ", "CMDOSTOT", "CMROUTE", "CMSTDTC", "CMENDTC", "CMSTDY", "CMENDY", "EPOCH",
           "SRCTYPE", "SRCSTAT", "SRCREF"),
    "AE": (*_IDS, "AESEQ", "AESPID", "AETERM", *(f"AE{m}" for m in _MEDDRA[:-2]), "AEBODSYS", "AEBDSYCD", "AESOC",
           "AESOCCD", "AECODE", "AESEV", "AETOXGR",
           "AETOXAPP", "AESER", "AESDTH", "DTHDTC", "AESLIFE", "AESHOSP", "AESDISAB", "AESCONG", "AESMIE", "AEACN",
           "AECONTRT", "AEACNOTH", "AEACNOYN", "AEREL",
           "AERELNST", "AEOUT", "AELOC", "AELAT", "AEDIR", "AESTDTC", "AEENDTC", "AEENRTPT", "AEENTPT", "AESTDY",
           "AEENDY", "EPOCH",
           "AETRTEM", "AEPREINF", "AECAT", "SRCREF"),
    "MH": (*_IDS, "MHSEQ", "MHSPID", "MHTERM", *(f"MH{m}" for m in _MEDDRA), "MHCAT", "MHSCAT", "MHOCCUR", "MHDTC",
           "MHSTDTC", "MHENDTC", "MHENRTPT", "MHENTPT", "MHCTRL", "MHLOC", "EPOCH", "SRCTYPE", "SRCREF"),
    "PR": (*_IDS, "PRSEQ", "PRSPID", "PRTRT", "PRDECOD", *(f"PR{m}" for m in _MEDDRA if m != "DECOD"), "PRCODE",
           "PRCAT",
           "PROCCUR", "PRDOSFRQ", "PRREASND", "PRREASOC", "PRINDC", "PRAENO", "PRLOC", "PRLAT", "PRDIR", "PRSTDTC",
           "PRENDTC",
           "PRSTRF", "PRENRTPT", "PRENTPT", "PRSTDY", "PRENDY", "PRITRPYN", "PRITRPRS", "EPOCH", "SRCSTAT", "SRCREF"),
}

#: the findings columns without the domain prefix
_UNPREFIXED = frozenset({"VISITNUM", "VISIT", "VISITDY", "EPOCH", "SRCSTAT", "SRCREF", "REVSTAT"})


@dataclass(frozen=True)
class _FindingColumns:
    """Where each cell of a findings domain's row goes — its index in ``COLUMNS[domain]`` (``LBORRES`` …) —
    worked out once per domain. A column the domain does not have (``VSSPEC``) gets the number of columns, an
    index no cell can be stored at (IndexError)."""

    SEQ: int
    SPID: int
    TESTCD: int
    TEST: int
    CAT: int
    ORRES: int
    ORRESU: int
    STRESC: int
    STRESN: int
    STRESU: int
    ORNRLO: int
    ORNRHI: int
    STNRLO: int
    STNRHI: int
    NRIND: int
    LOINC: int
    METHOD: int
    LLOQ: int
    BLFL: int
    VISITNUM: int
    VISIT: int
    VISITDY: int
    EPOCH: int
    TPT: int
    TPTREF: int
    ELTM: int
    DTC: int
    DY: int
    ORUCUM: int
    STUCUM: int
    SRCSTAT: int
    SRCREF: int
    REVSTAT: int
    LOC: int
    POS: int
    LAT: int
    DIR: int
    SPEC: int
    FAST: int
    REFID: int
    SPCCND: int
    NAM: int
    STNRC: int
    ENDTC: int
    ENDY: int
    DUR: int
    TOXGR: int
    TOX: int
    ANTREG: int
    SPCUFL: int
    #: the domain has --POS, and the specimen columns (--SPEC, --FAST, --REFID, …)
    has_pos: bool
    has_specimen: bool

    @classmethod
    def of(cls, p: str) -> _FindingColumns:
        columns = COLUMNS[p]
        at = {c: i for i, c in enumerate(columns)}
        index = {f.name: at.get(f.name if f.name in _UNPREFIXED else p + f.name, len(columns))
                 for f in fields(cls) if not f.name.startswith("has_")}
        return cls(**index, has_pos=f"{p}POS" in at, has_specimen=f"{p}SPEC" in at)


_FINDING_COLUMNS = {p: _FindingColumns.of(p) for p in FINDINGS_DOMAINS}

_NRIND = {"H": "HIGH", "HH": "HIGH", "HU": "HIGH", "L": "LOW", "LL": "LOW", "LU": "LOW", "N": "NORMAL",
          "A": "ABNORMAL", "AA": "ABNORMAL", "POS": "ABNORMAL", "NEG": "NORMAL"}


def data_type(column: str) -> str:
    """ODM DataType of an export column."""
    if column in DATA_TYPES:
        return DATA_TYPES[column]
    generic = "--" + column[2:] if len(column) > 2 else column
    return DATA_TYPES.get(generic, "text")


#: num() of the values seen but zero (results repeat: reference ranges, doses, scores); at most this many kept
_NUM_KEPT = 50_000
_nums: dict[float | int, str] = {}


def num(value: float | int | None) -> str:
    """A number as a plain decimal (no exponent, no trailing zeros): valid xs:decimal and CSV-friendly."""
    if value is None:
        return ""
    text = _nums.get(value)
    if text is None:
        text = format(Decimal(repr(float(value))).normalize(), "f")
        if text.endswith(".0"):
            text = text[:-2]
        if value:  # 0.0 and -0.0 are one key but two texts
            if len(_nums) >= _NUM_KEPT:
                _nums.clear()
            _nums[value] = text
    return text


def testcd_map(study: Study) -> dict[str, str]:
    """``--TESTCD`` of every item: ``testcd`` from items.yaml, else derived from the item id (upper-case
    letters and digits, at most 8 characters, unique within the domain)."""
    out: dict[str, str] = {}
    used: set[tuple[str, str]] = {(it.domain, it.testcd) for it in study.items.values() if it.testcd}
    for item_id, it in study.items.items():
        if it.testcd:
            out[item_id] = it.testcd
            continue
        base = re.sub(r"[^A-Z0-9]", "", item_id.rsplit(".", 1)[-1].upper()) or "ITEM"
        if base[0].isdigit():
            base = "T" + base
        code, n = base[:8], 1
        while (it.domain, code) in used:
            code = f"{base[:6]}{n:02d}"
            n += 1
        used.add((it.domain, code))
        out[item_id] = code
    return out


def visit_numbers(study: Study) -> dict[str, int]:
    return {v.id: i for i, v in enumerate(study.schedule.visits, start=1)}


def _dtc(f: Finding) -> str:
    if f.datetime is not None:
        return f.datetime.isoformat()
    if f.date is not None:
        return f.date.isoformat()
    return f.partial_date or ""


def _date(d: dt.date | None, partial: str | None = None) -> str:
    return d.isoformat() if d else (partial or "")


def _moment(at: dt.datetime | None) -> str:
    """A dateTime in the study time zone (ISO 8601 with its offset), "" when only a date is known."""
    return at.isoformat() if at is not None else ""


def _yn(flag: bool | None) -> str:
    return "" if flag is None else ("Y" if flag else "N")


def _last_date(crf: SubjectCRF) -> str:
    """The subject's last dated result: the reference time point of an --ENRTPT ONGOING (AEENTPT, PRENTPT)."""
    dates = [f.date for f in crf.findings if f.date]
    return max(dates).isoformat() if dates else ""


def _duration(start: dt.datetime | None, end: dt.datetime | None) -> str:
    """ISO 8601 duration of a collection period (PT24H, PT1H30M); empty without both ends."""
    if start is None or end is None or end < start:
        return ""
    minutes = int(elapsed(start, end).total_seconds() // 60)
    hours, mins = divmod(minutes, 60)
    return "PT" + (f"{hours}H" if hours else "") + (f"{mins}M" if mins or not hours else "")


def _strf(d: dt.date | None, day1: dt.date | None) -> str:
    """--STRF: the start relative to the study reference period (RFSTDTC on; DURING and AFTER are not told
    apart: RFENDTC is empty while the subject is on study)."""
    if d is None or day1 is None:
        return ""
    return "BEFORE" if d < day1 else "DURING/AFTER"


def _ex_start(x: Exposure) -> str:
    """EXSTDTC of an exposure: its date-time, else its date, else the partial date as sent."""
    return x.start.isoformat() if x.start else _date(x.start_date, x.partial_date)


def _exposure_span(ex: list[Exposure]) -> tuple[str, str]:
    """RFXSTDTC and RFXENDTC: the earliest EXSTDTC and the latest EXENDTC (else EXSTDTC) of the subject's EX rows
    (SDTMIG: first and last exposure to any protocol-specified treatment — lymphodepletion and the product)."""
    dated = [x for x in ex if x.start_date or x.partial_date]
    if not dated:
        return "", ""
    first = min(dated, key=lambda x: (x.start_date or dt.date.max, _ex_start(x)))
    ended = [x for x in ex if x.end_date or x.start_date]
    last = max(ended, key=lambda x: x.end_date or x.start_date or dt.date.min) if ended else None
    return _ex_start(first), (_date(last.end_date) or _ex_start(last)) if last else ""


#: DM.ACTARMCD/ACTARM of an enrolled subject who received no study treatment (SDTMIG 3.2 convention)
NOT_TREATED = ("NOTTRT", "Not Treated")
#: DM.ARMCD/ARM (and ACTARMCD/ACTARM) of a subject the EHR assigns no arm (SDTMIG 3.2 convention)
NOT_ASSIGNED = ("NOTASSGN", "Not Assigned")


def _planned_arm(crf: SubjectCRF) -> tuple[str, str]:
    """ARMCD and ARM: ResearchSubject.assignedArm (or the CRF's arm), ``NOTASSGN`` / ``Not Assigned`` without one."""
    arm = crf.dm.arm or crf.arm
    return (arm, arm) if arm else NOT_ASSIGNED


def _actual_arm(crf: SubjectCRF) -> tuple[str, str]:
    """ACTARMCD and ACTARM: ResearchSubject.actualArm when the EHR gives it; else the planned arm once the
    subject has had the infusion (Day 1), NOTTRT / Not Treated without any EX record; empty when only
    lymphodepletion was given (the arm was only partly received: the sponsor decides). A subject with no
    assigned arm and no EX record is ``NOTASSGN`` here too (SDTMIG 3.2); one treated without an assigned arm is
    empty (the sponsor decides)."""
    if crf.dm.actual_arm:
        return crf.dm.actual_arm, crf.dm.actual_arm
    if not crf.ex:
        return NOT_TREATED if (crf.dm.arm or crf.arm) else NOT_ASSIGNED
    if crf.day1 is not None and any(x.kind == "infusion" for x in crf.ex):
        arm = crf.dm.arm or crf.arm or ""
        return arm, arm
    return "", ""


def lloq(item: Item | None, f: Finding) -> float | None:
    """``--LLOQ`` in the standard (CRF) unit: the item's ``lloq`` (items.yaml: the assay's declared limit, on
    every result of the test), else — on the row of a result reported below a limit (``<0.05``, comparator
    ``<`` or ``<=``) — that limit, which the EHR sends as the value; empty otherwise."""
    if item is not None and item.lloq is not None:
        return item.lloq
    if f.comparator in ("<", "<=") and f.value is not None:
        return f.value
    return None


def nrind(f: Finding) -> str:
    for code in f.interpretation:
        if code in _NRIND:
            return _NRIND[code]
    if f.value is None or f.comparator:
        return ""
    if f.ref_low is not None and f.value < f.ref_low:
        return "LOW"
    if f.ref_high is not None and f.value > f.ref_high:
        return "HIGH"
    if f.ref_low is not None or f.ref_high is not None:
        return "NORMAL"
    return ""


@dataclass
class FindingRows:
    """One subject's rows of a findings domain: each row's cells in ``COLUMNS[domain]`` order, the visit its
    value belongs to (``''`` for none; the unscheduled event's repeat key in ODM) and the reviewer's decision
    on the value, if any."""

    cells: list[list[str]] = field(default_factory=list)
    visits: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any] | None] = field(default_factory=list)


class RowBuilder:
    """Builds the export rows of one subject's CRF; holds only study-level lookups, the CT tables (with their
    record of values that have no term) and the site's MedDRA dictionary when it has one."""

    def __init__(self, study: Study, ct: Terminology | None = None, meddra: Meddra | None = None) -> None:
        self.study = study
        self.study_id = study.info.id
        self.testcd = testcd_map(study)
        self.visitnum = visit_numbers(study)
        self.visit_day = {v.id: v.day for v in study.schedule.visits}
        self.ct = ct or load_terminology()
        self.meddra = meddra
        self.meddra_missing: set[str] = set()
        self.meddra_problem: str | None = None
        self.serious_without_criteria = 0
        #: every column of each domain, empty: a row starts from it, so it has every column in column order
        self._blank = {d: dict.fromkeys(COLUMNS[d], "") for d in DOMAINS}
        self._ids_of: tuple[str, str | None, str | None] | None = None
        self._ids_rows: dict[str, dict[str, Any]] = {}
        self._ids_cells: dict[str, list[str]] = {}

    def _ids(self, crf: SubjectCRF, domain: str) -> dict[str, Any]:
        """The start of each row of ``domain``: every column, the identifiers filled (the same dict for the
        subject's rows: unpacked into each row, never changed)."""
        of = (crf.subject_id, crf.dm.site, crf.dm.investigator_id)
        if of != self._ids_of:
            self._ids_of, self._ids_rows, self._ids_cells = of, {}, {}
        ids = self._ids_rows.get(domain)
        if ids is None:
            ids = self._ids_rows[domain] = {
                **self._blank[domain], "STUDYID": self.study_id, "DOMAIN": domain,
                "USUBJID": f"{self.study_id}-{crf.subject_id}", "SUBJID": crf.subject_id,
                "SITEID": crf.dm.site or "", "INVID": crf.dm.investigator_id or ""}
        return ids

    def _template(self, crf: SubjectCRF, domain: str) -> list[str]:
        """The cells of :meth:`_ids` in column order (copied by each row of ``domain``, never changed)."""
        ids = self._ids(crf, domain)  # (a new subject's first row starts new caches)
        cells = self._ids_cells.get(domain)
        if cells is None:
            cells = self._ids_cells[domain] = list(ids.values())
        return cells

    def _epoch(self, crf: SubjectCRF, d: dt.date | None) -> str:
        """SCREENING from consent to lymphodepletion (or Day 1), TREATMENT from lymphodepletion through the last
        dose of the study product (Day 1 for a single infusion; the last of repeated doses), FOLLOW-UP after
        it; empty before consent (pre-study) or without a date."""
        if d is None or crf.day1 is None:
            return ""
        if crf.dm.consent_date and d < crf.dm.consent_date:
            return ""
        if d > self._last_dose(crf):
            return "FOLLOW-UP"
        if d > crf.day1:
            return "TREATMENT"
        if crf.lymphodepletion_start and d >= crf.lymphodepletion_start:
            return "TREATMENT"
        return "TREATMENT" if d == crf.day1 else "SCREENING"

    @staticmethod
    def _last_dose(crf: SubjectCRF) -> dt.date:
        """The last day the study product was given (its infusions' end, else start dates), at least Day 1."""
        assert crf.day1 is not None
        days = [x.end_date or x.start_date for x in crf.ex if x.kind == "infusion"]
        return max([crf.day1, *(d for d in days if d is not None)])

    def rows(self, crf: SubjectCRF) -> dict[str, list[dict[str, Any]]]:
        """The rows of ``crf`` in every domain but the findings (:meth:`findings`), each a dict keyed by column
        (domains without data give an empty list)."""
        out: dict[str, list[dict[str, Any]]] = {"DM": [self.dm(crf)]}
        out["EX"] = self.ex(crf)
        out["CM"] = self.cm(crf)
        out["AE"] = self.ae(crf)
        out["MH"] = self.mh(crf)
        out["PR"] = self.pr(crf)
        return out

    def dm(self, crf: SubjectCRF) -> dict[str, Any]:
        dm = crf.dm
        actual_cd, actual = _actual_arm(crf)
        arm_cd, arm = _planned_arm(crf)
        first, last = _exposure_span(crf.ex)
        return {
            **self._ids(crf, "DM"), "INVNAM": dm.investigator_name or "", "AGE": "" if dm.age is None else str(dm.age),
            "AGEU": "YEARS" if dm.age is not None else "", "SEX": dm.sex,
            "RACE": self.ct.term("RACE", dm.race, "RACE"), "ETHNIC": self.ct.term("ETHNIC", dm.ethnicity, "ETHNIC"),
            "ARMCD": arm_cd, "ARM": arm, "ACTARMCD": actual_cd, "ACTARM": actual, "COUNTRY": dm.country or "",
            "RFSTDTC": _date(crf.day1), "RFENDTC": _date(dm.end_of_participation), "RFXSTDTC": first,
            "RFXENDTC": last, "RFICDTC": _date(dm.consent_date), "RFPENDTC": _date(dm.end_of_participation),
            "DTHDTC": _date(dm.death_date), "DTHFL": "Y" if dm.deceased else "",
            "SRCREF": " ".join(s.reference for s in dm.source),
        }

    def _qualifier(self, codes: tuple[str, ...], codelist: str) -> str:
        """The first laterality (LAT) or directionality (DIR) term among BodyStructure qualifier codes; codes that
        are neither are reported under ``--LOC`` (no CT term)."""
        for code in codes:
            found = self.ct.codelists[codelist].lookup(code)
            if found is not None:
                return found
        return ""

    def _site(self, p: str, codes: tuple[str, ...]) -> tuple[str, str]:
        """``--LAT`` and ``--DIR`` of BodyStructure qualifier codes (a code that is neither is remembered)."""
        for code in codes:
            if self.ct.codelists["LAT"].lookup(code) is None and self.ct.codelists["DIR"].lookup(code) is None:
                self.ct.missing[(f"{p}LAT/{p}DIR", code)] += 1
        return self._qualifier(codes, "LAT"), self._qualifier(codes, "DIR")

    def _site_columns(self, p: str, codes: tuple[str, ...]) -> dict[str, str]:
        lat, direction = self._site(p, codes)
        return {f"{p}LAT": lat, f"{p}DIR": direction}

    def _dy(self, crf: SubjectCRF, d: dt.date | None) -> str:
        return str(study_day(d, crf.day1)) if d and crf.day1 else ""

    def ex(self, crf: SubjectCRF) -> list[dict[str, Any]]:
        rows = []
        for seq, x in enumerate(crf.ex, start=1):
            start = _ex_start(x)
            rows.append({
                **self._ids(crf, "EX"), "EXSEQ": str(seq), "EXTRT": x.treatment, "EXCAT": x.kind.upper(),
                "EXDOSE": num(x.dose), "EXDOSTXT": x.dose_level or "" if x.dose is None else "",
                "EXDOSU": self.ct.term("UNIT", x.dose_unit, "EXDOSU"),
                "EXROUTE": self.ct.first("ROUTE", [v for v in (x.route_code, x.route) if v], "EXROUTE"),
                "EXSTDTC": start,
                "EXENDTC": _date(x.end_date), "EXSTDY": "" if x.study_day is None else str(x.study_day),
                "EXENDY": self._dy(crf, x.end_date), "EPOCH": self._epoch(crf, x.start_date),
                "SRCREF": x.source.reference,
            })
        return rows

    def _visit_keys(self, visits: Iterable[VisitRecord]) -> dict[str, tuple[str, str, str]]:
        """VISITNUM, VISIT, VISITDY per visit id of this subject."""
        keys: dict[str, tuple[str, str, str]] = {}
        extra: dict[int, int] = {}
        for v in sorted(visits, key=lambda r: (r.study_day if r.study_day is not None else 0, r.visit)):
            if v.visit in self.visitnum:
                planned = str(self.visit_day[v.visit])
                keys[v.visit] = (str(self.visitnum[v.visit]), v.label or v.visit, planned)
                continue
            day = v.study_day if v.study_day is not None else 0
            before = [n for vid, n in self.visitnum.items() if self.visit_day[vid] <= day]
            base = max(before, default=0)
            extra[base] = extra.get(base, 0) + 1
            keys[v.visit] = (num(base + extra[base] / 100), v.label or v.visit, "")
        return keys

    def _valued(self, item: str) -> Callable[[Finding], bool]:
        """Which results of ``item`` can be its baseline: a number for quantities (as the derivations read
        them), any reported result for boolean, coded and text items."""
        spec = self.study.items.get(item)
        if spec is None or spec.value == "quantity":
            return lambda f: f.value is not None
        return lambda f: f.value is not None or f.value_bool is not None or bool(f.value_text)

    def baseline_records(self, crf: SubjectCRF) -> tuple[set[tuple[str, str]], list[Finding]]:
        """The baseline record of each test (docs/clinical-rules.md#baseline, :mod:`fhir_adapter.derive.baseline`):
        (visit id, item) when it is a visit's value, else the result in no visit that the derivations take."""
        dated = [v for v in crf.visits if v.date is not None]
        in_visits = {i for v in crf.visits for i in v.values}
        looked_back: dict[str, list[Finding]] = {}
        for f in crf.findings:
            if in_lookback(crf, f.date):
                looked_back.setdefault(f.item, []).append(f)
        flagged: set[tuple[str, str]] = set()
        priors: list[Finding] = []
        for item in sorted(in_visits | set(looked_back)):
            ok = self._valued(item)
            # each visit's value dated by its own result, as derive.baseline.item_with_baseline dates it
            dates = [kept.date if (kept := v.values.get(item)) is not None and kept.date is not None else v.date
                     for v in dated]
            base = baseline_index(dates, [item in v.values and ok(v.values[item])
                                          and not after_infusion(crf, v.values[item]) for v in dated], crf.day1,
                                  crf.baseline_from)
            # later than every visit's value when found
            prior = prior_result(crf, item, ok, looked_back.get(item, ()))
            if prior is not None:
                priors.append(prior)
            elif base is not None:
                flagged.add((dated[base].visit, item))
        return flagged, priors

    def findings(self, crf: SubjectCRF, review: dict[tuple[str, str], str] | None = None,
                 decisions: dict[tuple[str, str], dict[str, Any]] | None = None) -> dict[str, FindingRows]:
        """Every findings domain's rows for ``crf``, built straight into their cells; ``review`` = the review
        status per (visit, item) (``REVSTAT``, else empty), ``decisions`` = the reviewer's decision per
        (visit, item)."""
        out = {d: FindingRows() for d in FINDINGS_DOMAINS}
        keys = self._visit_keys(crf.visits)
        flagged, priors = self.baseline_records(crf)
        items: dict[str, list[str]] = {d: [] for d in FINDINGS_DOMAINS}

        def add(domain: str, cells: list[str], visit: str, item: str) -> None:
            out[domain].cells.append(cells)
            out[domain].visits.append(visit)
            items[domain].append(item)

        for f in sorted(priors, key=lambda r: (r.date or dt.date.min, r.item)):
            add(f.domain, self._finding(crf, f, ("", "", ""), baseline=True), f"NO-VISIT-{f.date}", f.item)
        # a result dated to the year or month only is placed in no visit (never imputed): still a record of its
        # domain, --DTC as it came, no visit and no study day
        for f in sorted((f for f in crf.findings if f.partial_date and f.date is None and f.domain in out),
                        key=lambda r: (r.partial_date or "", r.item, r.source.reference)):
            add(f.domain, self._finding(crf, f, ("", "", "")), f"NO-VISIT-{f.partial_date}", f.item)
        for v in sorted(crf.visits, key=lambda r: float(keys[r.visit][0])):
            for f in v.values.values():
                add(f.domain, self._finding(crf, f, keys[v.visit], (v.visit, f.item) in flagged), v.visit, f.item)
        labels = {v.id: v.label or v.id for v in self.study.schedule.visits}
        for nd in crf.not_done:
            key = (str(self.visitnum[nd.visit]), labels[nd.visit], str(self.visit_day[nd.visit])) \
                if nd.visit in self.visitnum else keys.get(nd.visit or "", ("", "", ""))  # an unscheduled visit
            add(nd.domain, self._not_done(crf, nd, key), nd.visit or "", nd.item)
        for domain, rows in out.items():
            k = _FINDING_COLUMNS[domain]
            for seq, cells in enumerate(rows.cells, start=1):
                cells[k.SEQ] = str(seq)
            rows.decisions = [None] * len(rows.cells)
            if review is None:
                continue
            for i, (cells, visit, item) in enumerate(zip(rows.cells, rows.visits, items[domain], strict=True)):
                cells[k.REVSTAT] = review.get((visit, item), "unreviewed")
                if decisions:
                    rows.decisions[i] = decisions.get((visit, item))
        return out

    def _finding(self, crf: SubjectCRF, f: Finding, key: tuple[str, str, str], baseline: bool = False) -> list[str]:
        p = f.domain
        k = _FINDING_COLUMNS[p]
        item = self.study.items.get(f.item)
        value = f.value
        if value is not None:
            stresc = f"{f.comparator or ''}{num(value)}"
        elif f.value_bool is not None:
            stresc = "POSITIVE" if item is not None and item.value == "coded" else _yn(f.value_bool)
        else:
            stresc = f.value_text or ""
        orres = f.orig_value if f.orig_value is not None else stresc
        if item is not None and item.value == "boolean" and f.value_bool is not None:
            orres = _yn(f.value_bool)
        if item is not None and item.value == "coded" and f.value_bool is False:
            stresc = "NEGATIVE"
        # the UCUM code of the unit as sent (a spelling such as µmol/L through the study's unit synonyms)
        or_ucum = self.study.ucum_unit(f.orig_unit or f.unit or "") if value is not None else ""
        st_ucum = f.unit or "" if value is not None else ""
        same_unit = f.orig_unit in (None, f.unit)
        # LB is timed by the specimen's collection: LBDTC, and LBDY and EPOCH from LBDTC's date
        collected = f.collected if p == "LB" else None
        dtc = collected.isoformat() if collected else _dtc(f)
        day = collected.date() if collected else f.date
        row = self._template(crf, p).copy()
        row[k.SPID] = f.spid or ""
        row[k.TESTCD] = self.testcd.get(f.item, f.item.upper()[:8])
        row[k.TEST] = (item.label if item else f.item)[:40]
        row[k.CAT] = (f.category or "").upper()
        row[k.ORRES] = orres
        row[k.ORRESU] = self.ct.term("UNIT", or_ucum, p + "ORRESU")
        row[k.STRESC] = stresc
        row[k.STRESN] = num(value) if value is not None and not f.comparator else ""
        row[k.STRESU] = self.ct.term("UNIT", st_ucum, p + "STRESU")
        row[k.ORNRLO] = num(f.ref_low) if same_unit else num(f.orig_ref_low)
        row[k.ORNRHI] = num(f.ref_high) if same_unit else num(f.orig_ref_high)
        row[k.STNRLO] = num(f.ref_low)
        row[k.STNRHI] = num(f.ref_high)
        row[k.NRIND] = nrind(f)
        row[k.LOINC] = f.loinc or ""
        row[k.METHOD] = (f.method or "").upper()
        row[k.LLOQ] = num(lloq(item, f))
        row[k.BLFL] = "Y" if baseline else ""
        row[k.VISITNUM], row[k.VISIT], row[k.VISITDY] = key
        row[k.EPOCH] = self._epoch(crf, day)
        row[k.TPT] = (f.timepoint or "").upper()
        row[k.TPTREF] = (f.timepoint_ref or "").upper()
        row[k.ELTM] = f.elapsed or ""
        row[k.DTC] = dtc
        row[k.DY] = self._dy(crf, day) if collected else ("" if f.study_day is None else str(f.study_day))
        row[k.ORUCUM] = or_ucum
        row[k.STUCUM] = st_ucum
        row[k.SRCSTAT] = f.status
        row[k.SRCREF] = f.source.reference
        row[k.LOC] = (f.specimen_site or f.body_site or "").upper()
        if k.has_pos:
            row[k.POS] = self.ct.term("POSITION", f.position, p + "POS")
        if p == "VS":
            row[k.LAT], row[k.DIR] = self._site(p, f.qualifiers)
        if p == "LB":
            row[k.TOXGR] = "" if f.tox_grade is None else str(f.tox_grade)
            row[k.TOX] = f.tox_scale or ""
            row[k.ANTREG] = (f.specimen_site or "").upper()
            row[k.SPCUFL] = "N" if f.specimen_unusable else ""
            row[k.ENDTC] = f.collected_end.isoformat() if f.collected_end else ""
            row[k.ENDY] = self._dy(crf, f.collected_end.date()) if f.collected_end else ""
            row[k.DUR] = _duration(f.collected, f.collected_end)
        if k.has_specimen:
            row[k.SPEC] = (f.specimen or "").upper()
            row[k.FAST] = _yn(f.fasting)
            row[k.REFID] = f.accession or ""
            row[k.SPCCND] = (f.specimen_condition or "").upper()
            row[k.NAM] = f.performer or ""
            row[k.STNRC] = f.ref_text or ""
        return row

    def _not_done(self, crf: SubjectCRF, nd: NotDone, key: tuple[str, str, str]) -> list[str]:
        p = nd.domain
        item = self.study.items.get(nd.item)
        when = nd.datetime.isoformat() if nd.datetime else _date(nd.date)
        row = {
            **self._ids(crf, p), f"{p}TESTCD": self.testcd.get(nd.item, nd.item.upper()[:8]),
            f"{p}TEST": (item.label if item else nd.item)[:40], f"{p}CAT": (nd.category or "").upper(),
            f"{p}STAT": "NOT DONE", f"{p}REASND": nd.reason, f"{p}LOINC": nd.loinc or "",
            "VISITNUM": key[0], "VISIT": key[1], "VISITDY": key[2], "EPOCH": self._epoch(crf, nd.date),
            f"{p}DTC": when, f"{p}DY": "" if nd.study_day is None else str(nd.study_day), "SRCSTAT": nd.status,
            **({"LBSPCUFL": "N" if nd.specimen_unusable else "", "LBREFID": nd.accession or "",
                "LBSPCCND": (nd.specimen_condition or "").upper()} if p == "LB" else {}),
            "SRCREF": nd.source.reference,
        }
        return [row[c] for c in COLUMNS[p]]

    def _cm_frequency(self, c: ConMed) -> str:
        """CMDOSFRQ: PRN; else the fixed interval (Q<N>H) when the timing is one; else the count per day."""
        if c.as_needed:
            return self.ct.term("FREQ", "PRN", "CMDOSFRQ")
        if c.interval_hours is not None:
            return self.ct.term("FREQ", f"Q{num(c.interval_hours)}H", "CMDOSFRQ")
        freq = c.frequency_per_day
        return "" if freq is None else self.ct.term("FREQ", num(freq), "CMDOSFRQ", f"{num(freq)} per day")

    def cm(self, crf: SubjectCRF) -> list[dict[str, Any]]:
        rows = []
        for seq, c in enumerate(crf.cm, start=1):
            route = self.ct.first("ROUTE", [v for v in (c.route_code, c.route) if v], "CMROUTE")
            rows.append({
                **self._ids(crf, "CM"), "CMSEQ": str(seq), "CMSPID": c.spid or "",
                "CMTRT": c.verbatim or c.drug, "CMDECOD": c.drug.upper() if c.drug_class != "other" or c.rxnorm
                or c.cvx else "", "CMINGRD": c.ingredients or "", "CMCODE": c.rxnorm or c.cvx or "",
                "CMCAT": (c.category or "").upper().replace("-", " "), "CMDOSTXT": c.dose_text or "",
                "CMCLAS": c.drug_class.upper(), "CMCLASCD": c.atc or "", "CMINDC": c.indication or "",
                "CMOCCUR": "N" if c.status == "not-taken" else "Y", "CMAENO": c.ae_spid or "",
                "CMMHNO": c.mh_spid or "", "CMDOSE": num(c.dose),
                "CMDOSU": self.ct.term("UNIT", c.dose_unit, "CMDOSU"),
                "CMDOSFRM": self.ct.term("FRM", c.dose_form, "CMDOSFRM"),
                "CMDOSFRQ": self._cm_frequency(c),
                "CMDOSTOT": num(c.daily_dose_mg), "CMROUTE": route,
                "CMSTDTC": _date(c.start_date, c.partial_start), "CMENDTC": _date(c.end_date, c.partial_end),
                "CMSTDY": self._dy(crf, c.start_date), "CMENDY": self._dy(crf, c.end_date),
                "EPOCH": self._epoch(crf, c.start_date),
                "SRCTYPE": c.source_kind, "SRCSTAT": c.status or "", "SRCREF": c.source.reference,
            })
        return rows

    def _meddra(self, p: str, code: str | None, term: str | None) -> dict[str, str]:
        """The MedDRA columns of an event: LLT from the EHR's coding; PT and above from the site's dictionary
        (without one the PT columns repeat the coding, read as a PT-level code, and HLT…SOC stay empty)."""
        out = {f"{p}{m}": "" for m in _MEDDRA} | ({"AEBODSYS": "", "AEBDSYCD": ""} if p == "AE" else {})
        if not code:
            return out
        out |= {f"{p}LLT": term or "", f"{p}LLTCD": code}
        h = self.meddra.hierarchy(code) if self.meddra else None
        if h is None:
            if self.meddra is not None:
                self.meddra_missing.add(code)
            return out | {f"{p}DECOD": term or "", f"{p}PTCD": code}
        out |= {f"{p}LLT": h.llt, f"{p}DECOD": h.pt, f"{p}PTCD": h.pt_code, f"{p}HLT": h.hlt,
                f"{p}HLTCD": h.hlt_code, f"{p}HLGT": h.hlgt, f"{p}HLGTCD": h.hlgt_code, f"{p}SOC": h.soc,
                f"{p}SOCCD": h.soc_code}
        if p == "AE":  # the body system the analysis uses is the primary SOC
            out |= {"AEBODSYS": h.soc, "AEBDSYCD": h.soc_code}
        return out

    def ae(self, crf: SubjectCRF) -> list[dict[str, Any]]:
        rows = []
        last = _last_date(crf)
        for seq, a in enumerate(crf.ae, start=1):
            cat = "CRS" if a.crs else ("ICANS" if a.icans else "")
            ongoing = a.outcome in ("ongoing", "recovering") and a.resolution_date is None
            flags = self.ct.serious_flags(a.serious_criteria)
            if a.serious and not flags:
                self.serious_without_criteria += 1
            known = a.serious is not None
            rows.append({
                **self._ids(crf, "AE"), "AESEQ": str(seq), "AESPID": a.spid or "", "AETERM": a.term,
                **self._meddra("AE", a.meddra_code, a.meddra_term),
                "AECODE": ";".join(a.codes),
                "AESEV": self.ct.term("AESEV", a.severity, "AESEV"),
                "AETOXGR": "" if a.grade is None else str(a.grade),
                "AETOXAPP": _yn(a.grade_approximate or None),
                "AESER": _yn(a.serious),
                "DTHDTC": _date(crf.dm.death_date) if a.outcome in FATAL_OUTCOMES or "AESDTH" in flags else "",
                **{f: ("Y" if f in flags else "N") if known else ""
                   for f in ("AESDTH", "AESLIFE", "AESHOSP", "AESDISAB", "AESCONG", "AESMIE")},
                "AEACN": self.ct.term("ACN", a.action_taken, "AEACN"),
                "AECONTRT": _yn(bool(a.treatments)) if a.mitigation_recorded else "",
                "AEACNOTH": "; ".join(a.other_actions),
                "AEACNOYN": _yn(bool(a.other_actions)) if a.mitigation_recorded else "",
                "AEREL": _yn(a.related), "AERELNST": "",
                "AEOUT": self.ct.term("OUT", a.outcome, "AEOUT"), "AELOC": (a.body_site or "").upper(),
                **self._site_columns("AE", a.qualifiers),
                "AESTDTC": _moment(a.onset_datetime) or _date(a.onset_date, a.onset_partial),
                "AEENDTC": _moment(a.resolution_datetime) or _date(a.resolution_date, a.resolution_partial),
                "AEENRTPT": "ONGOING" if ongoing else "", "AEENTPT": last if ongoing else "",
                "AESTDY": "" if a.study_day is None else str(a.study_day),
                "AEENDY": "" if a.end_study_day is None else str(a.end_study_day),
                "EPOCH": self._epoch(crf, a.onset_date),
                "AETRTEM": _yn(a.teae), "AEPREINF": _yn(a.pre_infusion or None), "AECAT": cat,
                "SRCREF": a.source.reference,
            })
        return rows

    def mh(self, crf: SubjectCRF) -> list[dict[str, Any]]:
        rows = []
        for seq, m in enumerate(crf.mh, start=1):
            enrtpt = "" if m.ongoing is None else ("ONGOING" if m.ongoing else "BEFORE")
            rows.append({
                **self._ids(crf, "MH"), "MHSEQ": str(seq), "MHSPID": m.spid or "", "MHTERM": m.term,
                **self._meddra("MH", m.meddra_code, m.meddra_term),
                "MHCAT": (m.category or m.kind).upper().replace("-", " "),
                "MHSCAT": (m.subcategory or "").upper().replace("-", " "), "MHOCCUR": "Y" if m.occurred else "N",
                "MHDTC": _date(m.recorded_date), "MHSTDTC": _date(m.start_date, m.start_partial),
                "MHENDTC": _date(m.end_date, m.end_partial), "MHENRTPT": enrtpt,
                "MHENTPT": _date(crf.dm.consent_date) if enrtpt else "",
                "MHCTRL": "" if m.ongoing is None else _yn(not m.ongoing), "MHLOC": (m.body_site or "").upper(),
                "EPOCH": self._epoch(crf, m.start_date), "SRCTYPE": m.source.resource_type,
                "SRCREF": m.source.reference,
            })
        return rows

    def pr(self, crf: SubjectCRF) -> list[dict[str, Any]]:
        rows = []
        last = _last_date(crf)
        for seq, r in enumerate(crf.pr, start=1):
            start = r.start.isoformat() if r.start else _date(r.start_date, r.start_partial)
            meddra = self._meddra("PR", r.meddra_code, r.meddra_term)
            meddra_pt = meddra.pop("PRDECOD")
            rows.append({
                **self._ids(crf, "PR"), "PRSEQ": str(seq), "PRSPID": r.spid or "", "PRTRT": r.term,
                "PRDECOD": r.dictionary_term or meddra_pt, **meddra, "PRCODE": ";".join(r.codes),
                "PRCAT": (r.category or "").upper(),
                "PROCCUR": "Y" if r.occurred else "N",
                "PRDOSFRQ": "" if r.frequency_per_day is None else self.ct.term(
                    "FREQ", num(r.frequency_per_day), "PRDOSFRQ", f"{num(r.frequency_per_day)} per day"),
                "PRREASND": r.reason_not_done or "",
                "PRREASOC": (r.status_reason if r.status == "not-done" else r.indication) or "",
                "PRINDC": r.indication or "", "PRAENO": r.ae_spid or "", "PRLOC": (r.body_site or "").upper(),
                **self._site_columns("PR", r.qualifiers),
                "PRSTDTC": start, "PRENDTC": _date(r.end_date), "PRSTRF": _strf(r.start_date, crf.day1),
                "PRITRPYN": "Y" if r.status in ("stopped", "on-hold") else ("N" if r.status == "completed" else ""),
                "PRITRPRS": (r.status_reason or "") if r.status in ("stopped", "on-hold") else "",
                "PRENRTPT": "ONGOING" if r.status == "in-progress" else "",
                "PRENTPT": last if r.status == "in-progress" else "",
                "PRSTDY": "" if r.study_day is None else str(r.study_day), "PRENDY": self._dy(crf, r.end_date),
                "EPOCH": self._epoch(crf, r.start_date),
                "SRCSTAT": r.status, "SRCREF": r.source.reference,
            })
        return rows

    def cdisc_report(self) -> dict[str, Any]:
        """What the run report says about the CDISC exports: the CT package and the values without a term,
        the MedDRA dictionary in use (or why the hierarchy columns are empty), AESER=Y without criteria."""
        meddra: dict[str, Any] = {"dictionary": str(self.meddra.folder), "version": self.meddra.version,
                                  "codes_not_in_dictionary": sorted(self.meddra_missing)} if self.meddra else {
            "dictionary": None,
            **({"error": self.meddra_problem} if self.meddra_problem else {}),
            "note": "no MedDRA dictionary configured (meddra_dir in the site overlay, or FHIR_ADAPTER_MEDDRA_DIR): "
                    "--LLT/--LLTCD hold the EHR's MedDRA coding, --DECOD/--PTCD repeat it as sent, and "
                    "--HLT, --HLGT, --SOC (and codes) stay empty",
        }
        return {**self.ct.report(), "meddra": meddra,
                "aeser_y_without_criteria": self.serious_without_criteria}
