"""The command line: help texts, exit codes, one-line errors, JSON logs (click's CliRunner)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from tests.feedkit import recount_manifest
from tests.report import report_fixture

ROOT = Path(__file__).resolve().parent.parent


def _runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("args", [[], ["run"], ["synth"], ["report"]])
def test_help_has_examples(args: list[str]) -> None:
    res = _runner().invoke(main, [*args, "--help"])
    assert res.exit_code == 0
    assert "Example" in res.output and "fhir-adapter " in res.output


def test_help_documents_exit_codes_and_options() -> None:
    out = _runner().invoke(main, ["--help"]).output
    assert "Exit codes" in out and "0  ok" in out and "1  failed" in out and "2  completed" in out
    assert "--log-format" in out and "-vv" in out and "--quiet" in out


def test_run_help_lists_each_output_at_one_indent() -> None:
    """The `Writes to OUT` list of `run --help`: every entry starts at the same column, and a continuation line
    sits under its entry's text (an entry out of line reads as another list)."""
    out = _runner().invoke(main, ["run", "--help"]).output
    block = out.split("Writes to OUT:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    entries = [line for line in block if not line.lstrip().startswith("(") and "  " in line.strip()]
    assert len(entries) >= 7, block
    assert len({len(line) - len(line.lstrip()) for line in entries}) == 1, block
    text_column = entries[0].index("CRF per subject")
    for line in block:
        if line not in entries:
            assert len(line) - len(line.lstrip()) == text_column, line


@pytest.fixture(scope="module")
def quarantining_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic feed plus one Observation without a date (always quarantined)."""
    from fhir_adapter.synth import write_feed

    feed = tmp_path_factory.mktemp("feed")
    write_feed(feed, subjects=3, seed=7)
    obs_file = next(p for p in sorted(feed.glob("*.ndjson")) if p.name.startswith("Observation"))
    first = json.loads(obs_file.read_text().splitlines()[0])
    for key in [k for k in first if k.startswith("effective")]:
        del first[key]
    first["id"] = "no-date-for-the-cli-test"
    with obs_file.open("a") as fh:
        fh.write(json.dumps(first) + "\n")
    return recount_manifest(feed)


def test_quarantined_input_exits_2_with_a_summary(quarantining_feed: Path, tmp_path: Path) -> None:
    res = _runner().invoke(main, ["run", "--source", str(quarantining_feed), "--out", str(tmp_path / "out"),
                                  "--study", str(ROOT / "mappings" / "lcar-aio")])
    assert res.exit_code == 2, res.output
    assert "quarantined" in res.stdout and "exit code    2" in res.stdout
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    assert any(q.get("id") == "no-date-for-the-cli-test" for q in report["quarantine"])
    for name in ("results/study.json", "run-report.json"):
        assert (tmp_path / "out" / name).is_file()


def test_missing_study_folder_is_one_line_exit_1(tmp_path: Path) -> None:
    res = _runner().invoke(main, ["run", "--source", str(tmp_path), "--out", str(tmp_path / "out"),
                                  "--study", str(tmp_path / "no-such-study")])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-study" in lines[0]
    assert "Traceback" not in res.output + res.stderr


@pytest.mark.parametrize("option", [["--post"], ["--dry-run"], ["--since", "last"], ["--since", "2026-01-01"],
                                    ["--bulk"]])
def test_server_only_options_on_a_folder_stop_before_anything_is_written(quarantining_feed: Path, tmp_path: Path,
                                                                         option: list[str]) -> None:
    """docs/cli.md: a scheduled job that believes it posts or reads incrementally never runs as something else."""
    out = tmp_path / "out"
    res = _runner().invoke(main, ["run", "--source", str(quarantining_feed), "--out", str(out), *option])
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "need a FHIR server" in lines[0] and "--source https://" in lines[0]
    assert not (out / "run-report.json").exists() and not (out / "crf").exists()


def test_config_on_a_folder_is_ignored_with_a_warning(quarantining_feed: Path, tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("read_mode: batch\n")
    res = _runner().invoke(main, ["run", "--source", str(quarantining_feed), "--out", str(tmp_path / "out"),
                                  "--config", str(config)])
    assert res.exit_code == 2, res.output  # the feed's quarantined line, as without --config
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    assert any(w.get("rule") == "config-ignored" for w in report["warnings"])


def test_bad_mapping_names_file_and_line(tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(ROOT / "mappings" / "lcar-aio", study)
    (study / "schedule.yaml").write_text("visits:\n  - {id: SCR, day: -28, window: [-56\n")
    res = _runner().invoke(main, ["run", "--source", str(tmp_path), "--out", str(tmp_path / "out"),
                                  "--study", str(study)])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "schedule.yaml:3:" in lines[0] and "fix the YAML" in lines[0]  # file:line, what to do
    assert "Traceback" not in res.stderr


def test_report_command_and_its_errors(tmp_path: Path) -> None:
    out = report_fixture.write(tmp_path / "out")
    res = _runner().invoke(main, ["report", "--results", str(out), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "index.html").is_file()
    res = _runner().invoke(main, ["report", "--results", str(tmp_path / "missing")])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing'} does not exist: pass --results the OUT folder of "
        "`fhir-adapter run --out OUT`"]


@pytest.mark.parametrize("command", ["report", "review"])
def test_a_missing_results_folder_is_exit_1_in_every_command(tmp_path: Path, command: str) -> None:
    """docs/cli.md: a missing study or results folder is exit 1 with one line, whichever command reads it."""
    res = _runner().invoke(main, [command, "--results", str(tmp_path / "missing")])
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing'} does not exist: pass --results the OUT folder of "
        "`fhir-adapter run --out OUT`"]


def test_stack_trace_only_with_v(tmp_path: Path) -> None:
    quiet = _runner().invoke(main, ["report", "--results", str(tmp_path / "missing")])
    assert "Traceback" not in quiet.stderr
    for flag in ("-v", "-vv"):  # issue 6: "nothing prints a stack trace unless -v"
        loud = _runner().invoke(main, [flag, "report", "--results", str(tmp_path / "missing")])
        assert "Traceback" in loud.stderr and loud.exit_code == 1, flag


def test_internal_errors_are_one_line_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import fhir_adapter.report as rep

    def boom(*_: object) -> Path:
        raise KeyError("kinetics")

    monkeypatch.setattr(rep, "build_report", boom)
    res = _runner().invoke(main, ["report", "--results", str(tmp_path)])
    assert res.exit_code == 1
    assert res.stderr.startswith("error: internal error (KeyError") and "run again with -v " in res.stderr
    assert "Traceback" not in res.stderr


def test_py4j_records_are_shown_with_v_only() -> None:
    """py4j logs through the root logger, with a stack trace, every call to Spark's JVM a Ctrl-C cuts short
    (docs/cli.md: stack traces only with -v)."""
    import io
    import logging
    import os

    from fhir_adapter.cli.console import setup_logging

    def shown(verbose: int) -> str:
        out = io.StringIO()
        setup_logging(verbose, False, "text", out)
        record = logging.LogRecord("root", logging.ERROR, os.path.join("site-packages", "py4j", "java_gateway.py"),
                                   1, "KeyboardInterrupt while sending command.", None, None)
        logging.getLogger().handle(record)
        logging.getLogger().error("an error of the adapter's own")
        return out.getvalue()

    try:
        assert shown(0) == "ERROR root: an error of the adapter's own\n"
        assert "KeyboardInterrupt while sending command." in shown(1)
    finally:
        setup_logging(0, False, "text")


def test_json_logs(quarantining_feed: Path, tmp_path: Path) -> None:
    res = _runner().invoke(main, ["-v", "--log-format", "json", "run", "--source", str(quarantining_feed),
                                  "--out", str(tmp_path / "out"), "--study", str(ROOT / "mappings" / "lcar-aio")])
    assert res.exit_code == 2
    records = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    progress = [r for r in records if r["logger"] == "fhir_adapter.progress"]
    assert progress[-1]["subjects_done"] == progress[-1]["subjects_total"] == 3


#: a subject ID that would erase the line, retitle the terminal, ring its bell and start a C1 CSI sequence
HOSTILE_ID = "101-001\x1b[2K\x1b]0;owned\x07\x9b31m\nERROR forged line\r"


def _raw_controls(text: str) -> list[str]:
    return sorted({c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f})


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_control_characters_of_a_subject_id_reach_the_terminal_escaped(tmp_path: Path, log_format: str) -> None:
    """A subject ID is EHR data: what the console prints of it (progress lines, warnings) shows its control
    characters escaped (\\x1b), never sends them to the terminal, and cannot start a line of its own."""
    from fhir_adapter.synth import write_feed

    feed = tmp_path / "feed"
    write_feed(feed, subjects=3, seed=7)
    path = feed / "ResearchSubject.ndjson"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["identifier"][0]["value"] = HOSTILE_ID
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _runner().invoke(main, ["--log-format", log_format, "run", "--source", str(feed),
                                  "--out", str(tmp_path / "out"), "--study", str(ROOT / "mappings" / "lcar-aio")])
    assert res.exit_code in (0, 2), res.output
    assert _raw_controls(res.stderr) == [] and _raw_controls(res.stdout) == []
    shown = [line for line in res.stderr.splitlines() if "101-001" in line]
    assert shown and not any(line.startswith("ERROR forged") for line in res.stderr.splitlines())
    if log_format == "text":
        assert "(last: 101-001\\x1b[2K\\x1b]0;owned\\x07\\x9b31m\\nERROR forged line\\r)" in res.stderr
    else:
        records = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
        assert any(HOSTILE_ID in r["message"] for r in records)   # the JSON holds the ID, escaped


def test_error_lines_bar_and_summary_show_control_characters_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from fhir_adapter.cli.console import RunProgress, say_error, summary_table

    say_error(f"error: subject {HOSTILE_ID} is not enrolled")
    assert capsys.readouterr().err == "error: subject 101-001\\x1b[2K\\x1b]0;owned\\x07\\x9b31m\\nERROR forged " \
                                      "line\\r is not enrolled\n"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    summary_table("run", [("subject", f"[bold red]{HOSTILE_ID}")], stream=screen)
    drawn = screen.getvalue()   # rich's own styling sequences (bold keys) aside, the value is text
    assert "[bold red]101-001\\x1b[2K" in drawn and not any(c in drawn for c in "\x07\x9b\r")
    assert "\x1b[2K" not in drawn and "\x1b]0" not in drawn
    plain = io.StringIO()
    summary_table("run", [("subject", HOSTILE_ID)], stream=plain)
    assert _raw_controls(plain.getvalue()) == [] and len(plain.getvalue().splitlines()) == 1
    bar = RunProgress(lambda: 0, enabled=True, live=True, requests=lambda: 1)
    bar.start(1)
    try:
        bar.note(f"[blink]{HOSTILE_ID}")
        assert bar._bar is not None
        note = bar._bar.tasks[0].fields["note"]
    finally:
        bar.stop()
    assert _raw_controls(note) == [] and note.startswith("\\[blink]101-001\\x1b")   # no rich markup either


def test_quiet_prints_nothing_but_keeps_the_exit_code(quarantining_feed: Path, tmp_path: Path) -> None:
    res = _runner().invoke(main, ["-q", "run", "--source", str(quarantining_feed), "--out", str(tmp_path / "o"),
                                  "--study", str(ROOT / "mappings" / "lcar-aio")])
    assert res.exit_code == 2 and res.stdout == "" and res.stderr == ""


def test_progress_lines_count_requests_on_live_server_runs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from fhir_adapter.cli.console import RunProgress

    calls = iter(range(10, 1000, 10))
    p = RunProgress(lambda: 500, enabled=True, live=False, requests=lambda: next(calls))
    with caplog.at_level(logging.INFO, logger="fhir_adapter.progress"):
        p.start(2)
        p.advance("101-001")
        p.advance("101-002")
    done = [r for r in caplog.records if getattr(r, "subjects_done", None) == 2]
    assert done and getattr(done[0], "requests", None) == 20 and "20 requests" in done[0].getMessage()
    files_only = RunProgress(lambda: 5, enabled=True, live=False)
    with caplog.at_level(logging.INFO, logger="fhir_adapter.progress"):
        files_only.start(1)
        files_only.advance("101-001")
    assert "requests" not in caplog.records[-1].getMessage()


def test_progress_lines_give_the_elapsed_time_and_the_eta(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 6: progress (subjects, requests, resources, ETA) degrades to plain log lines off a terminal."""
    import logging

    from fhir_adapter.cli.console import RunProgress

    ticks = iter([100.0, 130.0, 160.0, 190.0, 220.0])  # start, then 30 s per subject
    p = RunProgress(lambda: 9, enabled=True, live=False, clock=lambda: next(ticks))
    with caplog.at_level(logging.INFO, logger="fhir_adapter.progress"):
        p.start(4)
        for sid in ("a", "b", "c", "d"):
            p.advance(sid)
    lines = [r for r in caplog.records if getattr(r, "subjects_done", None) == 1]
    assert "elapsed 0:00:30, ETA 0:01:30" in lines[0].getMessage()
    assert (getattr(lines[0], "elapsed_s", None), getattr(lines[0], "eta_s", None)) == (30.0, 90.0)
    assert "elapsed 0:02:00, ETA 0:00:00" in caplog.records[-1].getMessage()


def test_bulk_export_progress_is_a_progress_line_or_beside_the_bar(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from fhir_adapter.cli.console import RunProgress

    plain = RunProgress(lambda: 0, enabled=True, live=False, requests=lambda: 3)
    with caplog.at_level(logging.INFO, logger="fhir_adapter.progress"):
        plain.note("in progress (50%)")
    assert [r.getMessage() for r in caplog.records] == ["Bulk export: in progress (50%)"]
    assert getattr(caplog.records[0], "bulk_progress", None) == "in progress (50%)"
    live = RunProgress(lambda: 0, enabled=True, live=True, requests=lambda: 3)
    live.start(2)
    try:
        live.note("in progress (50%)")
        assert live._bar is not None and live._bar.tasks[0].fields["note"] == "in progress (50%)"
        live.advance("101-001")  # subjects are processed: the export is done
        assert live._bar.tasks[0].fields["note"] == ""
    finally:
        live.stop()
    caplog.clear()
    RunProgress(lambda: 0, enabled=False, live=False).note("in progress (50%)")  # -q
    assert not caplog.records


def test_rich_is_imported_only_to_draw_on_a_terminal() -> None:
    """--help and runs into logs or pipes start without rich; the terminal's bar and table still draw."""
    script = textwrap.dedent("""
        import io, sys
        from click.testing import CliRunner
        from fhir_adapter.cli.commands import main
        from fhir_adapter.cli.console import RunProgress, summary_table
        assert CliRunner().invoke(main, ["--help"]).exit_code == 0
        assert not [m for m in sys.modules if m.split(".")[0] == "rich"]
        bar = RunProgress(lambda: 7, enabled=True, live=True)
        bar.start(2)
        bar.advance("101-001")
        bar.stop()
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True
        screen = Terminal()
        summary_table("run", [("subjects", "2")], stream=screen)
        assert "subjects" in screen.getvalue() and "rich.table" in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_on_windows_every_command_says_where_to_run_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OUT locks are POSIX (fcntl): on Windows a command fails at once with one line that says what to do,
    not with an ImportError from deep inside a run; --help still answers."""
    from click.testing import CliRunner

    from fhir_adapter.cli.commands import main

    monkeypatch.setattr(sys, "platform", "win32")
    done = CliRunner().invoke(main, ["check", "--study", "lcar-aio"])
    assert done.exit_code == 1 and "WSL 2 or a Linux container" in done.output, done.output
    assert CliRunner().invoke(main, ["run", "--help"]).exit_code == 0


def test_an_offline_run_does_not_load_the_http_stack(tmp_path: Path) -> None:
    """httpx, jwt and cryptography (0.2 s per process) are loaded by live runs only: a run on a folder, and the
    workers' preload, never import them; the client is still one attribute access away."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from click.testing import CliRunner
        from fhir_adapter.cli.commands import main
        from fhir_adapter.synth import write_feed
        import fhir_adapter.engine.preload
        write_feed(Path({str(tmp_path / "feed")!r}), subjects=2)
        done = CliRunner().invoke(main, ["run", "--source", {str(tmp_path / "feed")!r},
                                         "--out", {str(tmp_path / "out")!r}, "--workers", "1"])
        assert done.exit_code in (0, 2), done.output
        http = ("httpx", "jwt", "cryptography", "fhir_adapter.fhir.client")
        assert not [m for m in sys.modules if m.split(".")[0] in http or m in http], sorted(sys.modules)
        from fhir_adapter.fhir import FhirClient
        assert FhirClient.__module__ == "fhir_adapter.fhir.client" and "httpx" in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_default_study_is_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from fhir_adapter.cli.commands import main
    from fhir_adapter.synth import write_feed

    write_feed(tmp_path / "feed", subjects=2, seed=3)
    monkeypatch.chdir(tmp_path)  # no mappings/ here: the default --study resolves to the project's own
    result = CliRunner().invoke(main, ["-q", "run", "--source", "feed", "--out", "out"])
    assert result.exit_code in (0, 2), result.output
    assert (tmp_path / "out" / "results" / "study.json").exists()


def test_check_says_how_many_workers_a_run_starts_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import fhir_adapter.engine.cores as cores

    monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda root=None: 1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    res = _runner().invoke(main, ["check"])
    assert res.exit_code == 0, res.output
    assert "workers       2 by default (run --workers N to choose); this process's CPU quota allows 1.5 CPUs" \
        in res.output


def test_check_loads_the_server_variables_without_a_server(tmp_path: Path) -> None:
    """docs/cli.md: check says whether the server config and the FHIR_ADAPTER_* variables are right, also when it
    has no server to ask (no --source, or a folder): a bad variable is exit 1 naming it, a good one is named."""
    bad = _runner().invoke(main, ["check"], env={"FHIR_ADAPTER_MAX_CONCURRENCY": "abc"})
    assert bad.exit_code == 1 and "FHIR_ADAPTER_MAX_CONCURRENCY='abc'" in bad.stderr, bad.output
    (tmp_path / "f.ndjson").write_text("")
    good = _runner().invoke(main, ["check", "--source", str(tmp_path)], env={"FHIR_ADAPTER_MAX_CONCURRENCY": "4"})
    assert good.exit_code == 0 and "config ok     FHIR_ADAPTER_MAX_CONCURRENCY" in good.stdout, good.output
    # the credential variables too: two ways of authenticating at once is exit 1 naming them (never the values)
    both = _runner().invoke(main, ["check"], env={"FHIR_ADAPTER_BEARER_TOKEN": "s3cr3t-value",
                                                  "FHIR_ADAPTER_OAUTH_CLIENT_ID": "adapter"})
    assert both.exit_code == 1, both.output
    assert "FHIR_ADAPTER_BEARER_TOKEN" in both.stderr and "FHIR_ADAPTER_OAUTH_CLIENT_ID" in both.stderr
    assert "s3cr3t-value" not in both.output + both.stderr
    one = _runner().invoke(main, ["check"], env={"FHIR_ADAPTER_BEARER_TOKEN": "s3cr3t-value"})
    assert one.exit_code == 0 and "config ok     FHIR_ADAPTER_BEARER_TOKEN" in one.stdout, one.output
    assert "s3cr3t-value" not in one.output
    blank = _runner().invoke(main, ["check"], env={"FHIR_ADAPTER_BEARER_TOKEN": "  "})
    assert blank.exit_code == 0 and "config ok" not in blank.stdout, blank.output
    assert "credentials   FHIR_ADAPTER_BEARER_TOKEN set but blank: ignored, as a run ignores it" in blank.stdout


def test_bulk_client_errors_take_the_exit_codes_of_the_table() -> None:
    """A Bulk Data 401 is rejected credentials (4), a 429 or 5xx after the retries the server failing (3), as on
    the REST path; so is a download that failed for a network failure of the server's (its ``__cause__``), but
    not for a name that does not resolve."""
    from fhir_adapter.cli.console import exit_code_of
    from fhir_adapter.fhir.bulk import BulkExportError
    from fhir_adapter.fhir.errors import FhirTransportError

    url = "https://ehr.example.org/fhir/Patient/$export"
    assert [exit_code_of(BulkExportError("x", url=url, status=s)) for s in (401, 403, 404, 429, 500, 501, 503, None)] \
        == [4, 1, 1, 3, 3, 1, 3, 1]

    def failed_for(kind: str) -> BulkExportError:
        err = BulkExportError(f"{url}: download failed", url=url)
        err.__cause__ = FhirTransportError("GET failed", url=url, kind=kind)
        return err

    assert [exit_code_of(failed_for(k)) for k in ("refused", "timeout", "dropped", "dns", "tls")] == [3, 3, 3, 1, 1]


def _closed_pipe() -> tuple[int, Any]:
    """The write end of a pipe whose reader has gone (every write to it fails), and a closer."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end, lambda: os.close(write_end)


CLI = [sys.executable, "-c", "from fhir_adapter.cli.commands import main; main()"]


def test_a_reader_that_closes_the_output_ends_the_command_quietly_with_141() -> None:
    """`fhir-adapter check | head -1`: once the reader has gone, the command stops without an `error:` line or
    a traceback, with the shell's code for a command stopped by SIGPIPE."""
    write_end, close = _closed_pipe()
    try:
        done = subprocess.run([*CLI, "check", "--study", str(ROOT / "mappings" / "lcar-aio")],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    finally:
        close()
    assert (done.returncode, done.stderr) == (141, "")


def test_a_run_whose_summary_reader_has_gone_keeps_its_own_exit_code(quarantining_feed: Path,
                                                                       tmp_path: Path) -> None:
    """`run … | head -1`: OUT is complete before the summary is printed, so the run's code (2: quarantined input)
    stands, not 141."""
    write_end, close = _closed_pipe()
    try:
        done = subprocess.run([*CLI, "run", "--source", str(quarantining_feed), "--out", str(tmp_path / "out"),
                               "--workers", "1"], stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              timeout=300)
    finally:
        close()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (tmp_path / "out" / "state" / "last-run.json").is_file() and len(list((tmp_path / "out" / "crf")
                                                                                 .glob("*.json"))) == 3


def test_an_error_line_whose_reader_has_gone_keeps_the_commands_exit_code(tmp_path: Path) -> None:
    """A run against nothing listening exits 3 (server unavailable) also when its stderr reader has gone: the
    code a scheduler acts on is not turned into 141 ("nothing to do")."""
    from tests.serverkit import write_config

    config = write_config(tmp_path / "a.yaml", "  max_attempts: 2\n")
    write_end, close = _closed_pipe()
    try:
        done = subprocess.run([*CLI, "run", "--source", "http://127.0.0.1:9/fhir", "--out", str(tmp_path / "out"),
                               "--config", str(config)], stdout=subprocess.DEVNULL, stderr=write_end, cwd=ROOT,
                              timeout=300)
    finally:
        close()
    assert done.returncode == 3


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_ends_a_run_with_130_and_one_line_keeping_the_previous_outputs(tmp_path: Path, workers: str) -> None:
    """Ctrl-C (SIGINT) in the middle of a run: one `error:` line saying OUT keeps the previous run's outputs, the
    shell's code for it (130), no "Aborted!" and no traceback (the workers' neither); OUT holds the first run's
    outputs, unchanged."""
    import os
    import signal
    import time

    from fhir_adapter.synth import write_feed

    write_feed(tmp_path / "feed", subjects=12, seed=7)
    out = tmp_path / "out"
    first = subprocess.run([*CLI, "-q", "run", "--source", str(tmp_path / "feed"), "--out", str(out),
                            "--workers", "1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode in (0, 2), first.stderr
    before = {p: p.read_bytes() for p in (out / "crf").glob("*.json")}
    proc = subprocess.Popen([*CLI, "-q", "run", "--source", str(tmp_path / "feed"), "--out", str(out),
                             "--workers", workers], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(".staging-*/crf/*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # interrupted once it is writing its subjects' files
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole process group, workers too
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["error: interrupted: OUT keeps the previous run's outputs (a run replaces "
                                           "them only once it has finished); run the same command again"]
    assert {p: p.read_bytes() for p in (out / "crf").glob("*.json")} == before
    assert not list(out.glob(".staging-*"))
