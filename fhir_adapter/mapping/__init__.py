"""Declarative mapping of one subject's FHIR resources into CRF domains, driven by ``mappings/<study>/``."""
