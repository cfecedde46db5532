"""How Observations are searched on the real local FHIR server: code-filtered on the server (combo-code),
unfiltered and filtered on the client (none), or whichever of the two the server answers faster, timed once
per run (auto, the default) — each reads the same Observations, so CRFs, quarantine and coverage are those
of the other ways and the CRFs those of the file run; `check` prints the timing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import ServerHandle, start_fhir_server
from fhir_adapter.testing.outtree import server_read_crfs
from tests.serverkit import cli_run, report, write_config

pytestmark = pytest.mark.server

SUBJECTS = 4
#: Observations of codes the study does not map (a CBC panel, body height) in the synthetic feed
OUTSIDE_STUDY = ("http://loinc.org|58410-2", "http://loinc.org|8302-2")


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, Path]]:
    """The server loaded with the feed, and the OUT of the file run of that feed."""
    tmp = tmp_path_factory.mktemp("obs-search")
    write_feed(tmp / "feed", subjects=SUBJECTS, seed=7)
    cli_run(str(tmp / "feed"), tmp / "file-out")
    with start_fhir_server() as server:
        load_feed(server.base_url, tmp / "feed")
        yield server, tmp / "file-out"


def live(server: ServerHandle, tmp: Path, setting: str | None) -> Path:
    """OUT of a live run with ``observation_code_param: setting`` (None: the default)."""
    name = setting or "default"
    config = write_config(tmp / f"{name}.yaml", f"observation_code_param: {setting}\n" if setting else "")
    cli_run(server.base_url, tmp / name, "--config", str(config))
    return tmp / name


def quarantine_and_coverage(out: Path) -> dict[str, Any]:
    rep = report(out)
    files = {p: (out / p).read_text() for p in ("export/coverage.csv", "export/coverage-subjects.csv")}
    q = out / "quarantine"
    files.update({str(p.relative_to(out)): p.read_text() for p in sorted(q.rglob("*")) if p.is_file()})
    return {"quarantine": rep["quarantine"], "coverage": rep["coverage"], **files}


def test_unfiltered_searches_keep_only_the_study_codes(trial: tuple[ServerHandle, Path], tmp_path: Path) -> None:
    server, file_out = trial
    filtered = live(server, tmp_path, "combo-code")
    unfiltered = live(server, tmp_path, "none")
    counts = report(unfiltered)["counts"]
    file_counts = report(file_out)["counts"]
    # the file run reads the Observations outside the study (and counts them unmapped); the unfiltered
    # search returns them too, and the client drops them as a combo-code search would not have returned them
    assert all(file_counts.get(f"unmapped.{code}", 0) > 0 for code in OUTSIDE_STUDY)
    assert counts["read.skipped-observations-outside-study"] == sum(file_counts[f"unmapped.{c}"] for c in OUTSIDE_STUDY)
    assert not any(k.startswith("unmapped.") for k in counts)
    assert counts["read.Observation"] == report(filtered)["counts"]["read.Observation"]
    assert quarantine_and_coverage(unfiltered) == quarantine_and_coverage(filtered)
    assert server_read_crfs(unfiltered) == server_read_crfs(filtered) == server_read_crfs(file_out)
    for out, setting in ((filtered, "combo-code"), (unfiltered, "none")):
        assert report(out)["server_requests"]["observation_search"] == {
            "observation_code_param": setting, "chosen_by": "setting"}


def test_auto_times_both_searches_once_and_reads_with_the_faster(trial: tuple[ServerHandle, Path],
                                                                 tmp_path: Path) -> None:
    server, file_out = trial
    server.reset("stats")
    out = live(server, tmp_path, None)
    requests = report(out)["server_requests"]
    how = requests["observation_search"]
    assert how["chosen_by"] == "probe" and how["patients"] == 1
    assert set(how["seconds"]) == {"combo-code", "none"} and all(s > 0 for s in how["seconds"].values())
    faster = min(how["seconds"], key=lambda k: (how["seconds"][k], k != "none"))
    assert how["observation_code_param"] == faster
    # the unfiltered answer holds the filtered one's Observations and those outside the study
    assert how["resources"]["none"] > how["resources"]["combo-code"] > 0
    assert requests["shared"]["probe"] in (2, 4)  # one pair, or two when the first was close
    assert requests["total"] == server.stats()["requests"]["total"]
    same_way = live(server, tmp_path, how["observation_code_param"])
    assert quarantine_and_coverage(out) == quarantine_and_coverage(same_way)
    assert server_read_crfs(out) == server_read_crfs(file_out)


def test_check_prints_the_timing(trial: tuple[ServerHandle, Path], tmp_path: Path) -> None:
    server, _ = trial
    writes = server.stats()["writes"]["total"]
    result = CliRunner().invoke(main, ["check", "--source", server.base_url])
    assert result.exit_code == 0, result.output
    [line] = [x for x in result.output.splitlines() if x.startswith("observations")]
    assert "filtered (combo-code)" in line and "unfiltered (none)" in line and "is faster" in line
    assert "`observation_code_param: auto` reads with it" in line
    config = write_config(tmp_path / "set.yaml", "observation_code_param: code\n")
    result = CliRunner().invoke(main, ["check", "--source", server.base_url, "--config", str(config)])
    assert "the config sets observation_code_param: code (auto would read with" in result.output
    assert server.stats()["writes"]["total"] == writes


def test_check_without_subjects_on_the_server_says_so(tmp_path: Path) -> None:
    """A run against it would stop (no ResearchStudy of the study): an error of check, unless the site enrols
    from its roster CSV (test_preflight.py has both)."""
    with start_fhir_server() as empty:
        result = CliRunner().invoke(main, ["check", "--source", empty.base_url])
    assert result.exit_code == 1, result.output
    assert "observations  not timed: no subject of study" in result.output


def _listed_codes(output: str) -> list[tuple[str, int, int]]:
    """(system|code, observations, subjects) of each code line `check --codes` printed."""
    lines = output.split("observations  subjects  code  (display)\n")[1].splitlines() if "(display)" in output else []
    rows = [r for r in (line.split() for line in lines) if len(r) >= 3 and r[0].isdigit() and r[1].isdigit()]
    return [(r[2], int(r[0]), int(r[1])) for r in rows]


def test_check_codes_lists_the_codes_a_file_run_finds_unmapped(trial: tuple[ServerHandle, Path],
                                                               tmp_path: Path) -> None:
    """A server run asks for the study's codes only, so its run report never lists a site's unmapped codes:
    `check --codes` reads every Observation of the enrolled subjects unfiltered and lists what the run of the
    same data as an export folder lists (codes, counts, order); the adapter's own results are not input; a
    local code is listed until the site overlay maps it; nothing is written."""
    _, file_out = trial
    expected = [(f"{c['system']}|{c['code']}", c["count"]) for c in report(file_out)["coverage"]["unmapped_codes"]]
    assert {code for code, _ in expected} == set(OUTSIDE_STUDY)
    with start_fhir_server() as fresh:
        load_feed(fresh.base_url, file_out.parent / "feed")
        cli_run(fresh.base_url, tmp_path / "posted", "--post")  # the server now holds the adapter's results too
        subject = json.loads((file_out.parent / "feed" / "ResearchSubject.ndjson").read_text().splitlines()[0])
        local = {"resourceType": "Observation", "status": "final", "effectiveDateTime": "2024-05-02",
                 "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1.2", "code": "UCAST-HG",
                                      "display": "Heme-granular casts"}]},
                 "subject": subject["individual"], "valueQuantity": {"value": 1}}
        httpx.post(f"{fresh.base_url}/Observation", json=local).raise_for_status()
        writes = fresh.stats()["writes"]["total"]
        result = CliRunner().invoke(main, ["check", "--source", fresh.base_url, "--codes"])
        assert result.exit_code == 0, result.output
        listed = _listed_codes(result.output)
        assert [(c, n) for c, n, _ in listed] == [*expected, ("urn:oid:2.16.840.1.113883.3.9999.1.2|UCAST-HG", 1)]
        assert dict((c, s) for c, _, s in listed)["http://loinc.org|8302-2"] == SUBJECTS  # a height per subject
        assert "(Heme-granular casts)" in result.output and f"of {SUBJECTS} enrolled subjects" in result.output
        with_site = CliRunner().invoke(main, ["check", "--source", fresh.base_url, "--codes", "--site",
                                              "example-site"])
        assert [(c, n) for c, n, _ in _listed_codes(with_site.output)] == expected  # its overlay maps UCAST-HG
        assert fresh.stats()["writes"]["total"] == writes
        # a subject whose Observations cannot be read (503 after the retries) is named; the others are surveyed
        victim = subject["individual"]["reference"].split("/")[1]
        fresh.set_faults(fault_match=victim)
        config = write_config(tmp_path / "fast.yaml", "  max_attempts: 2\n")
        partial = CliRunner().invoke(main, ["check", "--source", fresh.base_url, "--codes", "--config", str(config)])
        fresh.clear_faults()
        sid = subject["identifier"][0]["value"]
        assert f"Observations of {SUBJECTS - 1} enrolled subjects read unfiltered" in partial.output
        assert f"(1 subject(s) not read: {sid}; {sid}: " in partial.output and "503" in partial.output


def test_check_codes_on_a_folder_says_where_its_unmapped_codes_are(trial: tuple[ServerHandle, Path]) -> None:
    _, file_out = trial
    result = CliRunner().invoke(main, ["check", "--source", str(file_out.parent / "feed"), "--codes"])
    assert result.exit_code == 0, result.output
    assert "codes         --codes reads a FHIR server (--source URL); for a folder of files, run it and read " \
           "run-report.json -> coverage.unmapped_codes" in result.output
