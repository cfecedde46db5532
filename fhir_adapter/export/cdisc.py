"""CRF → CDISC-style rows (CDASH/SDTM variable names), one list of rows per domain. Pure: no I/O.

One row per subject (DM), per exposure (EX), per medication record (CM), per adverse event (AE), and per
subject/visit/item for the findings domains (LB, VS, PC, QS, IS): the value the visit keeps by the item's
selection rule — what a CRF page shows — not every result of the timeline.

Column conventions (SDTM IG v3.4 names; ``--`` is the domain prefix):

* ``USUBJID`` = ``STUDYID-SUBJID``; ``SITEID`` = the Patient's managing organisation (id or display).
* ``--ORRES``/``--ORRESU``: the value and unit as the EHR sent them; ``--STRESC``/``--STRESN``/``--STRESU``:
  in the CRF unit of ``items.yaml`` (``--STRESN`` is empty for censored values such as ``<0.2``).
* ``--ORNRLO``/``--ORNRHI``: the reference range in the original unit, filled only when the value came in
  the CRF unit (the mapping stores ranges converted); ``--STNRLO``/``--STNRHI``: the range in the CRF unit.
* ``--NRIND``: from the interpretation code (H, HH → HIGH; L, LL → LOW; N → NORMAL; A, AA → ABNORMAL),
  else from the range; ``--STAT`` is empty (a CRF row exists only for a result that was done).
* ``--DTC``: ISO 8601 in the site time zone; a partial date stays partial (``2024-03``), never imputed.
* ``VISITNUM``: the position of the visit in ``schedule.yaml`` (1, 2, …); an unscheduled visit gets the
  number of the last scheduled visit whose target day precedes it plus .01, .02, … (SDTM convention);
  ``VISITDY``: the planned study day (empty for unscheduled visits).
* ``SRCREF``: the FHIR resource the value came from (``Observation/123/_history/2``); ``SRCSTAT``: its
  status (``final``, ``amended``, ``corrected``, ``preliminary``).
* ``REVSTAT``: the value's review status (``unreviewed``, ``accepted``, ``changed``, ``not-available`` has no
  row, ``query``, ``re-review``; docs/review.md) — empty when the rows were built without review.

No name, MRN, address or birth date is ever written: DM carries the age at consent only.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from fhir_adapter.crf.models import Finding, SubjectCRF, VisitRecord
from fhir_adapter.study import Study
from fhir_adapter.timeline import study_day

FINDINGS_DOMAINS = ("LB", "VS", "PC", "QS", "IS")
DOMAINS = ("DM", "EX", *FINDINGS_DOMAINS, "CM", "AE")
DOMAIN_LABELS = {
    "DM": "Demographics", "EX": "Exposure", "LB": "Laboratory Test Results", "VS": "Vital Signs",
    "PC": "Pharmacokinetics Concentrations (cellular kinetics)", "QS": "Questionnaires (SLEDAI-2K, PGA)",
    "IS": "Immunogenicity Specimen Assessments", "CM": "Concomitant Medications", "AE": "Adverse Events",
}
_IDS = ("STUDYID", "DOMAIN", "USUBJID", "SUBJID", "SITEID")

#: ODM DataType of each column (``--`` stands for the domain prefix); any other column is text
DATA_TYPES: dict[str, str] = {
    "AGE": "integer", "RFSTDTC": "date", "RFICDTC": "date", "VISITNUM": "float", "VISITDY": "integer",
    "--SEQ": "integer", "--STRESN": "float", "--ORNRLO": "float", "--ORNRHI": "float", "--STNRLO": "float",
    "--STNRHI": "float", "--LLOQ": "float", "--DTC": "partialDatetime", "--DY": "integer",
    "--DOSE": "float", "--DOSTOT": "float", "--STDTC": "partialDatetime", "--ENDTC": "partialDate",
    "--STDY": "integer", "--ENDY": "integer", "--TOXGR": "integer",
}


def _findings_columns(p: str) -> tuple[str, ...]:
    return (*_IDS, f"{p}SEQ", f"{p}TESTCD", f"{p}TEST", f"{p}ORRES", f"{p}ORRESU", f"{p}STRESC", f"{p}STRESN",
            f"{p}STRESU", f"{p}ORNRLO", f"{p}ORNRHI", f"{p}STNRLO", f"{p}STNRHI", f"{p}NRIND", f"{p}STAT",
            f"{p}LLOQ", "VISITNUM", "VISIT", "VISITDY", f"{p}DTC", f"{p}DY", "SRCSTAT", "SRCREF", "REVSTAT")


COLUMNS: dict[str, tuple[str, ...]] = {
    "DM": (*_IDS, "AGE", "AGEU", "SEX", "ARMCD", "ARM", "RFSTDTC", "RFICDTC", "SRCREF"),
    "EX": (*_IDS, "EXSEQ", "EXTRT", "EXCAT", "EXDOSE", "EXDOSU", "EXROUTE", "EXSTDTC", "EXENDTC", "EXSTDY",
           "SRCREF"),
    **{d: _findings_columns(d) for d in FINDINGS_DOMAINS},
    "CM": (*_IDS, "CMSEQ", "CMTRT", "CMCODE", "CMCLAS", "CMDOSE", "CMDOSU", "CMDOSFRQ", "CMDOSTOT", "CMROUTE",
           "CMSTDTC", "CMENDTC", "CMSTDY", "CMENDY", "SRCTYPE", "SRCSTAT", "SRCREF"),
    "AE": (*_IDS, "AESEQ", "AETERM", "AECODE", "AETOXGR", "AETOXAPP", "AESER", "AEREL", "AERELNST", "AEOUT",
           "AESTDTC", "AEENDTC", "AESTDY", "AEENDY", "AETRTEM", "AEPREINF", "AECAT", "SRCREF"),
}

_NRIND = {"H": "HIGH", "HH": "HIGH", "HU": "HIGH", "L": "LOW", "LL": "LOW", "LU": "LOW", "N": "NORMAL",
          "A": "ABNORMAL", "AA": "ABNORMAL", "POS": "ABNORMAL", "NEG": "NORMAL"}
_FREQ = {1.0: "QD", 2.0: "BID", 3.0: "TID", 4.0: "QID", 0.5: "QOD"}


def data_type(column: str) -> str:
    """ODM DataType of an export column."""
    if column in DATA_TYPES:
        return DATA_TYPES[column]
    generic = "--" + column[2:] if len(column) > 2 else column
    return DATA_TYPES.get(generic, "text")


def num(value: float | int | None) -> str:
    """A number as a plain decimal (no exponent, no trailing zeros): valid xs:decimal and CSV-friendly."""
    if value is None:
        return ""
    text = format(Decimal(repr(float(value))).normalize(), "f")
    return text[:-2] if text.endswith(".0") else text


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


def _yn(flag: bool | None) -> str:
    return "" if flag is None else ("Y" if flag else "N")


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


class RowBuilder:
    """Builds the export rows of one subject's CRF; holds only study-level lookups."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.study_id = study.info.id
        self.testcd = testcd_map(study)
        self.visitnum = visit_numbers(study)
        self.visit_day = {v.id: v.day for v in study.schedule.visits}

    def _ids(self, crf: SubjectCRF, domain: str) -> dict[str, Any]:
        return {"STUDYID": self.study_id, "DOMAIN": domain, "USUBJID": f"{self.study_id}-{crf.subject_id}",
                "SUBJID": crf.subject_id, "SITEID": crf.dm.site or ""}

    def rows(self, crf: SubjectCRF) -> dict[str, list[dict[str, Any]]]:
        """Every domain's rows for ``crf`` (domains without data give an empty list)."""
        out: dict[str, list[dict[str, Any]]] = {d: [] for d in DOMAINS}
        out["DM"].append(self.dm(crf))
        out["EX"] = self.ex(crf)
        for domain, rows in self.findings(crf).items():
            out[domain] = rows
        out["CM"] = self.cm(crf)
        out["AE"] = self.ae(crf)
        return out

    def dm(self, crf: SubjectCRF) -> dict[str, Any]:
        dm = crf.dm
        return {
            **self._ids(crf, "DM"), "AGE": "" if dm.age is None else str(dm.age),
            "AGEU": "YEARS" if dm.age is not None else "", "SEX": dm.sex, "ARMCD": dm.arm or crf.arm or "",
            "ARM": dm.arm or crf.arm or "", "RFSTDTC": _date(crf.day1), "RFICDTC": _date(dm.consent_date),
            "SRCREF": " ".join(s.reference for s in dm.source),
        }

    def _dy(self, crf: SubjectCRF, d: dt.date | None) -> str:
        return str(study_day(d, crf.day1)) if d and crf.day1 else ""

    def ex(self, crf: SubjectCRF) -> list[dict[str, Any]]:
        rows = []
        for seq, x in enumerate(crf.ex, start=1):
            start = x.start.isoformat() if x.start else _date(x.start_date, x.partial_date)
            rows.append({
                **self._ids(crf, "EX"), "EXSEQ": str(seq), "EXTRT": x.treatment, "EXCAT": x.kind.upper(),
                "EXDOSE": num(x.dose), "EXDOSU": x.dose_unit or "", "EXROUTE": x.route or "",
                "EXSTDTC": start,
                "EXENDTC": _date(x.end_date), "EXSTDY": "" if x.study_day is None else str(x.study_day),
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

    def findings(self, crf: SubjectCRF) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {d: [] for d in FINDINGS_DOMAINS}
        keys = self._visit_keys(crf.visits)
        for v in sorted(crf.visits, key=lambda r: float(keys[r.visit][0])):
            for f in v.values.values():
                out[f.domain].append(self._finding(crf, f, v.visit, keys[v.visit]))
        for domain, rows in out.items():
            for seq, row in enumerate(rows, start=1):
                row[f"{domain}SEQ"] = str(seq)
        return out

    def _finding(self, crf: SubjectCRF, f: Finding, visit: str, key: tuple[str, str, str]) -> dict[str, Any]:
        p = f.domain
        item = self.study.items.get(f.item)
        if f.value is not None:
            stresc = f"{f.comparator or ''}{num(f.value)}"
        elif f.value_bool is not None:
            stresc = "POSITIVE" if item is not None and item.value == "coded" else _yn(f.value_bool)
        else:
            stresc = f.value_text or ""
        orres = f.orig_value if f.orig_value is not None else stresc
        if item is not None and item.value == "boolean" and f.value_bool is not None:
            orres = _yn(f.value_bool)
        if item is not None and item.value == "coded" and f.value_bool is False:
            stresc = "NEGATIVE"
        same_unit = f.orig_unit in (None, f.unit)
        return {
            **self._ids(crf, p), f"{p}TESTCD": self.testcd.get(f.item, f.item.upper()[:8]),
            f"{p}TEST": item.label if item else f.item, f"{p}ORRES": orres,
            f"{p}ORRESU": (f.orig_unit or f.unit or "") if f.value is not None else "", f"{p}STRESC": stresc,
            f"{p}STRESN": num(f.value) if f.value is not None and not f.comparator else "",
            f"{p}STRESU": f.unit or "" if f.value is not None else "",
            f"{p}ORNRLO": num(f.ref_low) if same_unit else "",
            f"{p}ORNRHI": num(f.ref_high) if same_unit else "",
            f"{p}STNRLO": num(f.ref_low), f"{p}STNRHI": num(f.ref_high), f"{p}NRIND": nrind(f),
            f"{p}STAT": "",
            f"{p}LLOQ": num(item.lloq) if item and item.lloq is not None else "",
            "VISITNUM": key[0], "VISIT": key[1], "VISITDY": key[2], f"{p}DTC": _dtc(f),
            f"{p}DY": "" if f.study_day is None else str(f.study_day), "SRCSTAT": f.status,
            "SRCREF": f.source.reference, "_visit": visit, "_item": f.item,
        }

    def cm(self, crf: SubjectCRF) -> list[dict[str, Any]]:
        rows = []
        for seq, c in enumerate(crf.cm, start=1):
            freq = c.frequency_per_day
            rows.append({
                **self._ids(crf, "CM"), "CMSEQ": str(seq), "CMTRT": c.drug, "CMCODE": c.rxnorm or "",
                "CMCLAS": c.drug_class.upper(), "CMDOSE": num(c.dose), "CMDOSU": c.dose_unit or "",
                "CMDOSFRQ": "" if freq is None else _FREQ.get(freq, f"{num(freq)} PER DAY"),
                "CMDOSTOT": num(c.daily_dose_mg), "CMROUTE": c.route or "",
                "CMSTDTC": _date(c.start_date, c.partial_start), "CMENDTC": _date(c.end_date, c.partial_end),
                "CMSTDY": self._dy(crf, c.start_date), "CMENDY": self._dy(crf, c.end_date),
                "SRCTYPE": c.source_kind, "SRCSTAT": c.status or "", "SRCREF": c.source.reference,
            })
        return rows

    def ae(self, crf: SubjectCRF) -> list[dict[str, Any]]:
        rows = []
        for seq, a in enumerate(crf.ae, start=1):
            cat = "CRS" if a.crs else ("ICANS" if a.icans else "")
            rows.append({
                **self._ids(crf, "AE"), "AESEQ": str(seq), "AETERM": a.term, "AECODE": ";".join(a.codes),
                "AETOXGR": "" if a.grade is None else str(a.grade),
                "AETOXAPP": _yn(a.grade_approximate or None),
                "AESER": _yn(a.serious), "AEREL": _yn(a.related), "AERELNST": a.relatedness or "",
                "AEOUT": a.outcome or "", "AESTDTC": _date(a.onset_date, a.onset_partial),
                "AEENDTC": _date(a.resolution_date, a.resolution_partial),
                "AESTDY": "" if a.study_day is None else str(a.study_day),
                "AEENDY": "" if a.end_study_day is None else str(a.end_study_day),
                "AETRTEM": _yn(a.teae), "AEPREINF": _yn(a.pre_infusion or None), "AECAT": cat,
                "SRCREF": a.source.reference,
            })
        return rows
