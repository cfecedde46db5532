"""Endpoints as plug-ins: the registry (:mod:`.registry`) and fhir-adapter's own endpoints, one module each,
binding a derivation of :mod:`fhir_adapter.derive` to its settings, typed result, ``results/study.json`` keys
and write-back Observations."""
