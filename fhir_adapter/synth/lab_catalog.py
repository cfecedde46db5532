"""What the hospital labs report: LOINC / local codes, UCUM units, decimals, reference and critical limits.

Values are generated in the canonical unit of each analyte and converted to the unit a site reports
(``sites.SiteConventions.units``) with ``UNIT_CONVERSIONS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir_adapter.terminology.codes import CS_CLINICAL_INPUT, LOINC, OBS_CATEGORY, UCUM

from .sites import SITES


@dataclass(frozen=True, slots=True)
class Analyte:
    key: str
    system: str
    code: str
    display: str
    unit: str                       # canonical UCUM code
    decimals: int
    low: float | None = None        # reference range, canonical unit
    high: float | None = None
    crit_low: float | None = None   # below -> LL
    crit_high: float | None = None  # above -> HH
    local: str = ""                 # local lab mnemonic (sites with local_lab_codes)
    category: str = "laboratory"
    text: str = ""                  # code.text as the lab's report prints it (default: display)


def _lab(key: str, code: str, display: str, unit: str, decimals: int, low: float | None, high: float | None,
         local: str, crit_low: float | None = None, crit_high: float | None = None) -> Analyte:
    return Analyte(key, LOINC, code, display, unit, decimals, low, high, crit_low, crit_high, local,
                   text=LAB_TEXT.get(key, ""))


#: report names of the lab tests (code.text)
LAB_TEXT: dict[str, str] = {
    "leukocytes": "White blood cell count", "neutrophils": "Neutrophils, absolute",
    "lymphocytes": "Lymphocytes, absolute", "hemoglobin": "Hemoglobin", "platelets": "Platelet count",
    "creatinine": "Creatinine, serum", "egfr": "eGFR (CKD-EPI 2021)", "urine_rbc": "Urine sediment: RBC/HPF",
    "urine_wbc": "Urine sediment: WBC/HPF", "rbc_casts": "Urine sediment: RBC casts",
    "granular_casts": "Urine sediment: granular casts", "upcr": "Protein/creatinine ratio, spot urine",
    "protein_24h": "Protein, 24-hour urine", "c3": "Complement C3", "c4": "Complement C4",
    "ch50": "Complement CH50", "dsdna": "Anti-dsDNA antibodies", "anti_sm": "Anti-Sm antibodies",
    "ana": "Antinuclear antibodies (screen)", "igg": "Immunoglobulin G", "iga": "Immunoglobulin A",
    "igm": "Immunoglobulin M", "cd19": "CD19+ B cells, absolute", "crp": "C-reactive protein",
    "ferritin": "Ferritin", "il6": "Interleukin-6",
}


ANALYTES: dict[str, Analyte] = {a.key: a for a in (
    _lab("leukocytes", "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*9/L", 2, 4.0, 10.0,
         "WBC", crit_low=1.0, crit_high=30.0),
    _lab("neutrophils", "751-8", "Neutrophils [#/volume] in Blood by Automated count", "10*9/L", 2, 1.8, 7.5,
         "NEUT#", crit_low=0.5),
    _lab("lymphocytes", "731-0", "Lymphocytes [#/volume] in Blood by Automated count", "10*9/L", 2, 1.0, 4.0,
         "LYMPH#"),
    _lab("hemoglobin", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 1, 12.0, 16.0, "HGB",
         crit_low=7.0),
    _lab("platelets", "777-3", "Platelets [#/volume] in Blood by Automated count", "10*9/L", 0, 150, 400,
         "PLT", crit_low=50, crit_high=1000),
    _lab("creatinine", "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 2, 0.5, 1.1, "CREA"),
    _lab("egfr", "98979-8", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, "
         "Plasma or Blood by Creatinine-based formula (CKD-EPI 2021)", "mL/min/{1.73_m2}", 0, 60, None, "EGFR"),
    _lab("urine_rbc", "13945-1", "Erythrocytes [#/area] in Urine sediment by Microscopy high power field",
         "/[HPF]", 0, None, 2, "U-RBC"),
    _lab("urine_wbc", "5821-4", "Leukocytes [#/area] in Urine sediment by Microscopy high power field",
         "/[HPF]", 0, None, 5, "U-WBC"),
    _lab("rbc_casts", "5800-7", "Erythrocyte casts [#/area] in Urine sediment by Microscopy high power field",
         "/[HPF]", 0, None, 0, "U-RBCCAST"),
    _lab("granular_casts", "105086-3", "Granular casts [#/area] in Urine", "/[LPF]", 0, None, 0, "U-GRCAST"),
    _lab("upcr", "2890-2", "Protein/Creatinine [Mass Ratio] in Urine", "mg/mg", 2, None, 0.2, "UPCR"),
    _lab("protein_24h", "2889-4", "Protein [Mass/time] in 24 hour Urine", "g/(24.h)", 2, None, 0.15,
         "U24PROT"),
    _lab("c3", "4485-9", "Complement C3 [Mass/volume] in Serum or Plasma", "g/L", 2, 0.9, 1.8, "C3"),
    _lab("c4", "4498-2", "Complement C4 [Mass/volume] in Serum or Plasma", "g/L", 2, 0.1, 0.4, "C4"),
    _lab("ch50", "4532-8", "Complement total hemolytic CH50 [Units/volume] in Serum or Plasma", "U/mL", 0,
         42, 95, "CH50"),
    _lab("dsdna", "5130-0", "DNA double strand Ab [Units/volume] in Serum", "[IU]/mL", 0, None, 30, "DSDNA"),
    _lab("anti_sm", "18323-6", "Smith extractable nuclear IgG Ab [Units/volume] in Serum", "U/mL", 1, None,
         7.0, "SM"),
    _lab("ana", "8061-4", "Nuclear Ab [Presence] in Serum", "", 0, None, None, "ANA"),
    _lab("igg", "2465-3", "IgG [Mass/volume] in Serum or Plasma", "g/L", 1, 7.0, 16.0, "IGG"),
    _lab("iga", "2458-8", "IgA [Mass/volume] in Serum or Plasma", "g/L", 2, 0.7, 4.0, "IGA"),
    _lab("igm", "2472-4", "IgM [Mass/volume] in Serum or Plasma", "g/L", 2, 0.4, 2.3, "IGM"),
    _lab("cd19", "8116-6", "CD19 cells [#/volume] in Blood", "/uL", 0, 80, 616, "CD19ABS"),
    _lab("crp", "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", 1, None, 5.0, "CRP"),
    _lab("ferritin", "2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL", 0, 15, 150, "FERR"),
    _lab("il6", "26881-3", "Interleukin 6 [Mass/volume] in Serum or Plasma", "pg/mL", 1, None, 7.0, "IL6"),
    Analyte("temperature", LOINC, "8310-5", "Body temperature", "Cel", 1, category="vital-signs"),
    Analyte("weight", LOINC, "29463-7", "Body weight", "kg", 1, category="vital-signs"),
    Analyte("height", LOINC, "8302-2", "Body height", "cm", 0, category="vital-signs"),
    Analyte("spo2", LOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 0,
            category="vital-signs"),
    Analyte("car_transgene", CS_CLINICAL_INPUT, "car-transgene-copies",
            "CAR transgene copies per microgram genomic DNA (qPCR)", "{copies}/ug{DNA}", 0),
    Analyte("car_cells", CS_CLINICAL_INPUT, "car-positive-cells",
            "CAR-positive T cells per microlitre of blood (flow cytometry)", "/uL", 1),
    Analyte("anti_car", CS_CLINICAL_INPUT, "anti-car-antibody", "Anti-CAR antibody", "", 0),
)}

#: sex-specific reference ranges (canonical units) that replace the Analyte's low/high
SEX_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("hemoglobin", "male"): (13.5, 17.5),
    ("creatinine", "male"): (0.7, 1.3),
    ("ferritin", "male"): (30, 400),
}

#: canonical unit -> site unit: (factor, offset, decimals in the site unit)
UNIT_CONVERSIONS: dict[tuple[str, str], tuple[float, float, int]] = {
    ("g/L", "mg/dL"): (100.0, 0.0, 0),
    ("10*9/L", "10*3/uL"): (1.0, 0.0, -1),      # -1: keep the analyte's decimals
    ("mg/mg", "mg/g{creat}"): (1000.0, 0.0, 0),
    ("Cel", "[degF]"): (1.8, 32.0, 1),
}

#: human-readable unit strings the labs print (valueQuantity.unit); UCUM code goes in .code
UNIT_DISPLAY: dict[str, str] = {
    "10*9/L": "10^9/L", "10*3/uL": "10^3/uL", "g/dL": "g/dL", "mg/dL": "mg/dL", "g/L": "g/L",
    "mL/min/{1.73_m2}": "mL/min/1.73m2", "/[HPF]": "/HPF", "/[LPF]": "/LPF", "mg/mg": "mg/mg",
    "mg/g{creat}": "mg/g creat", "g/(24.h)": "g/24h", "U/mL": "U/mL", "[IU]/mL": "IU/mL", "/uL": "/uL",
    "mg/L": "mg/L", "ng/mL": "ng/mL", "pg/mL": "pg/mL", "Cel": "Cel", "[degF]": "degF", "kg": "kg", "cm": "cm",
    "%": "%", "mm[Hg]": "mmHg", "{copies}/ug{DNA}": "copies/ug DNA", "{score}": "{score}", "mm": "mm",
}

#: analytes whose site-level reference high is the site's own assay cut-off
_SITE_ULN = {"dsdna"}


@dataclass(frozen=True, slots=True)
class SiteAnalyte:
    """An analyte as one site reports it: ready-made JSON fragments and limits in the site's unit."""

    key: str
    code: dict[str, Any]
    category: list[dict[str, Any]]
    unit: str
    unit_display: str
    factor: float
    offset: float
    decimals: int
    low: float | None
    high: float | None
    crit_low: float | None
    crit_high: float | None
    reference_range: list[dict[str, Any]] | None
    #: pre-encoded JSON: '"category":..,"code":..', ',"referenceRange":..' (or ''), and the valueQuantity
    #: tail after the value: ',"unit":..,"system":..,"code":..}'
    head_json: str
    range_json: str
    unit_json: str


