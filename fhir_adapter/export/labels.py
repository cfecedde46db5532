"""Variable labels (≤ 40 characters, SDTMIG style) of the export columns, for the ODM ItemDefs and the
Dataset-JSON column metadata — one definition for both."""

from __future__ import annotations

from fhir_adapter.export.cdisc import DOMAIN_LABELS

#: labels of whole column names
NAMED: dict[str, str] = {
    "STUDYID": "Study Identifier", "DOMAIN": "Domain Abbreviation", "USUBJID": "Unique Subject Identifier",
    "SUBJID": "Subject Identifier for the Study", "SITEID": "Study Site Identifier", "AGE": "Age",
    "AGEU": "Age Units", "SEX": "Sex", "RACE": "Race", "ETHNIC": "Ethnicity", "ARMCD": "Planned Arm Code",
    "ARM": "Description of Planned Arm", "RFSTDTC": "Subject Reference Start Date/Time",
    "RFICDTC": "Date/Time of Informed Consent", "RFENDTC": "Subject Reference End Date/Time",
    "RFXSTDTC": "Date/Time of First Study Treatment", "RFXENDTC": "Date/Time of Last Study Treatment",
    "RFPENDTC": "Date/Time of End of Participation", "ACTARMCD": "Actual Arm Code",
    "ACTARM": "Description of Actual Arm", "COUNTRY": "Country", "AEBODSYS": "Body System or Organ Class",
    "AEBDSYCD": "Body System or Organ Class Code", "VISITNUM": "Visit Number", "VISIT": "Visit Name",
    "VISITDY": "Planned Study Day of Visit", "EPOCH": "Epoch", "SRCREF": "Source FHIR Resource",
    "SRCSTAT": "Source FHIR Resource Status", "SRCTYPE": "Source FHIR Resource Kind",
    "REVSTAT": "Review Status of the Value", "CMCODE": "Medication Code (RxNorm or CVX)",
    "AECODE": "Event Codings as Sent (system|code)", "PRCODE": "Procedure Codings as Sent (system|code)",
    "AETOXAPP": "Grade Approximated from Severity",
    "AETRTEM": "Treatment Emergent Flag", "AEPREINF": "Onset Before Infusion Flag",
    "AESDTH": "Results in Death", "AESLIFE": "Is Life Threatening",
    "AESHOSP": "Requires or Prolongs Hospitalization", "AESDISAB": "Persist or Signif Disability/Incapacity",
    "AESCONG": "Congenital Anomaly or Birth Defect", "AESMIE": "Other Medically Important Serious Event",
    "AEACN": "Action Taken with Study Treatment", "AEREL": "Causality",
    "AERELNST": "Relationship to Non-Study Treatment", "AEOUT": "Outcome of Adverse Event",
    "AESER": "Serious Event", "AESEV": "Severity/Intensity", "AETOXGR": "Standard Toxicity Grade",
    "CMINDC": "Indication", "CMCLAS": "Medication Class", "MHENTPT": "End Reference Time Point",
    "MHENRTPT": "End Relative to Reference Time Point", "PRINDC": "Indication", "CMDOSFRM": "Dose Form",
    "CMCLASCD": "Medication Class Code", "CMAENO": "Related Adverse Event ID",
    "CMMHNO": "Related Medical History Event ID", "MHCTRL": "Controlled", "PRREASOC": "Reason for Occur Value",
    "PRAENO": "Related Adverse Event ID", "PRITRPYN": "Procedure Interrupted",
    "PRITRPRS": "Reason Procedure Interrupted", "DTHDTC": "Date/Time of Death", "DTHFL": "Subject Death Flag",
    "INVID": "Investigator Identifier", "INVNAM": "Investigator Name", "CMINGRD": "Medication Ingredients",
    "LBANTREG": "Anatomical Region",
}
#: labels of the part after the two-letter domain prefix
SUFFIX: dict[str, str] = {
    "SEQ": "Sequence Number", "SPID": "Sponsor-Defined Identifier", "TESTCD": "Short Name of Test",
    "TEST": "Name of Test", "CAT": "Category", "SCAT": "Subcategory", "ORRES": "Result or Finding in Original Units",
    "ORRESU": "Original Units", "STRESC": "Character Result/Finding in Std Format",
    "STRESN": "Numeric Result/Finding in Standard Units", "STRESU": "Standard Units",
    "ORNRLO": "Reference Range Lower Limit in Orig Unit", "ORNRHI": "Reference Range Upper Limit in Orig Unit",
    "STNRLO": "Reference Range Lower Limit-Std Units", "STNRHI": "Reference Range Upper Limit-Std Units",
    "STNRC": "Reference Range for Char Rslt-Std Units", "NRIND": "Reference Range Indicator",
    "STAT": "Completion Status", "REASND": "Reason Not Done", "LOINC": "LOINC Code", "REFID": "Specimen ID",
    "SPEC": "Specimen Type", "SPCCND": "Specimen Condition", "LOC": "Location Used for the Measurement",
    "FAST": "Fasting Status", "METHOD": "Method of Test or Examination", "NAM": "Vendor Name",
    "LLOQ": "Lower Limit of Quantitation", "BLFL": "Baseline Flag", "DTC": "Date/Time of Collection",
    "ENDTC": "End Date/Time", "DY": "Study Day of Collection", "ORUCUM": "Original Units (UCUM code)",
    "STUCUM": "Standard Units (UCUM code)", "TRT": "Reported Name", "DECOD": "Standardized Name",
    "DOSE": "Dose per Administration", "DOSTXT": "Dose Description", "DOSU": "Dose Units",
    "DOSFRQ": "Dosing Frequency per Interval", "DOSTOT": "Total Daily Dose", "ROUTE": "Route of Administration",
    "STDTC": "Start Date/Time", "STDY": "Study Day of Start", "ENDY": "Study Day of End", "TERM": "Reported Term",
    "LLT": "Lowest Level Term", "LLTCD": "Lowest Level Term Code", "PTCD": "Preferred Term Code",
    "HLT": "High Level Term", "HLTCD": "High Level Term Code", "HLGT": "High Level Group Term",
    "HLGTCD": "High Level Group Term Code", "SOC": "Primary System Organ Class",
    "SOCCD": "Primary System Organ Class Code", "OCCUR": "Occurrence", "LOC_": "Location",
    "EXTRT": "Name of Treatment", "CAT_": "Category", "LAT": "Laterality", "DIR": "Directionality",
    "POS": "Position of Subject", "STRF": "Start Relative to Reference Period", "DUR": "Duration",
    "SPCUFL": "Specimen Usability for the Test", "TOXGR": "Standard Toxicity Grade", "TOX": "Toxicity",
    "TOXV": "Toxicity Scale Version", "CONTRT": "Concomitant or Additional Trtmnt Given",
    "ACNOTH": "Other Action Taken", "ACNOYN": "Any Other Actions Taken", "TPT": "Planned Time Point Name",
    "TPTREF": "Time Point Reference", "ELTM": "Planned Elapsed Time from Time Point Ref",
}


def label(domain: str, column: str) -> str:
    """The label of ``column`` in ``domain`` (≤ 40 characters)."""
    if column in NAMED:
        return NAMED[column][:40]
    if column.startswith(domain) and column[len(domain):] in SUFFIX:
        return SUFFIX[column[len(domain):]][:40]
    return f"{DOMAIN_LABELS.get(domain, domain)} {column}"[:40]
