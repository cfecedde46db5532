"""Build the report: load a run's outputs, make every section, render one self-contained HTML file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from fhir_adapter.report.blocks import Section
from fhir_adapter.report.completeness import completeness_section
from fhir_adapter.report.data import ReportData, load
from fhir_adapter.report.disease import disease_activity_section, lldas_section
from fhir_adapter.report.kinetics import kinetics_section
from fhir_adapter.report.labs import labs_section
from fhir_adapter.report.safety import safety_section
from fhir_adapter.report.summary import settings_section, summary_section
from fhir_adapter.report.swimmer import swimmer_section

#: the sections in page order
SECTIONS: tuple[Callable[[ReportData], Section], ...] = (
    summary_section,
    disease_activity_section,
    lldas_section,
    kinetics_section,
    swimmer_section,
    safety_section,
    labs_section,
    completeness_section,
    settings_section,
)


def sections(data: ReportData) -> list[Section]:
    return [make(data) for make in SECTIONS]


def render(data: ReportData) -> str:
    env = Environment(loader=PackageLoader("fhir_adapter.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"], default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template("report.html.j2").render(
        study_id=str(data.study.get("study") or "study"),
        generated_by=str(data.study.get("generated_by") or "fhir-adapter"),
        results_name=data.results_dir.name or str(data.results_dir),
        problems=data.problems,
        sections=sections(data),
    )


def build_report(results: Path, out: Path | None = None) -> Path:
    """Write ``index.html`` for the run output folder ``results`` into ``out`` (default ``results/report``)."""
    results = Path(results)
    out = Path(out) if out is not None else results / "report"
    html = render(load(results))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(html, encoding="utf-8")
    return path
