"""Server config mistakes and command-line usage errors are the user's, and say so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.job import exit_codes

ROOT = Path(__file__).resolve().parent.parent


def _check(tmp_path: Path, config_text: str | None, env: dict[str, str] | None = None) -> tuple[int, str]:
    args = ["check"]
    if config_text is not None:
        cfg = tmp_path / "adapter.yaml"
        cfg.write_text(config_text)
        args += ["--config", str(cfg)]
    res = CliRunner(env=env).invoke(main, args)
    return res.exit_code, res.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("max_concurrency: 8\n", ["adapter.yaml:1", "'max_concurrency'", "under `client:`"]),
    ("client:\n  max_concurency: 8\n", ["adapter.yaml:2", "client.max_concurency", "did you mean 'max_concurrency'"]),
    ("client:\n  max_concurrency: eight\n", ["adapter.yaml:2", "client.max_concurrency", "integer", "'eight'"]),
    ("read_mode: fast\n", ["adapter.yaml:1", "read_mode", "Input should be 'search'", "'fast'"]),
    ("client:\n  read_mode: batch\n", ["client.read_mode", "move it to the top level"]),
    # the Device and a Provenance go with every write-back transaction: 1 or 2 leaves no room for a result
    ("client:\n  page_size: 50\n  max_transaction_entries: 2\n",
     ["adapter.yaml:3", "client.max_transaction_entries: 2", "Device and a Provenance", "at least 3",
      "one atomic transaction"]),
])
def test_a_config_file_mistake_is_a_one_line_user_error(tmp_path: Path, text: str, expected: list[str]) -> None:
    code, err = _check(tmp_path, text)
    assert code == exit_codes.FAILED
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in err, err
    for part in expected:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize(("var", "value"), [("FHIR_ADAPTER_MAX_CONCURRENCY", "abc"),
                                            ("FHIR_ADAPTER_MAX_CONCURRENCY", "0"),
                                            ("FHIR_ADAPTER_READ_MODE", "fast"),
                                            ("FHIR_ADAPTER_CA_BUNDLE", "/no/such/ca.pem"),
                                            ("FHIR_ADAPTER_MAX_TRANSACTION_ENTRIES", "1")])
def test_a_bad_environment_variable_is_named(tmp_path: Path, var: str, value: str) -> None:
    code, err = _check(tmp_path, "client:\n  page_size: 50\n", env={var: value})
    assert code == exit_codes.FAILED
    assert err.startswith(f"error: environment variable {var}={value!r}") and "unset it" in err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1


def test_run_reports_a_config_mistake_before_reading(tmp_path: Path) -> None:
    cfg = tmp_path / "adapter.yaml"
    cfg.write_text("max_concurrency: 8\n")
    res = CliRunner().invoke(main, ["run", "--source", "http://127.0.0.1:9/fhir", "--out", str(tmp_path / "o"),
                                    "--config", str(cfg)])
    assert res.exit_code == exit_codes.FAILED
    assert res.stderr.startswith("error: ") and "under `client:`" in res.stderr and "internal" not in res.stderr


def test_check_with_a_folder_source_is_not_a_bug(tmp_path: Path) -> None:
    from fhir_adapter.synth import write_feed

    write_feed(tmp_path / "feed", subjects=1, seed=3)
    res = CliRunner().invoke(main, ["check", "--source", str(tmp_path / "feed")])
    assert res.exit_code == 0, res.output
    assert "folder of" in res.stdout and "no server to check" in res.stdout
    missing = CliRunner().invoke(main, ["check", "--source", str(tmp_path / "nothing-here")])
    assert missing.exit_code == exit_codes.FAILED
    assert missing.stderr.startswith("error: --source") and "base URL" in missing.stderr
    assert "internal error" not in missing.stderr


@pytest.mark.parametrize("args", [["--bogus", "run"], ["run", "--bogus"], ["run", "-q", "--source", "x", "--out", "y"],
                                  ["run", "--source", "x", "--out", "y", "--config", "/no/such/adapter.yaml"],
                                  ["no-such-command"], ["run"]])
def test_usage_errors_exit_64_not_2(args: list[str]) -> None:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == exit_codes.USAGE == 64, res.output
    assert "Usage:" in res.stderr


def test_an_option_of_the_command_given_after_run_says_where_it_goes() -> None:
    res = CliRunner().invoke(main, ["run", "-q", "--source", "x", "--out", "y"])
    assert res.exit_code == 64
    assert "-q is an option of fhir-adapter itself: put it before the command, e.g. fhir-adapter -q run" in res.stderr
    assert "itself" not in CliRunner().invoke(main, ["run", "--bogus"]).stderr


def test_usage_error_exit_code_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fhir_adapter.cli.commands", "run", "--bogus"], capture_output=True,
                          text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 64, proc.stderr


def test_exit_code_table_in_help_and_docs() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    doc = (ROOT / "docs" / "cli.md").read_text()
    for code in (0, 1, 2, 3, 4, 64):
        assert f"  {code:<3}" in out, code
        assert f"| {code} |" in doc, code
    assert "usage error on the command line" in out


def test_incomplete_smart_credentials_are_a_user_error(tmp_path: Path) -> None:
    res = CliRunner(env={"FHIR_ADAPTER_SMART_CLIENT_ID": "adapter"}).invoke(
        main, ["check", "--source", "https://127.0.0.1:9/fhir"])
    assert res.exit_code == exit_codes.FAILED
    assert res.stderr.startswith("error: credentials in the environment") and "FHIR_ADAPTER_SMART_KID" in res.stderr
    assert "internal error" not in res.stderr


def test_a_setting_appended_to_the_server_config_overrides_the_one_above(tmp_path: Path) -> None:
    """The server config reads a key given twice as YAML does, the second winning (a setting appended to a
    shared file overrides it); mapping files and site overlays refuse one (docs/integrator-guide.md)."""
    from fhir_adapter.fhir.server_config import load_server_config

    path = tmp_path / "adapter.yaml"
    path.write_text("client:\n  max_attempts: 2\n  read_timeout: 5\n  max_attempts: 7\n")
    assert load_server_config(path, {}).client.max_attempts == 7
