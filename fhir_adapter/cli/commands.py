"""The ``fhir-adapter`` command line (docs/cli.md).

Exit codes: fhir_adapter/job/exit_codes.py (0 ok, 1 failed, 2 completed with warnings, 3 server unavailable,
4 authentication failed, 64 usage error).
Errors print one line (``error: ...``); the stack trace only with ``-v`` (fhir_adapter/cli/console.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fhir_adapter.cli.console import (
    AdapterGroup,
    exit_code_of,
    progress,
    say,
    say_error,
    setup_logging,
    stream_closed,
    summary_table,
)
from fhir_adapter.disk_full import disk_full_message, is_disk_full
from fhir_adapter.job import exit_codes
from fhir_adapter.version import __version__

if TYPE_CHECKING:
    from fhir_adapter.fhir.server_config import ServerConfig
    from fhir_adapter.source.server.probe import SearchTiming
    from fhir_adapter.study.load import Study

DEFAULT_STUDY = Path("mappings/lcar-aio")


def _fail(message: str, code: int = 1) -> None:
    say_error(f"error: {message}")
    sys.exit(code)


EXIT_CODES = exit_codes.help_table()


@click.group(cls=AdapterGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="fhir-adapter")
@click.option("-v", "--verbose", count=True,
              help="More detail: -v info and stack traces on errors, -vv debug.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors: no progress, no summary.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Logs on stderr as text, or as one JSON object per line (for log collectors).")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, log_format: str) -> None:
    """Connect a hospital EHR to a clinical trial over HL7 FHIR R4. The trial is a study folder
    (--study, default mappings/lcar-aio; a second, synthetic study: mappings/syn-ln).

    \b
    Examples:
      fhir-adapter synth --subjects 34 --seed 7 --out demo/feed
      fhir-adapter run --source demo/feed --out demo/out
      fhir-adapter report --results demo/out
      fhir-adapter -v --log-format json run --source demo/feed --out demo/out 2> run.log.jsonl
    """
    setup_logging(verbose, quiet, log_format)
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["quiet"] = quiet


@main.command()
@click.option("--study", type=click.Path(path_type=Path), default=DEFAULT_STUDY, show_default=True,
              help="Study folder (or the name of one in mappings/) whose schedule, items and endpoints the feed "
                   "follows.")
@click.option("--subjects", default=34, show_default=True, help="Enrolled subjects to generate.")
@click.option("--seed", default=7, show_default=True, help="Random seed (same seed, same bytes).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Folder to write the NDJSON feed to.")
def synth(study: Path, subjects: int, seed: int, out: Path) -> None:
    """Write a synthetic EHR export for a study (Bulk Data NDJSON, one file per resource type).

    Patients, enrolment, the first dose of the study product (Day 1), the study's scheduled visits with lab
    values for its items, and glucocorticoids; a study whose endpoints need more (SLEDAI-2K, CRS/ICANS,
    CAR-T kinetics, DLTs) gets its generator plug-in. Only synthetic, made-up people.

    \b
    Examples:
      fhir-adapter synth --subjects 34 --seed 7 --out demo/feed
      fhir-adapter synth --study syn-ln --subjects 12 --out ln/feed
    """
    from fhir_adapter.synth.plugins import write_synthetic_feed

    try:
        counts = write_synthetic_feed(study, out, subjects, seed)
    except ValueError as exc:   # a MappingError names the file, the line and the fix
        _fail(str(exc))
        return
    total = sum(counts.values())
    say(f"wrote {total} resources for {subjects} enrolled subjects to {out}")
    for rtype, n in sorted(counts.items()):
        say(f"  {rtype:<26} {n:>8}")


@main.command()
@click.option("--source", required=True,
              help="Folder of NDJSON/Bundle files (a Bulk Data export), or a FHIR R4 server base URL; with "
                   "--engine spark also any URI Spark reads (s3a://, hdfs://, file://).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--study", type=click.Path(path_type=Path), default=DEFAULT_STUDY, show_default=True,
              help="Study mapping folder.")
@click.option("--site", type=click.Path(path_type=Path), default=None,
              help="Site overlay: a file, or a site name (example-site = mappings/sites/example-site.yaml).")
@click.option("--post", is_flag=True, help="Write the results back to the FHIR server (only what changed).")
@click.option("--dry-run", is_flag=True, help="Show what --post would write, as a diff (OUT/writeback-diff/).")
@click.option("--since", default=None,
              help="Incremental: read only subjects changed since this ISO time, or 'last' (the last run that "
                   "completed, exit 0 or 2; subjects that failed in it are read in full).")
@click.option("--config", type=click.Path(path_type=Path, exists=True), default=None,
              help="Server settings YAML (concurrency, page size, timeouts, read mode, observation_code_param: "
                   "auto by default, each run times a code-filtered and an unfiltered Observation search once and "
                   "reads with the faster). Secrets: environment only.")
@click.option("--roster-csv", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Site roster CSV (subject_id,patient_identifier,consent_date,arm,status[,infusion_date]) for "
                   "subjects the EHR holds no ResearchSubject for (docs/integrator-guide.md).")
@click.option("--review-state", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of the review decision file (review-decisions.jsonl)  [default: OUT/state]")
@click.option("--reviewed-only", is_flag=True,
              help="Write back only results derived solely from reviewed values (also: `writeback_reviewed_only: "
                   "true` in --config); others are held until reviewed.")
@click.option("--bulk", is_flag=True,
              help="Read the server through a Bulk Data $export (Group or Patient level; also `read_mode: bulk` in "
                   "--config); the files are kept under OUT/bulk/ unless `bulk: {keep_files: false}`.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes mapping and deriving subjects in parallel (a local folder is read by them too, "
                   "in parts; a server is read in this process); 1 = in this process; never more than the enrolled "
                   "subjects. Outputs are the same for any number.  [default: the CPUs this process may use: its "
                   "CPU affinity, fewer under a container's CPU limit]")
@click.option("--allow-mass-retraction", is_flag=True,
              help="With --post: let one run retract more than max_retraction_share (--config; default 0.5) of a "
                   "subject's results on the server. Without it such a subject is not written (exit 2) and the "
                   "retractions are listed in OUT/writeback-diff/.")
@click.option("--quarantine-full-copies", is_flag=True,
              help="Keep whole copies of quarantined input in OUT/quarantine/ (they may hold names, MRNs, free "
                   "text). Default: type, id, file, line, reason and the offending element only.")
@click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
              help="spark: read the export with Apache Spark (--source: a folder or any URI Spark reads, e.g. "
                   "s3a://bucket/export, hdfs://…, file:///…) and run each subject on the executors "
                   "(pip install 'fhir-adapter[spark]', Java 17+; docs/spark.md).")
@click.option("--spark-master", default=None,
              help="Spark master URL for --engine spark  [default: spark-submit's master, else local[*]]")
@click.option("--spark-remote", default=None, envvar="SPARK_REMOTE", show_envvar=True,
              help="Spark Connect server for --engine spark (sc://host:15002; local[N]: a Connect server in this "
                   "process). Not together with --spark-master.")
@click.option("--spark-staging", default=None,
              help="Folder where the executors write the subjects' outcomes for the driver to read (removed after "
                   "the run): on a cluster, shared storage both reach (s3a://, gs://, hdfs://, abfss://, or a "
                   "path mounted on every node)  [default: OUT/.spark-staging]")
@click.pass_context
def run(ctx: click.Context, source: str, out: Path, study: Path, site: Path | None, post: bool, dry_run: bool,
        since: str | None, config: Path | None, roster_csv: Path | None, review_state: Path | None,
        reviewed_only: bool, bulk: bool, workers: int | None, allow_mass_retraction: bool,
        quarantine_full_copies: bool, engine: str, spark_master: str | None, spark_remote: str | None,
        spark_staging: str | None) -> None:
    """Run the pipeline: roster, mapping, CRFs, derivations, write-back bundles.

    \b
    Writes to OUT:
      crf/<subject_id>.json        CRF per subject, each value with its source reference
      results/study.json           endpoints per subject and visit
      writeback/<subject_id>.json  FHIR R4 transaction Bundle of the results
      run-report.json              counts, warnings, quarantined input (also in quarantine/), coverage
      export/                      <DOMAIN>.csv (CDISC-style), <DOMAIN>.json (Dataset-JSON), odm.xml
                                   (CDISC ODM 1.3.2), coverage*.csv
      quarantine/                  what the run could not use, per resource type, with the reason
      state/written.json           what the server confirmed was written back, to retract results whose
                                   inputs are gone (keep it)
      review/candidates/<subject>.json  every candidate value per visit and item (`fhir-adapter review`)

    Review decisions (state/review-decisions.jsonl) replace the rule's pick; see docs/review.md.

    Outputs are replaced only when the run has finished (it writes into OUT/.staging-<run id>/ first): a run
    that fails, is interrupted or killed leaves the previous ones as they were. A run that stops early (exit
    3: server unavailable, 4: authentication failed) replaces only run-report.json and state/written.json.
    One run per OUT at a time: a second run on the same OUT exits 1 naming the run that holds it (its pid and
    start time, from OUT/.fhir-adapter.lock); a lock left by a run that was killed does not block.

    \b
    Examples:
      fhir-adapter run --source demo/feed --out demo/out
      fhir-adapter run --source https://ehr.example.org/fhir --out out --dry-run
      fhir-adapter run --source https://ehr.example.org/fhir --out out --bulk
      fhir-adapter run --engine spark --spark-master 'local[2]' --source /data/export --out out
      fhir-adapter run --engine spark --spark-remote sc://spark.example.org:15002 \\
        --source s3a://bucket/export --out out
      FHIR_ADAPTER_BEARER_TOKEN_FILE=/run/secrets/token \\
        fhir-adapter run --source https://ehr.example.org/fhir --out out --post --since last
    """
    from fhir_adapter.engine.cores import default_workers
    from fhir_adapter.engine.forkserver import prepare

    if engine == "local":  # first: the workers' forkserver preloads the engine while this process imports it
        prepare(workers or default_workers())
    from fhir_adapter.job.pipeline import run as run_pipeline
    from fhir_adapter.job.runlog import RunLog
    from fhir_adapter.review.store import TamperedError
    from fhir_adapter.roster.enrollees import RosterError
    from fhir_adapter.study.load import load_study
    from fhir_adapter.study.yamlfile import MappingError

    try:
        st = load_study(study, site)
    except MappingError as exc:
        _fail(str(exc))
    import datetime as dt
    import os
    from contextlib import ExitStack

    from fhir_adapter.fhir import FhirError
    from fhir_adapter.fhir.server_config import ServerConfigError, record_run
    from fhir_adapter.job.connect import ConnectError, connect, is_url
    from fhir_adapter.job.outlock import OutInUse, hold_out
    from fhir_adapter.job.outpaths import UnsafePath
    from fhir_adapter.source.base import SourceError

    log = RunLog()
    started = dt.datetime.now(dt.UTC)
    if engine == "spark" and (is_url(source) or bulk or post or dry_run or since):
        raise click.UsageError("--engine spark reads a folder of NDJSON/Bundle files (a Bulk Data export): "
                               "--source must be a folder or a URI Spark reads (s3a://, hdfs://, file://), not a "
                               "FHIR server, without --bulk, --post, --dry-run or --since")
    if engine == "spark" and spark_master and spark_remote:
        raise click.UsageError(f"--spark-master {spark_master} and --spark-remote (or SPARK_REMOTE) {spark_remote}: "
                               "give one (a Spark Connect server has its own master)")
    spark = None
    with ExitStack() as held:   # one run per OUT at a time, from connecting to recording the run
        try:
            held.enter_context(hold_out(out))
        except OutInUse as exc:
            _fail(str(exc))
        if engine == "spark":   # started in OUT's lock: Spark's local folder is in OUT (docs/spark.md)
            from fhir_adapter.engine.spark import jvm_ended_on_interrupt, local_dir_in

            scratch = held.enter_context(local_dir_in(out))   # left after the JVM has ended
            spark = scratch.session = _spark(spark_master, spark_remote, str(scratch.path))
            held.enter_context(jvm_ended_on_interrupt(spark))
        try:
            conn = connect(source, st, log, out, post=post, dry_run=dry_run, since=since, config=config,
                           env=os.environ, bulk=bulk, allow_mass_retraction=allow_mass_retraction,
                           folder=_spark_folder(spark, source) if spark is not None else None)
            try:
                with progress(lambda: sum(n for k, n in log.counts.items() if k.startswith("read.")),
                              enabled=not ctx.obj.get("quiet"), requests=conn.requests_total) as prog:
                    if conn.bulk is not None:  # the server's X-Progress while it makes the export
                        conn.bulk.on_progress = prog.note
                    summary = run_pipeline(conn.source, st, out, log, sink=conn.sink, roster_csv=roster_csv,
                                           on_subject=prog.advance, on_start=prog.start, review_state=review_state,
                                           reviewed_only=reviewed_only or conn.reviewed_only,
                                           workers=workers or default_workers(),
                                           quarantine_full_copies=quarantine_full_copies,
                                           engine_outcomes=_spark_engine(spark, conn.source, log, out,
                                                                         spark_staging)
                                           if spark is not None else None)
            finally:
                conn.close()
        except (RosterError, FileNotFoundError, ConnectError, FhirError, MappingError, ServerConfigError,
                TamperedError, SourceError, UnsafePath) as exc:
            if ctx.obj.get("verbose", 0) >= 1:
                raise  # the group's handler prints the stack trace (-v) and the same line, with the same code
            _fail(str(exc), exit_code_of(exc))
        except OSError as exc:  # a full disk: where, what was kept, what to do (the error itself may name no file)
            if not is_disk_full(exc) or ctx.obj.get("verbose", 0) >= 1:
                raise
            _fail(disk_full_message(exc, out))
        if summary.stopped is not None:
            say_error(f"error: {summary.stopped.message}")
            sys.exit(summary.exit_code)
        # a base for the next --since last also when some subjects failed or were not written: that run reads
        # them in full and compares their results with the server (subjects_to_recheck; pipeline.py, reusable)
        if summary.exit_code != exit_codes.FAILED and not dry_run:
            try:
                record_run(out, conn.next_since(started), source, summary.roster_csv_sha256,
                           recheck=summary.subjects_failed + summary.subjects_not_written,
                           mapping_fingerprint=summary.mapping_fingerprint, day1=summary.day1)
            except UnsafePath as exc:   # state/ turned into a symbolic link while the run went on
                _fail(str(exc))
    if not ctx.obj.get("quiet"):
        rows = [
            ("subjects", f"{summary.subjects} enrolled and processed"
             + (f", {len(summary.subjects_failed)} failed" if summary.subjects_failed else "")
             + (f", {len(summary.carried_forward)} who left carried forward (not read)"
                if summary.carried_forward else "")),
            ("visits", str(summary.visits)),
            ("results", f"{summary.results_written} result resources in writeback/" if not dry_run else
             f"{summary.would_write['results']} result resources in writeback/ (dry run: none written)"),
            ("quarantined", f"{summary.quarantined} input resources (see run-report.json, quarantine/)"),
            ("warnings", str(summary.warnings)),
        ]
        if post or dry_run:
            verb = "would write" if dry_run else "written"
            writes = summary.would_write["server_writes"] if dry_run else summary.server_writes
            rows.append(("server", f"{writes} {verb}, {summary.server_unchanged} unchanged"
                         + (f", {len(summary.subjects_not_written)} subjects not written"
                            if summary.subjects_not_written else "")
                         + (f" (diffs in {out}/writeback-diff/)" if dry_run else "")))
        rows.append(("outputs", f"{out}/results/study.json  {out}/crf/  {out}/writeback/  {out}/run-report.json"))
        rows.append(("exit code", f"{summary.exit_code} ({exit_codes.meaning(summary.exit_code)})"))
        try:
            summary_table(f"fhir-adapter run — {st.info.id}", rows)
        except BrokenPipeError:  # `run … | head -1`: OUT is complete; the run's own exit code says how it went
            stream_closed(sys.stdout)
    sys.exit(summary.exit_code)


def _spark(master: str | None, remote: str | None, local_dir: str) -> Any:
    from fhir_adapter.engine.spark import SparkUnavailable, spark_session

    try:
        return spark_session(master, remote, local_dir)
    except SparkUnavailable as exc:
        _fail(str(exc))


def _spark_folder(spark: Any, source: str) -> Any:
    from fhir_adapter.engine.spark_files import SparkFolder

    return SparkFolder(spark, source)


def _spark_engine(spark: Any, source: object, log: object, out: Path, staging: str | None) -> Any:
    from fhir_adapter.engine.spark import SparkSubjects
    from fhir_adapter.job.runlog import RunLog
    from fhir_adapter.source.files import FileSource

    assert isinstance(source, FileSource) and isinstance(log, RunLog)
    if staging is None:  # OUT's own: the run holds OUT's lock
        return SparkSubjects(spark, source, log, str(out / ".spark-staging"), own=True)
    return SparkSubjects(spark, source, log, staging)


@main.command()
@click.option("--results", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The OUT folder of `fhir-adapter run` (holds review/candidates/, results/study.json).")
@click.option("--reviewer", default=None, help="Your name, recorded with each decision  [default: the OS user]")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 (0: a free one, printed).")
@click.option("--review-state", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of the review decision file  [default: RESULTS/state]")
def review(results: Path, reviewer: str | None, port: int, review_state: Path | None) -> None:
    """Review the values a run picked: a local web app on 127.0.0.1 (no network beyond this machine).

    \b
    Per subject, visit and CRF item: the rule's pick, every other candidate in the window (value, unit,
    date/time, status, source), rule, window and flags. Accept, choose another candidate, enter "not
    available" with a reason, or raise a query; each decision is appended to
    RESULTS/state/review-decisions.jsonl (hash-chained) and applied by the next `fhir-adapter run`.
    Stop with Ctrl-C (exit code 0: every decision is already saved). See docs/review.md.

    \b
    Examples:
      fhir-adapter review --results demo/out
      fhir-adapter review --results demo/out --reviewer "A. Example" --port 8765
    """
    from fhir_adapter.job.outpaths import UnsafePath
    from fhir_adapter.review.app import ReviewConfig, serve
    from fhir_adapter.review.store import DecisionStore, default_reviewer

    name = (reviewer or "").strip() or default_reviewer()
    if not results.is_dir():  # exit 1 as `report` does (docs/cli.md: a missing results folder), not click's 64
        _fail(f"{results} does not exist: pass --results the OUT folder of `fhir-adapter run --out OUT`")
    if not (results / "review" / "candidates").is_dir():
        _fail(f"{results} holds no review/candidates/: run `fhir-adapter run --out {results}` first")
    try:  # decisions are never appended through a symbolic link in RESULTS (state/ or the file)
        DecisionStore.under(results, review_state).check_writable()
    except UnsafePath as exc:
        _fail(str(exc))
    cfg = ReviewConfig(results=results, reviewer=name, state_dir=review_state)
    try:
        serve(cfg, port, on_ready=lambda url: say(f"review app      {url}  (reviewer: {name}; Ctrl-C stops)"))
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} — choose another --port")
    except KeyboardInterrupt:  # the server has shut down (uvicorn raises the signal again once it has)
        pass
    # a reviewer stopping the app is its normal end: every decision was appended when it was made
    say(f"review app stopped; the decisions are in {DecisionStore.under(results, review_state).path}")


@main.command()
@click.option("--results", type=click.Path(path_type=Path), required=True,
              help="The OUT folder of `fhir-adapter run` (holds results/study.json, crf/, run-report.json).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Folder for index.html  [default: RESULTS/report]")
@click.pass_context
def report(ctx: click.Context, results: Path, out: Path | None) -> None:
    """Write the study report: one self-contained HTML page (figures inline, no network needed).

    \b
    Sections: study summary and dose escalation, SLEDAI-2K and PGA per visit, LLDAS rate, CAR-T kinetics
    (log scale), swimmer plot, TEAE tables, UPCR/complement/anti-dsDNA, data completeness, settings.
    A section whose data is not in the results says "No data" (docs/report.md).

    \b
    Examples:
      fhir-adapter report --results demo/out
      fhir-adapter report --results demo/out --out /srv/www/lcar-aio
    """
    from fhir_adapter.job.outpaths import UnsafePath
    from fhir_adapter.report import build_report

    try:
        path = build_report(results, out)
    except UnsafePath as exc:
        _fail(str(exc))
    if not ctx.obj.get("quiet"):
        say(f"report          {path}")


@main.command()
@click.option("--study", type=click.Path(path_type=Path), default=DEFAULT_STUDY, show_default=True,
              help="Study mapping folder.")
@click.option("--site", type=click.Path(path_type=Path), default=None,
              help="Site overlay: a file, or a site name (example-site = mappings/sites/example-site.yaml).")
@click.option("--source", default=None,
              help="A FHIR R4 server base URL whose CapabilityStatement to check (or a folder of NDJSON/Bundle "
                   "files: only checked to hold such files).")
@click.option("--config", type=click.Path(path_type=Path, exists=True), default=None,
              help="Server settings YAML, as for `run` (observation_code_param, timeouts...).")
@click.option("--post", is_flag=True, help="Also check what writing results back (--post) needs.")
@click.option("--codes", is_flag=True,
              help="Also read every Observation of the enrolled subjects unfiltered and list the codes no study "
                   "item maps (a site's local codes, for its overlay), most frequent first.")
@click.option("--roster-csv", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="The site roster CSV the runs enrol from (an EHR without ResearchStudy/ResearchSubject), read "
                   "as a run reads it (with --source URL): its subjects are timed (and surveyed with --codes); a CSV "
                   "a run cannot read, or one that enrols nobody, is an error; a row a run would skip, a warning.")
@click.pass_context
def check(ctx: click.Context, study: Path, site: Path | None, source: str | None, config: Path | None,
          post: bool, codes: bool, roster_csv: Path | None) -> None:
    """Check a mapping, and what a FHIR server offers, before the first run. Reads the server's
    CapabilityStatement (GET [base]/metadata), and times the study's Observation searches for its first
    enrolled patient, filtered by code (combo-code) and unfiltered (none): the faster is what
    `observation_code_param: auto` (the default) reads with. With --codes, lists the Observation codes of the
    enrolled subjects that no study item maps (what a run's coverage.unmapped_codes lists for an export
    folder; a run against a server asks for the study's codes only). Writes nothing.

    \b
    Exit code 0 when the run can work, 1 on an error (a gap listed as "error"), 3 when the server cannot
    be reached, 4 when it refuses the credentials.

    \b
    Examples:
      fhir-adapter check --site mappings/sites/example-site.yaml
      fhir-adapter check --source https://ehr.example.org/fhir/R4 --post
      fhir-adapter check --source https://ehr.example.org/fhir/R4 --site my-site --codes
    """
    import asyncio
    import os

    from fhir_adapter.engine.cores import cgroup_cpu_limit, default_workers
    from fhir_adapter.fhir.server_clock import ClockOffset, described
    from fhir_adapter.fhir.server_config import load_server_config, open_client
    from fhir_adapter.job.preflight import Gap, bulk_export_levels, capability_gaps
    from fhir_adapter.study.load import load_study

    st = load_study(study, site)
    rules = ", ".join(sorted(st.rules))
    say(f"mapping ok    {st.root}" + (f" + site {st.site}" if st.site else ""))
    say(f"              study {st.info.id}, {len(st.items)} CRF items fed by {len(st.code_index)} codes, "
               f"{len(st.schedule.visits)} visits, time zone {st.info.timezone}")
    say(f"              rules: {rules}")
    limit = cgroup_cpu_limit()
    say(f"workers       {default_workers()} by default (run --workers N to choose)"
               + (f"; this process's CPU quota allows {limit:g} CPUs" if limit is not None else ""))
    for o in st.overrides:
        say(f"  override item {o['item']}: factor for {o['unit']} {o['study_factor']} (study) -> "
                   f"{o['site_factor']} (site, {o['where']})")
    from fhir_adapter.fhir.auth import AUTH_VARS
    from fhir_adapter.job.connect import is_url

    blank = sorted(v for v in AUTH_VARS if v in os.environ and not os.environ[v].strip())
    if blank:  # a run reads a blank credential variable as not set: it sends no credentials from it
        say(f"credentials   {', '.join(blank)} set but blank: ignored, as a run ignores it")
    if source is None or not is_url(source):
        _check_server_settings(config)  # a mistake in them is reported now, not on the first live run
        if source is not None:
            _check_file_source(Path(source), config)
        if codes:
            say("codes         --codes reads a FHIR server (--source URL); for a folder of files, run it "
                       "and read run-report.json -> coverage.unmapped_codes")
        return
    cfg = load_server_config(config, os.environ)

    async def metadata() -> tuple[dict[str, Any], ClockOffset | None]:
        async with open_client(source, cfg, os.environ) as client:
            return await client.capabilities(label="check"), client.clock_offset

    cs, clock = asyncio.run(metadata())
    timing, nobody, roster_warnings = _time_searches(source, cfg, st, roster_csv)
    gaps = capability_gaps(cs, observation_code_param=cfg.observation_code_param, post=post)
    if nobody is not None:  # as the run would stop (exit 1), with its message
        gaps.append(Gap("error", *nobody))
    gaps += [Gap("warning", "roster CSV", w) for w in roster_warnings]  # rows a run would not process
    software: dict[str, Any] = cs["software"] if isinstance(cs.get("software"), dict) else {}
    say(f"server        {source}: FHIR {cs.get('fhirVersion')} "
               f"{software.get('name', '')} {software.get('version', '')}".rstrip())
    for g in gaps:
        say(f"  {g.level:<8} {g.what}: {g.consequence}")
    say(f"clock         {described(clock)}")
    say(f"observations  {timing}")
    levels = bulk_export_levels(cs)
    if levels:
        say(f"bulk          $export declared ({', '.join(levels)}): `run --bulk` (or read_mode: bulk) reads "
                   "the server through a Bulk Data export, fewer requests for large cohorts")
    else:
        say("bulk          no $export declared: `run` reads through searches")
    if codes:
        for n, line in enumerate(_survey_codes(source, cfg, st, roster_csv)):
            say(f"{'codes' if n == 0 else '':<14}{line}")
    errors = [g for g in gaps if g.level == "error"]
    say(f"              {len(errors)} errors, {len(gaps) - len(errors)} warnings"
               + ("" if errors else ": the adapter can run against this server"))
    if errors:
        sys.exit(1)


def _stops_a_run(exc: BaseException) -> bool:
    """What ends ``check`` as it ends a run (exit 4 or 3), not a line of its report: the credentials refused, the
    server down or not answering (reading the roster or the CapabilityStatement failing after the retries)."""
    from fhir_adapter.cli.console import exit_code_of
    from fhir_adapter.job import exit_codes

    return exit_code_of(exc) in (exit_codes.AUTH_FAILED, exit_codes.SERVER_UNAVAILABLE)


def _time_searches(source: str, cfg: ServerConfig, st: Study,
                   roster_csv: Path | None) -> tuple[str, tuple[str, str] | None, list[str]]:
    """``check``: the roster as a run reads it (with the site's roster CSV, when given), and the timed Observation
    searches on its first enrolled patient (:func:`fhir_adapter.job.preflight.probe_study`): (the ``observations``
    line, (what, why) a run would stop on — it enrols nobody, or its roster or roster CSV cannot be read — or None,
    the roster CSV's warnings: rows a run would skip or read otherwise than written). The roster unread for the
    credentials or the server down raises (exit 4 or 3); a failed timing search is a line (a run would fail that
    subject alone)."""
    import asyncio
    import os

    from fhir_adapter.fhir import FhirError
    from fhir_adapter.fhir.server_config import open_client
    from fhir_adapter.job.preflight import probe_study
    from fhir_adapter.job.runlog import RunLog

    log = RunLog()

    async def probe() -> tuple[SearchTiming | str | None, str | None]:
        async with open_client(source, cfg, os.environ) as client:
            return await probe_study(client, st, log, roster_csv)

    from fhir_adapter.roster.site_csv import RosterCsvError

    try:
        timing, nobody = asyncio.run(probe())
    except FhirError as exc:
        if _stops_a_run(exc):
            raise
        return f"not timed: {exc}", ("the roster (ResearchStudy, ResearchSubject) could not be read",
                                     f"a run stops there (exit 1): {exc}"), []
    except RosterCsvError as exc:
        return "not timed: the roster CSV cannot be read", ("the roster CSV cannot be read",
                                                            f"a run stops there (exit 1): {exc}"), []
    # what the roster CSV's rows make a run say: rows skipped or read otherwise, disagreements with the EHR
    csv_warnings = [str(w["message"]) for w in log.warnings if str(w.get("rule", "")).startswith("roster-csv")]
    if timing is None:
        where = "in the roster CSV or on the server" if roster_csv is not None else "on the server"
        return (f"not timed: no subject of study {st.info.id} is enrolled {where}",
                (f"no subject of study {st.info.id} is enrolled {where}", nobody or ""), csv_warnings)
    if isinstance(timing, str):
        return f"not timed: {timing}", None, csv_warnings
    setting = cfg.observation_code_param
    then = ("`observation_code_param: auto` reads with it" if setting == "auto"
            else f"the config sets observation_code_param: {setting} (auto would read with {timing.chosen})")
    return f"{timing.summary()}; {then}", None, csv_warnings


def _survey_codes(source: str, cfg: ServerConfig, st: Study, roster_csv: Path | None) -> list[str]:
    """``check --codes``: the enrolled subjects' (those of the site's roster CSV too) Observation codes no study
    item maps (:mod:`fhir_adapter.job.code_survey`), as lines to print."""
    import asyncio
    import os

    from fhir_adapter.fhir import FhirError
    from fhir_adapter.fhir.server_config import open_client
    from fhir_adapter.job.code_survey import CodeSurvey, survey_codes
    from fhir_adapter.job.runlog import RunLog
    from fhir_adapter.roster.enrollees import RosterError

    async def survey() -> CodeSurvey:
        async with open_client(source, cfg, os.environ) as client:
            return await survey_codes(client, st, RunLog(), roster_csv)

    try:
        return asyncio.run(survey()).lines()
    except (FhirError, RosterError) as exc:
        if _stops_a_run(exc):
            raise
        return [f"not surveyed: {exc}"]


def _check_server_settings(config: Path | None) -> None:
    """``check`` without a server to ask: the server config file and the ``FHIR_ADAPTER_*`` variables set here are
    still loaded (a mistake exits 1 naming the file and key or the variable), the credential variables too (two
    ways of authenticating at once, one incomplete, a key file that does not load), and named when they are
    fine."""
    import os

    from fhir_adapter.fhir.auth import AUTH_VARS, auth_from_env
    from fhir_adapter.fhir.server_config import ENV_CLIENT, ENV_TOP, load_server_config

    variables = sorted(v for v in {*ENV_CLIENT, *ENV_TOP, *AUTH_VARS} if (os.environ.get(v) or "").strip())
    if config is None and not variables:
        return
    load_server_config(config, os.environ)
    try:  # as a run builds them (no request is made; a SMART token URL may come from the server's discovery)
        auth_from_env(os.environ, fhir_base_url="https://fhir-server.invalid/")
    except ValueError as exc:
        _fail(f"credentials: {exc}")
    given = ([str(config)] if config is not None else []) + variables
    say(f"config ok     {', '.join(given)}")


def _check_file_source(folder: Path, config: Path | None) -> None:
    """``check --source FOLDER``: a folder of NDJSON/Bundle files has no CapabilityStatement to compare."""
    if not folder.is_dir():
        _fail(f"--source {folder}: neither a FHIR server base URL (https://host/fhir) nor an existing folder of "
              "NDJSON/Bundle files — give the server's base URL, or the folder of a Bulk Data export")
    files = sorted(p.name for p in folder.iterdir() if p.suffix in (".ndjson", ".json"))
    if not files:
        _fail(f"--source {folder}: the folder holds no .ndjson or .json files — give the folder of a Bulk Data "
              "export (one NDJSON file per resource type) or a folder of Bundles")
    say(f"source        {folder}: folder of {len(files)} NDJSON/Bundle files; no server to check "
               "(files are read as they are)")
    if config is not None:
        say(f"  warning  --config {config} applies to a FHIR server source only; it is ignored for a folder")


if __name__ == "__main__":
    main()
