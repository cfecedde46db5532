"""The pipeline from Python: ``fhir_adapter.run(...)`` returns a :class:`RunResult` whose tables are pandas
DataFrames (docs/python-api.md).

    import fhir_adapter
    result = fhir_adapter.run("demo/feed", "demo/out")
    result.exit_code                    # 0 ok, 2 completed with warnings (as on the command line)
    visits = result.to_pandas()         # one row per subject and visit: SLEDAI-2K, PGA, LLDAS, UPCR, C3 ...
    lb = result.domain("LB")            # a CRF domain: DM, EX, LB, VS, PC, QS, IS, CM, AE

pandas is an optional extra (``pip install 'fhir-adapter[pandas]'``): the command line and a scheduled run on
a hospital's integration server need none of it; the result's JSON (``study``, ``run_report``, ``crfs``) is
there without it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_adapter.job.pipeline import RunSummary
from fhir_adapter.job.runlog import RunLog

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_STUDY = Path("mappings/lcar-aio")
DOMAINS = ("DM", "EX", "LB", "VS", "PC", "QS", "IS", "CM", "AE", "MH", "PR")
_FINDINGS = {"LB", "VS", "PC", "QS", "IS"}


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("DataFrames need pandas: pip install 'fhir-adapter[pandas]'") from exc
    return pandas


@dataclass
class RunResult:
    """What one run produced: the summary, the exit code, and the outputs in OUT read back as data."""

    out: Path
    summary: RunSummary
    exit_code: int
    study: dict[str, Any] = field(repr=False)
    run_report: dict[str, Any] = field(repr=False)
    crfs: list[dict[str, Any]] = field(repr=False)

    # -- endpoints ------------------------------------------------------------------------------------
    def to_pandas(self) -> pd.DataFrame:
        """Endpoints per subject and visit (``results/study.json`` → ``subjects[].visits[]``), with the
        subject's ``subject_id``, ``arm`` and ``day1`` on each row. List-valued keys stay lists."""
        rows = [{"subject_id": s["subject_id"], "arm": s.get("arm"), "day1": s.get("day1"), **v}
                for s in self.study.get("subjects", []) for v in s.get("visits", [])]
        df: pd.DataFrame = _pandas().DataFrame(rows)
        return df

    def subjects(self) -> pd.DataFrame:
        """One row per subject: the subject-level keys of ``results/study.json`` (TEAE counts, DLT, kinetics
        flattened as ``kinetics.cmax`` ...), without the visits."""
        rows = [{k: v for k, v in s.items() if k != "visits"} for s in self.study.get("subjects", [])]
        df: pd.DataFrame = _pandas().json_normalize(rows) if rows else _pandas().DataFrame()
        return df

    # -- CRF domains ----------------------------------------------------------------------------------
    def domain(self, name: str) -> pd.DataFrame:
        """A CRF domain as a DataFrame, one row per record with ``subject_id``; nested values (the source
        reference) flattened as ``source.resource_type``, ``source.id`` ..."""
        name = name.upper()
        if name not in DOMAINS:
            raise ValueError(f"unknown CRF domain {name!r}: one of {', '.join(DOMAINS)}")
        rows: list[dict[str, Any]] = []
        for crf in self.crfs:
            sid = crf["subject_id"]
            if name == "DM":
                rows.append({"subject_id": sid, "arm": crf.get("arm"), "day1": crf.get("day1"), **crf["dm"]})
            elif name in _FINDINGS:
                rows += [{"subject_id": sid, **f} for f in crf.get("findings", []) if f.get("domain") == name]
            else:
                rows += [{"subject_id": sid, **r} for r in crf.get(name.lower(), [])]
        pd_ = _pandas()
        df: pd.DataFrame = pd_.json_normalize(rows) if rows else pd_.DataFrame(columns=["subject_id"])
        return df

    def crf_domains(self) -> dict[str, pd.DataFrame]:
        """Every CRF domain, by name."""
        return {d: self.domain(d) for d in DOMAINS}


def run(source: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
        study: str | os.PathLike[str] = DEFAULT_STUDY, site: str | os.PathLike[str] | None = None,
        roster_csv: str | os.PathLike[str] | None = None, config: str | os.PathLike[str] | None = None,
        post: bool = False, dry_run: bool = False, since: str | None = None,
        env: Mapping[str, str] | None = None) -> RunResult:
    """Run the pipeline as ``fhir-adapter run`` does and return its result.

    ``source``: a folder of NDJSON/Bundle files or a FHIR server base URL. ``out``: the output folder (a new
    temporary folder when omitted; it is kept). ``env``: the ``FHIR_ADAPTER_*`` settings and credentials
    (default: ``os.environ``). Errors raise the adapter's exceptions (``MappingError``, ``RosterError``,
    ``ServerConfigError``, ``ConnectError``, ``FhirError``, ``OutInUse`` when another run holds ``out``) with the
    same one-line messages as the CLI.
    """
    from fhir_adapter.fhir.server_config import record_run
    from fhir_adapter.job import exit_codes
    from fhir_adapter.job.connect import connect
    from fhir_adapter.job.outlock import hold_out
    from fhir_adapter.job.pipeline import run as run_pipeline
    from fhir_adapter.study.load import load_study

    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="fhir-adapter-"))
    st = load_study(Path(study), Path(site) if site is not None else None)
    log = RunLog()
    with hold_out(out_dir, "fhir_adapter.run"):
        started = dt.datetime.now(dt.UTC)
        conn = connect(str(source), st, log, out_dir, post=post, dry_run=dry_run, since=since,
                       config=Path(config) if config is not None else None,
                       env=env if env is not None else os.environ)
        try:
            summary = run_pipeline(conn.source, st, out_dir, log, sink=conn.sink,
                                   roster_csv=Path(roster_csv) if roster_csv is not None else None,
                                   reviewed_only=conn.reviewed_only)  # the config's, as for `fhir-adapter run`
        finally:
            conn.close()
        # the base of the next since="last" (or `run --since last`), as the command records it: a run that
        # completed (exit 0 or 2; the subjects it failed or did not write are read in full then), not a dry run
        if summary.stopped is None and summary.exit_code != exit_codes.FAILED and not dry_run:
            record_run(out_dir, conn.next_since(started), str(source), summary.roster_csv_sha256,
                       recheck=summary.subjects_failed + summary.subjects_not_written,
                       mapping_fingerprint=summary.mapping_fingerprint, day1=summary.day1)
        crfs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out_dir / "crf").glob("*.json"))]
        return RunResult(
            out=out_dir, summary=summary, exit_code=summary.exit_code,
            study=json.loads((out_dir / "results" / "study.json").read_text(encoding="utf-8")),
            run_report=json.loads((out_dir / "run-report.json").read_text(encoding="utf-8")),
            crfs=crfs,
        )
