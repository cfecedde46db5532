"""The rule files a study folder may hold, and the settings model each one is read into.

Every derivation owns its settings model (in its ``fhir_adapter/derive`` module), every mapping of a domain
its own (in its ``fhir_adapter/mapping`` module); the study loader validates
``mappings/<study>/<name>.yaml`` with the model registered here under ``name``.
"""

from __future__ import annotations

from pydantic import BaseModel

from fhir_adapter.derive.dlt import DltSettings
from fhir_adapter.derive.escalation import EscalationSettings
from fhir_adapter.derive.glucocorticoids import GlucocorticoidSettings
from fhir_adapter.derive.immunology import ImmunologySettings
from fhir_adapter.derive.kinetics import KineticsSettings
from fhir_adapter.derive.lldas import LldasSettings
from fhir_adapter.derive.pga import PgaSettings
from fhir_adapter.derive.renal import RenalSettings
from fhir_adapter.derive.safety import SafetySettings
from fhir_adapter.derive.sledai2k import Sledai2kSettings
from fhir_adapter.mapping.adverse_events import AdverseEventSettings
from fhir_adapter.mapping.medications.settings import MedicationSettings

RULE_FILES: dict[str, type[BaseModel]] = {
    "sledai2k": Sledai2kSettings,
    "medications": MedicationSettings,
    "adverse_events": AdverseEventSettings,
    # efficacy endpoints
    "pga": PgaSettings,
    "lldas": LldasSettings,
    "glucocorticoids": GlucocorticoidSettings,
    "renal": RenalSettings,
    "immunology": ImmunologySettings,
    # safety, DLT, escalation, cellular kinetics
    "safety": SafetySettings,
    "dlt": DltSettings,
    "escalation": EscalationSettings,
    "kinetics": KineticsSettings,
}
