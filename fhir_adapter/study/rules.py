"""The rule files a study folder may hold, and the settings model each one is read into.

Every derivation owns its settings model (in its ``fhir_adapter/derive`` module); the study loader validates
``mappings/<study>/<name>.yaml`` with the model registered here under ``name``.
"""

from __future__ import annotations

from pydantic import BaseModel

from fhir_adapter.derive.sledai2k import Sledai2kSettings

RULE_FILES: dict[str, type[BaseModel]] = {
    "sledai2k": Sledai2kSettings,
}
