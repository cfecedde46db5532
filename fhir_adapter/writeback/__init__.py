"""FHIR R4 resources built from results, posted as one transaction per subject."""
