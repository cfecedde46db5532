"""The three LCAR-AIO sites and the local conventions their EHRs follow (units, scales, coding styles).

Everything here is fictional: hospital and town names are made up.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SiteConventions:
    site: int
    hospital: str
    town: str
    #: UCUM unit this site reports for an analyte, where it differs from the canonical unit (lab_catalog)
    units: dict[str, str] = field(default_factory=dict)
    #: the CBC comes as a 58410-2 panel Observation with hasMember references
    cbc_panel: bool = False
    #: a local lab code is sent as the first coding, before LOINC
    local_lab_codes: bool = False
    #: the lab sends interpretation N on normal results (others send no interpretation when normal)
    flags_normal: bool = True
    #: which urinary cast count the lab reports: rbc_casts (5800-7) or granular_casts (105086-3)
    casts_item: str = "rbc_casts"
    #: anti-dsDNA upper reference limit of this lab's assay, IU/mL
    dsdna_uln: float = 30.0
    #: PGA unit: "{score}" (0-3) or "mm" (0-100 VAS)
    pga_unit: str = "{score}"
    #: Observation.category of the SLEDAI-2K descriptor entries
    descriptor_category: str = "exam"
    #: how AE relatedness is carried: "core" (AdverseEvent.suspectEntity) or "backport" (suspect-entity ext)
    ae_causality: str = "core"
    #: the site also fills AdverseEvent.severity (mild/moderate/severe)
    ae_severity: bool = True
    #: oral glucocorticoid the site prescribes: "prednisone" or "methylprednisolone"
    glucocorticoid: str = "prednisone"


SITES: dict[int, SiteConventions] = {
    101: SiteConventions(
        site=101,
        hospital="Quellmark University Hospital, Department of Rheumatology",
        town="Quellmark",
        units={"c3": "mg/dL", "c4": "mg/dL", "igg": "mg/dL", "iga": "mg/dL", "igm": "mg/dL",
               "leukocytes": "10*3/uL", "neutrophils": "10*3/uL", "lymphocytes": "10*3/uL",
               "platelets": "10*3/uL"},
        dsdna_uln=30.0,
    ),
    102: SiteConventions(
        site=102,
        hospital="Brindlemoor General Hospital, Clinic for Immunology",
        town="Brindlemoor",
        units={"upcr": "mg/g{creat}"},
        cbc_panel=True,
        local_lab_codes=True,
        flags_normal=False,
        dsdna_uln=27.0,
        pga_unit="mm",
        descriptor_category="survey",
        glucocorticoid="methylprednisolone",
    ),
    103: SiteConventions(
        site=103,
        hospital="Farrowdeep Medical Centre, Lupus Unit",
        town="Farrowdeep",
        units={"temperature": "[degF]"},
        casts_item="granular_casts",
        dsdna_uln=15.0,
        ae_causality="backport",
        ae_severity=False,
    ),
}
SITE_NUMBERS: tuple[int, ...] = tuple(SITES)

#: fictional towns for patients' home addresses
HOME_TOWNS: tuple[str, ...] = (
    "Quellmark", "Brindlemoor", "Farrowdeep", "Oxlenby", "Tarrowgate", "Wendlequist", "Mirrowfen",
    "Hallovance", "Sporrendale", "Ulvercombe",
)
STREET_STEMS: tuple[str, ...] = ("Quill", "Brackel", "Farrow", "Ossel", "Tindle", "Vex", "Moll", "Wrenne")
STREET_KINDS: tuple[str, ...] = ("Lane", "Row", "Gate", "Close", "Walk", "Yard")
