"""Which specimen a lab analyte is measured in, and the methods labs name (for LBSPEC and LBMETHOD)."""

from __future__ import annotations

#: analytes measured in urine, and in whole blood (everything else: serum)
URINE = ("urine_rbc", "urine_wbc", "rbc_casts", "granular_casts", "upcr", "protein_24h")
WHOLE_BLOOD = ("leukocytes", "neutrophils", "lymphocytes", "hemoglobin", "platelets", "cd19", "car_transgene",
               "car_cells")
#: Observation.method of analytes whose lab names the method
METHODS: dict[str, str] = {
    "dsdna": "Chemiluminescent immunoassay", "c3": "Nephelometry", "c4": "Nephelometry",
    "anti_sm": "Enzyme-linked immunosorbent assay", "crp": "Immunoturbidimetry", "car_transgene": "qPCR",
}


def specimen_details(key: str) -> tuple[str, str]:
    """(Specimen type display, SNOMED CT specimen code) of an analyte's specimen."""
    if key in URINE:
        return "Urine", "122575003"
    if key in WHOLE_BLOOD:
        return "Whole blood", "258580003"
    return "Serum", "119364003"
