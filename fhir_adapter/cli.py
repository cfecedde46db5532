"""The ``fhir-adapter`` command line.

Exit codes: 0 ok; 1 failed (nothing or not everything could run: bad mapping, unreachable source);
2 completed, but input was quarantined or some subjects were not written (see run-report.json).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from fhir_adapter import __version__

DEFAULT_STUDY = Path("mappings/lcar-aio")


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fhir-adapter")
@click.option("-v", "--verbose", count=True, help="More detail (-vv: debug, with stack traces).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Connect a hospital EHR to the LCAR-AIO trial over HL7 FHIR R4.

    \b
    Examples:
      fhir-adapter synth --subjects 34 --seed 7 --out demo/feed
      fhir-adapter run --source demo/feed --out demo/out
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["quiet"] = quiet


@main.command()
@click.option("--subjects", default=34, show_default=True, help="Enrolled subjects to generate.")
@click.option("--seed", default=7, show_default=True, help="Random seed (same seed, same bytes).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Folder to write the NDJSON feed to.")
def synth(subjects: int, seed: int, out: Path) -> None:
    """Write a synthetic LCAR-AIO EHR export (Bulk Data NDJSON, one file per resource type).

    \b
    Example:
      fhir-adapter synth --subjects 34 --seed 7 --out demo/feed
    """
    from fhir_adapter.synth import write_feed

    counts = write_feed(out, subjects=subjects, seed=seed)
    total = sum(counts.values())
    click.echo(f"wrote {total} resources for {subjects} enrolled subjects to {out}")
    for rtype, n in sorted(counts.items()):
        click.echo(f"  {rtype:<26} {n:>8}")


@main.command()
@click.option("--source", required=True,
              help="Folder of NDJSON/Bundle files (a Bulk Data export), or a FHIR R4 server base URL.")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--study", type=click.Path(path_type=Path), default=DEFAULT_STUDY, show_default=True,
              help="Study mapping folder.")
@click.option("--site", type=click.Path(path_type=Path), default=None,
              help="Site overlay (mappings/sites/<site>.yaml).")
@click.option("--post", is_flag=True, help="Write the results back to the FHIR server (only what changed).")
@click.option("--dry-run", is_flag=True, help="Show what --post would write, as a diff (OUT/writeback-diff/).")
@click.option("--since", default=None,
              help="Incremental: read only subjects changed since this ISO time, or 'last' (last successful run).")
@click.option("--config", type=click.Path(path_type=Path, exists=True), default=None,
              help="Server settings YAML (concurrency, page size, timeouts, read mode). Secrets: environment only.")
@click.pass_context
def run(ctx: click.Context, source: str, out: Path, study: Path, site: Path | None, post: bool, dry_run: bool,
        since: str | None, config: Path | None) -> None:
    """Run the pipeline: roster, mapping, CRFs, derivations, write-back bundles.

    \b
    Writes to OUT:
      crf/<subject_id>.json        CRF per subject, each value with its source reference
      results/study.json           endpoints per subject and visit
      writeback/<subject_id>.json  FHIR R4 transaction Bundle of the results
      run-report.json              counts, warnings, quarantined input (also in quarantine/)

    \b
    Examples:
      fhir-adapter run --source demo/feed --out demo/out
      fhir-adapter run --source https://ehr.example.org/fhir --out out --dry-run
      FHIR_ADAPTER_BEARER_TOKEN_FILE=/run/secrets/token \\
        fhir-adapter run --source https://ehr.example.org/fhir --out out --post --since last
    """
    from fhir_adapter.pipeline import run as run_pipeline
    from fhir_adapter.roster import RosterError
    from fhir_adapter.runlog import RunLog
    from fhir_adapter.study import MappingError, load_study

    try:
        st = load_study(study, site)
    except MappingError as exc:
        _fail(str(exc))
    import datetime as dt
    import os

    from fhir_adapter.connect import ConnectError, connect
    from fhir_adapter.fhir import FhirError
    from fhir_adapter.server_config import record_run

    log = RunLog()
    started = dt.datetime.now(dt.UTC)
    try:
        conn = connect(source, st, log, out, post=post, dry_run=dry_run, since=since, config=config, env=os.environ)
        try:
            summary = run_pipeline(conn.source, st, out, log, sink=conn.sink)
        finally:
            conn.close()
    except (RosterError, FileNotFoundError, ConnectError, FhirError, MappingError) as exc:
        if ctx.obj.get("verbose", 0) >= 2:
            raise
        _fail(str(exc))
    if not summary.subjects_failed and not summary.subjects_not_written and not dry_run:
        record_run(out, started, source)
    if not ctx.obj.get("quiet"):
        click.echo(f"subjects        {summary.subjects} enrolled and processed"
                   + (f", {len(summary.subjects_failed)} failed" if summary.subjects_failed else ""))
        click.echo(f"visits          {summary.visits}")
        click.echo(f"results         {summary.results_written} result resources in writeback/")
        click.echo(f"quarantined     {summary.quarantined} input resources (see run-report.json, quarantine/)")
        if post or dry_run:
            verb = "would write" if dry_run else "written"
            click.echo(f"server          {summary.server_writes} {verb}, {summary.server_unchanged} unchanged"
                       + (f", {len(summary.subjects_not_written)} subjects not written" if summary.subjects_not_written
                          else "") + (f" (diffs in {out}/writeback-diff/)" if dry_run else ""))
        click.echo(f"outputs         {out}/results/study.json  {out}/crf/  {out}/writeback/  {out}/run-report.json")
    sys.exit(summary.exit_code)
