"""Build the report: load a run's outputs, make every section, render one self-contained HTML file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from fhir_adapter.report.baselines import baselines_section
from fhir_adapter.report.blocks import Section
from fhir_adapter.report.completeness import completeness_section
from fhir_adapter.report.data import ReportData, load
from fhir_adapter.report.disease import disease_activity_section, lldas_section
from fhir_adapter.report.kinetics import kinetics_section
from fhir_adapter.report.labs import labs_section
from fhir_adapter.report.renal_response import has_renal_response, renal_response_section
from fhir_adapter.report.safety import safety_section
from fhir_adapter.report.summary import settings_section, summary_section
from fhir_adapter.report.swimmer import swimmer_section
from fhir_adapter.safe_paths import replaced_output, without_links

#: the sections in page order, each with the endpoints it reports (empty: every study gets it)
SECTIONS: tuple[tuple[Callable[[ReportData], Section], frozenset[str]], ...] = (
    (summary_section, frozenset()),
    (disease_activity_section, frozenset({"sledai2k", "pga"})),
    (lldas_section, frozenset({"lldas"})),
    (renal_response_section, frozenset({"renal"})),
    (kinetics_section, frozenset({"kinetics"})),
    (swimmer_section, frozenset()),
    (safety_section, frozenset({"safety"})),
    (labs_section, frozenset({"renal", "immunology"})),
    (baselines_section, frozenset()),
    (completeness_section, frozenset()),
    (settings_section, frozenset()),
)


def sections(data: ReportData) -> list[Section]:
    """The sections of the endpoints the study named (``endpoints`` of results/study.json; a study.json without
    that key gets every section, each saying "no data" for what it lacks); the renal response only where it
    was graded."""
    named = data.study.get("endpoints")
    out: list[Section] = []
    for make, reports in SECTIONS:
        if reports and isinstance(named, list) and not reports & set(named):
            continue
        if make is renal_response_section and not has_renal_response(data):
            continue
        out.append(make(data))
    return out


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
    """Write ``index.html`` for the run output folder ``results`` into ``out`` (default ``results/report``).

    Never through a symbolic link below ``results`` (or below ``out``, when ``out`` is elsewhere: ``out`` itself
    is the operator's choice): a link in place of ``index.html`` is replaced, a link in place of a folder on
    the way (``report/``) stops with :class:`~fhir_adapter.job.outpaths.UnsafePath` before anything is written."""
    results = Path(results)
    out = Path(out) if out is not None else results / "report"
    root = results if out.is_relative_to(results) else out
    without_links(root, out)  # a link in the way stops before the report is made
    html = render(load(results))
    path = replaced_output(root, out / "index.html")
    path.write_text(html, encoding="utf-8")
    return path
