"""Endpoint derivations: pure functions from CRF data to results, one endpoint per module. No I/O here."""
