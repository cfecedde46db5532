"""The HTML study report: one self-contained page (inline SVG figures, no scripts, no network) made from a
run's ``results/study.json``, ``run-report.json`` and ``crf/*.json``.

Public surface: :func:`build_report` and :class:`ReportError`; one module per section group.
"""

from fhir_adapter.report.assemble import build_report
from fhir_adapter.report.data import ReportError

__all__ = ["ReportError", "build_report"]