def to_json(obj: Any) -> str:
    """Compact JSON as written to the NDJSON files."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": UNIT_DISPLAY.get(unit, unit), "system": UCUM, "code": unit}


def category(code: str) -> list[dict[str, Any]]:
    display = {"laboratory": "Laboratory", "vital-signs": "Vital Signs", "exam": "Exam", "survey": "Survey"}
    return [{"coding": [{"system": OBS_CATEGORY, "code": code, "display": display[code]}]}]


def _round(x: float | None, decimals: int) -> float | None:
    if x is None:
        return None
    return round(x) if decimals <= 0 else round(x, decimals)


@lru_cache(maxsize=1024)
def site_analyte(site: int, key: str, sex: str) -> SiteAnalyte:
    conv = SITES[site]
    a = ANALYTES[key]
    unit = conv.units.get(key, a.unit)
    factor, offset, decimals = 1.0, 0.0, a.decimals
    if unit != a.unit:
        factor, offset, dec = UNIT_CONVERSIONS[(a.unit, unit)]
        decimals = a.decimals if dec < 0 else dec
    low, high = SEX_RANGES.get((key, sex), (a.low, a.high))
    if key in _SITE_ULN:
        high = conv.dsdna_uln

    def conv_limit(x: float | None) -> float | None:
        return _round(None if x is None else x * factor + offset, decimals)

    lo_s, hi_s = conv_limit(low), conv_limit(high)
    rr: dict[str, Any] = {}
    if lo_s is not None:
        rr["low"] = quantity(lo_s, unit)
    if hi_s is not None:
        rr["high"] = quantity(hi_s, unit)
    codings: list[dict[str, str]] = [{"system": a.system, "code": a.code, "display": a.display}]
    if conv.local_lab_codes and a.local and a.system == LOINC:
        codings.insert(0, {"system": f"https://hospital.example.org/site-{site}/lab-code", "code": a.local,
                           "display": a.local})
    code = {"coding": codings, "text": a.text or a.display}
    cat = category(a.category)
    unit_display = UNIT_DISPLAY.get(unit, unit)
    return SiteAnalyte(
        key=key, code=code, category=cat, unit=unit, unit_display=unit_display, factor=factor, offset=offset,
        decimals=decimals, low=lo_s, high=hi_s, crit_low=conv_limit(a.crit_low),
        crit_high=conv_limit(a.crit_high), reference_range=[rr] if rr else None,
        head_json=f'"category":{to_json(cat)},"code":{to_json(code)}',
        range_json=f',"referenceRange":{to_json([rr])}' if rr else "",
        unit_json=to_json({"unit": unit_display, "system": UCUM, "code": unit}).replace("{", ",", 1),
    )
