"""EDC exports of the CRFs: CDISC-style CSV per domain, CDISC ODM 1.3.2, and the coverage report."""

from fhir_adapter.export.writer import ExportWriter

__all__ = ["ExportWriter"]
