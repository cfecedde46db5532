"""What every worker process needs, built once in the forkserver that starts the workers
(:mod:`fhir_adapter.engine.forkserver`), so each worker is forked with it in memory instead of importing and
building it again: the per-subject engine's modules (mapping, derivations, exports, write-back), the FHIR R4B
models of the resource types a run reads and writes (a model is built on its first use: a quarter of a second
for these types) and the quick R4 check's element tables of those models (a fifth of a second). Not the UCUM
registry (about a second): a worker converts units with the table of
:mod:`fhir_adapter.terminology.known_units` and the conversions its study computed when it was loaded
(``Study.unit_conversions``), and builds the registry only for a unit neither holds.

Importing this module is what loads them (the forkserver preloads modules by name)."""

from __future__ import annotations

from fhir_adapter.engine import parallel  # noqa: F401  (the engine and every module it imports)
from fhir_adapter.fhir.r4 import model_class
from fhir_adapter.fhir.r4_elements import resource_table
from fhir_adapter.source.base import ROSTER_TYPES, SHARED_TYPES, SUBJECT_TYPES

for _rtype in (*SUBJECT_TYPES, *SHARED_TYPES, *ROSTER_TYPES):
    resource_table(model_class(_rtype))   # the model and the quick R4 check's tables (0.2 s, else on the first subject)
