"""docs/integrator-guide.md: its config-key and environment-variable tables are generated from the settings
models and fail this test when stale."""

from __future__ import annotations

import re
from pathlib import Path

from fhir_adapter.cli import docgen
from fhir_adapter.fhir.server_config import ServerConfig
from fhir_adapter.fhir.settings import ClientSettings
from fhir_adapter.study.load import load_study

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "integrator-guide.md"


def test_the_generated_tables_are_current() -> None:
    assert docgen.main(["--check"]) == 0, "run `python -m fhir_adapter.cli.docgen` and commit docs/integrator-guide.md"


def test_a_stale_table_is_detected() -> None:
    text = GUIDE.read_text()
    stale = text.replace("`client.max_concurrency`", "`client.max_concurrency_old`")
    assert stale != text and docgen.render(stale) == text


def test_every_setting_is_documented_with_a_meaning() -> None:
    table = docgen.config_table()
    cells = [re.split(r"(?<!\\)\|", r) for r in table.splitlines()[2:]]
    rows = {c[1].strip().strip("`"): c[4].strip() for c in cells}
    expected = {k for k in ServerConfig.model_fields if k != "client"} | \
        {f"client.{k}" for k in ClientSettings.model_fields}
    assert set(rows) == expected
    assert all(rows.values()), [k for k, v in rows.items() if not v]


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    read = set()
    for path in (ROOT / "fhir_adapter").rglob("*.py"):
        read |= set(re.findall(r"\"(FHIR_ADAPTER_[A-Z0-9_]+)\"", path.read_text()))
    documented = set(re.findall(r"`(FHIR_ADAPTER_[A-Z0-9_]+)`", docgen.env_table()))
    assert read and read <= documented, read - documented


def test_the_guide_covers_what_an_integrator_needs() -> None:
    text = GUIDE.read_text()
    for part in ("_include=ResearchSubject:individual", "combo-code", "system/Observation.rs", "system|value",
                 "infusion_date", "--since last", "OnCalendar", "crontab", "--dry-run", "Go-live checklist",
                 "| 64 |", "| 3 |"):
        assert part in text, part


def _section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def test_the_guide_lists_every_resource_type_the_adapter_reads() -> None:
    """§2's table names (first column) and §3's scopes cover each type the code searches, Bulk-exports or reads
    by id (fhir_adapter/source: the roster, SUBJECT_SEARCHES, SHARED_TYPES) and Group for a Group export."""
    text = GUIDE.read_text()
    types = docgen.read_types()
    assert {"Condition", "AllergyIntolerance", "Immunization", "Specimen", "Organization", "Location"} <= set(types)
    rows = [line.split("|")[1] for line in _section(text, "## 2. Resource types").splitlines()
            if line.startswith("| ") and not line.startswith("| resource")]
    named = set(re.findall(r"`([A-Z][A-Za-z]+)[`/]", " ".join(rows)))
    assert set(types) | {"Group"} <= named, set(types) - named
    scopes = set(re.findall(r"system/([A-Za-z]+)\.rs", _section(text, "## 3. SMART")))
    assert set(types) | {"Group"} <= scopes, set(types) - scopes


def _block(text: str, heading: str, lang: str) -> str:
    return _section(text, heading).split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_the_site_overlay_example_loads(tmp_path: Path) -> None:
    """§7's overlay, copied as it is, is a site overlay `check --site` reads (`mapping ok`, go-live step 1)."""
    overlay = tmp_path / "my-hospital.yaml"
    overlay.write_text(_block(GUIDE.read_text(), "## 7. Site overlay essentials", "yaml"))
    study = load_study(ROOT / "mappings" / "lcar-aio", overlay)
    assert study.site == "my-hospital" and study.info.timezone == "Europe/Berlin"
    assert study.code_index[("urn:oid:2.16.840.1.113883.3.9999.1.2", "PLT")] == "platelets"


def test_the_overlay_of_the_mappings_readme_loads(tmp_path: Path) -> None:
    """mappings/README.md "Adding a site: the overlay", copied as it is, loads with the study (its meddra_dir names
    the site's own MedDRA release: pointed at a made-up one in the same layout)."""
    from tests.export.test_cdisc_ig import synthetic_meddra

    text = _block((ROOT / "mappings" / "README.md").read_text(), "## Adding a site: the overlay", "yaml")
    assert "/srv/meddra/27.1/MedAscii" in text
    overlay = tmp_path / "example.yaml"
    overlay.write_text(text.replace("/srv/meddra/27.1/MedAscii", str(synthetic_meddra(tmp_path / "meddra"))))
    study = load_study(ROOT / "mappings" / "lcar-aio", overlay)
    assert study.site == "example-site" and study.info.timezone == "Europe/Berlin"
    assert ("https://hospital.example.org/procedure-code", "CART-INF") in study.infusion_codes


def test_the_schedule_examples_request_every_scope_and_are_valid_unit_files() -> None:
    """§9's cron example asks for every reading scope of §3 and the write-back scopes its `--post` needs; its
    systemd unit has comments on their own lines only (systemd reads `KEY=value # …` as part of the value)."""
    text = GUIDE.read_text()
    cron = _block(text, "## 9. Running on a schedule", "cron")
    [scope_line] = [line for line in cron.splitlines() if line.startswith("FHIR_ADAPTER_SMART_SCOPE=")]
    asked = set(scope_line.split("=", 1)[1].split())
    needed = {f"system/{t}.rs" for t in docgen.read_types()} | {
        "system/Observation.cu", "system/Device.cu", "system/Provenance.c"}
    assert needed <= asked, needed - asked
    unit = _block(text, "## 9. Running on a schedule", "ini")
    assert not [line for line in unit.splitlines() if "=" in line and "#" in line.split("=", 1)[1]]
