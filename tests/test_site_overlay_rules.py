"""Site overlays add, and change a study's conversion only explicitly; --site takes a name; --config for a
folder is reported; converted values keep their precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.job.pipeline import mapping_fingerprint
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.observations import ObservationMapper
from fhir_adapter.study.load import load_study
from fhir_adapter.study.yamlfile import MappingError

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "mappings" / "lcar-aio"


def _overlay(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text("site: s\nitems:\n" + body)
    return p


def test_a_factor_the_study_defines_cannot_change_quietly(tmp_path: Path) -> None:
    site = _overlay(tmp_path, '  upcr:\n    factors: {"mg/mmol": 0.0088}\n')
    with pytest.raises(MappingError, match="override_factors") as err:
        load_study(STUDY, site)
    assert f"{site}:4" in str(err.value) and str(1 / 113.12) in str(err.value)
    res = CliRunner().invoke(main, ["check", "--site", str(site)])
    assert res.exit_code == 1 and "mapping ok" not in res.stdout


def test_the_same_factor_and_new_units_are_additions(tmp_path: Path) -> None:
    site = _overlay(tmp_path, '  upcr:\n    factors: {"mg/mmol": 0.00884017, "ug/mmol": 0.00000884017}\n')
    st = load_study(STUDY, site)
    assert st.items["upcr"].factors["ug/mmol"] == pytest.approx(8.84017e-6) and st.overrides == []


def test_an_explicit_override_is_applied_and_reported(tmp_path: Path) -> None:
    site = _overlay(tmp_path, '  upcr:\n    override_factors: {"mg/mmol": 0.0088}\n')
    st = load_study(STUDY, site)
    assert st.items["upcr"].factors["mg/mmol"] == 0.0088
    (o,) = st.overrides
    assert o["item"] == "upcr" and o["study_factor"] == 1 / 113.12 and o["site_factor"] == 0.0088
    res = CliRunner().invoke(main, ["check", "--site", str(site)])
    assert res.exit_code == 0 and f"override item upcr: factor for mg/mmol {1 / 113.12} (study) -> 0.0088" in res.stdout
    with pytest.raises(MappingError, match="defines no factor"):
        load_study(STUDY, _overlay(tmp_path, '  upcr:\n    override_factors: {"ug/mmol": 1.0}\n'))


def test_the_override_is_in_the_run_report_and_settings(tmp_path: Path) -> None:
    from fhir_adapter.synth import write_feed

    write_feed(tmp_path / "feed", subjects=1, seed=5)
    site = _overlay(tmp_path, '  upcr:\n    override_factors: {"mg/mmol": 0.0088}\n')
    res = CliRunner().invoke(main, ["run", "--source", str(tmp_path / "feed"), "--out", str(tmp_path / "out"),
                                    "--site", str(site)])
    assert res.exit_code in (0, 2), res.output
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    assert report["site_overrides"][0]["site_factor"] == 0.0088
    study = json.loads((tmp_path / "out" / "results" / "study.json").read_text())
    assert study["settings"]["site_overrides"][0]["unit"] == "mg/mmol"


def test_site_by_name(tmp_path: Path) -> None:
    st = load_study(STUDY, Path("example-site"))
    assert st.site == "example-site"
    res = CliRunner().invoke(main, ["check", "--site", "example-site"])
    assert res.exit_code == 0 and "site example-site" in res.stdout
    bad = CliRunner().invoke(main, ["check", "--site", "no-such-site"])
    assert bad.exit_code == 1 and "no such site overlay" in bad.stderr and "example-site" in bad.stderr


def test_config_with_a_folder_source_is_a_reported_warning(tmp_path: Path) -> None:
    from fhir_adapter.synth import write_feed

    write_feed(tmp_path / "feed", subjects=1, seed=5)
    cfg = tmp_path / "adapter.yaml"
    cfg.write_text("client: {max_concurrency: 2}\n")
    res = CliRunner().invoke(main, ["run", "--source", str(tmp_path / "feed"), "--out", str(tmp_path / "out"),
                                    "--config", str(cfg)])
    assert res.exit_code in (0, 2) and "its server settings are ignored" in res.stderr
    assert "writeback_reviewed_only" not in res.stderr
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    assert any(w.get("rule") == "config-ignored" for w in report["warnings"])
    assert any(e["resource"]["resourceType"] == "Observation" for p in (tmp_path / "out" / "writeback").glob("*.json")
               for e in json.loads(p.read_text()).get("entry", []))
    # a write-back setting is not a server setting: it holds for OUT/writeback, and the warning says so
    cfg.write_text("writeback_reviewed_only: true\n")
    res = CliRunner().invoke(main, ["run", "--source", str(tmp_path / "feed"), "--out", str(tmp_path / "out"),
                                    "--config", str(cfg)])
    assert "its writeback_reviewed_only: true applies (OUT/writeback holds reviewed results only)" in res.stderr
    bundles = [json.loads(p.read_text()) for p in (tmp_path / "out" / "writeback").glob("*.json")]
    assert not [e for b in bundles for e in b.get("entry", []) if e["resource"]["resourceType"] == "Observation"]


def _upcr(value: float, unit: str) -> dict[str, object]:
    return {"resourceType": "Observation", "id": "u1", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "2890-2"}]},
            "effectiveDateTime": "2024-03-01T08:00:00Z",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def test_converted_values_are_rounded_to_the_declared_precision() -> None:
    """Issue 16: UPCR converted from mg/mmol is stored at the item's precision (0.09, not 0.090169734); the
    shipped precision is fine enough that no rounding crosses a strict threshold (504 mg/g stays 0.504 > 0.5)."""
    st = load_study(STUDY)
    (f,) = ObservationMapper(st, RunLog()).map([_upcr(10.2, "mg/mmol")], "S")
    assert f.value == 0.09  # 10.2 / 113.12 = 0.0901697…, at upcr's decimals: 3
    (g,) = ObservationMapper(st, RunLog()).map([_upcr(0.123456, "mg/mg")], "S")
    assert g.value == 0.123456  # a value in the CRF unit is kept as sent
    (h,) = ObservationMapper(st, RunLog()).map([_upcr(504, "mg/g")], "S")
    assert h.value == 0.504  # not 0.50: the declared precision keeps what the lab measured


def test_a_ratio_factor_is_the_exact_quotient() -> None:
    st = load_study(STUDY)
    factor = st.items["upcr"].factors["mg/mmol"]
    assert factor == 1 / 113.12 and 56.56 * factor == 0.5, \
        "÷ 113.12 exactly (docs/clinical-rules.md#renal-units): a rounded 0.00884017 gives 0.5000000152 > 0.5"


def test_an_item_without_decimals_keeps_twelve_significant_digits(tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(STUDY, study)
    items = study / "items.yaml"
    text = items.read_text()
    assert 'bounds: [0, 40], decimals: 3}' in text
    items.write_text(text.replace('"1000/113.12"}, bounds: [0, 40], decimals: 3}', '"1000/113.12"}, bounds: [0, 40]}'))
    st = load_study(study)
    assert st.items["upcr"].decimals is None
    (f,) = ObservationMapper(st, RunLog()).map([_upcr(10.2, "mg/mmol")], "S")
    assert f.value == 0.0901697312588



def test_a_site_factor_equal_to_the_study_s_to_six_digits_keeps_the_study_s_exact_one(tmp_path: Path) -> None:
    """An overlay repeating the rounded 0.00884017 for mg/mmol is an addition, not an override: the study's
    exact 1/113.12 stays in force (else 56.56 mg/mmol would score proteinuria again)."""
    st = load_study(STUDY, _overlay(tmp_path, '  upcr:\n    factors: {"mg/mmol": 0.00884017}\n'))
    assert st.items["upcr"].factors["mg/mmol"] == 1 / 113.12 and st.overrides == []


@pytest.mark.parametrize("factor", ['"1/0"', '"0/5"', "0", "-0.5"])
def test_a_factor_must_be_a_positive_number(tmp_path: Path, factor: str) -> None:
    site = _overlay(tmp_path, f'  upcr:\n    factors: {{"ug/mmol": {factor}}}\n')
    with pytest.raises(MappingError) as err:
        load_study(STUDY, site)
    assert f"{site}:" in str(err.value)


def _obs(code: str, value: float, unit: str, system: str = "http://loinc.org") -> dict[str, object]:
    return {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": "2024-03-01T08:00:00Z",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def test_the_declared_precision_rounds_half_up_once() -> None:
    """Platelets keep three decimals (99,996/µL stays below 100 × 10⁹/L); PGA is not rounded by the mapping, its
    derivation rounds once (a 34.9 mm VAS is 1.047, PGA 1.0 — 1.05 first would have made it 1.1)."""
    st = load_study(STUDY)
    mapper = ObservationMapper(st, RunLog())
    (plt,) = mapper.map([_obs("777-3", 99996, "/uL")], "S")
    assert plt.value == 99.996
    (pga,) = mapper.map([_obs("sle-pga", 34.9, "mm", "https://fhir-adapter.org/fhir/CodeSystem/clinical-input")], "S")
    assert pga.value == 1.047
    (wbc,) = mapper.map([_obs("6690-2", 2999.5, "/uL")], "S")
    assert wbc.value == 3.0  # 2.9995 half up at three decimals (Python's round gives 2.999 or 3.0 by the float)


def test_the_mapping_fingerprint_is_the_overlays_content_not_how_its_path_is_spelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--since last reads everyone in full when the mapping changed (docs/cli.md); a scheduler naming the overlay
    by its absolute path and a person by a relative one must not make every run a full one."""
    overlay = ROOT / "mappings" / "sites" / "example-site.yaml"
    monkeypatch.chdir(ROOT)
    relative = load_study(ROOT / "mappings" / "lcar-aio", Path("mappings/sites/example-site.yaml"))
    absolute = load_study(ROOT / "mappings" / "lcar-aio", overlay)
    assert mapping_fingerprint(relative) == mapping_fingerprint(absolute)
    changed = tmp_path / "site.yaml"
    changed.write_text(overlay.read_text() + "\n# corrected\n")
    assert mapping_fingerprint(load_study(ROOT / "mappings" / "lcar-aio", changed)) != mapping_fingerprint(absolute)
