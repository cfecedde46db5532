"""Generator plug-in for a CAR-T cell therapy trial in SLE (LCAR-AIO's feed): the trial plan with its 3+3 dose
escalation and DLT scenarios, lymphodepletion, SLEDAI-2K descriptors and PGA, CRS/ICANS and other toxicities,
CAR-T cellular kinetics, and the deliberate EHR irregularities the tests rely on. Used by ``synth`` for a study
that names the sledai2k, kinetics or dlt endpoint (``fhir_adapter/synth/plugins.py``)."""
