"""Mapping files as data: the site overlay adds without copying, and broken files are refused at load
time with the file, the line and the reason."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.observations import ObservationMapper
from fhir_adapter.study.load import load_study
from fhir_adapter.study.yamlfile import MappingError

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "mappings" / "lcar-aio"
OVERLAY = ROOT / "mappings" / "sites" / "example-site.yaml"
LOCAL = "urn:oid:2.16.840.1.113883.3.9999.1.2"


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "study"
    shutil.copytree(STUDY, dst)
    return dst


def _edit(path: Path, old: str, new: str) -> int:
    """Replace ``old`` (once) and return the 1-based line where ``new`` starts."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return text[: text.index(new)].count("\n") + 1


def _line_of(path: Path, needle: str) -> int:
    text = path.read_text(encoding="utf-8")
    return text[: text.index(needle)].count("\n") + 1


def _refused(study: Path, site: Path | None = None) -> MappingError:
    with pytest.raises(MappingError) as exc:
        load_study(study, site)
    return exc.value


# -- the example overlay ------------------------------------------------------------------------------
def test_overlay_adds_codes_and_units_without_copying_the_study_mapping() -> None:
    base = load_study(STUDY)
    site = load_study(STUDY, OVERLAY)
    assert site.site == "example-site" and site.info.timezone == "Europe/Berlin"
    assert site.code_systems["exlab"] == LOCAL and "exlab" not in base.code_systems
    assert site.code_index[(LOCAL, "UCAST-HG")] == "urine_heme_granular_casts"
    assert site.code_index[(LOCAL, "PLT")] == "platelets"
    plt, plt0 = site.items["platelets"], base.items["platelets"]
    assert plt.accept_units == (*plt0.accept_units, "/nL") and plt.unit == plt0.unit == "10*9/L"
    assert plt.codes == (*plt0.codes, "exlab|PLT"), "study codes kept, local code added"
    assert site.items["ferritin"].factors == {**base.items["ferritin"].factors, "pmol/L": 0.445}
    assert set(base.code_index) < set(site.code_index)
    assert len(OVERLAY.read_text().splitlines()) < 40, "an overlay holds only the additions"
    for item_id, item in base.items.items():
        other = site.items[item_id]
        assert (other.unit, other.select, other.bounds, other.domain) == (
            item.unit,
            item.select,
            item.bounds,
            item.domain,
        )


def test_overlay_codes_and_units_feed_the_crf() -> None:
    study = load_study(STUDY, OVERLAY)
    ucum = "http://unitsofmeasure.org"

    def o(oid: str, system: str, code: str, value: float, unit: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-05T09:00:00+01:00",
            "valueQuantity": {"value": value, "unit": unit, "system": ucum, "code": unit},
        }

    log = RunLog()
    found = ObservationMapper(study, log).map(
        [
            o("a", LOCAL, "UCAST-HG", 2, "/[LPF]"),
            o("b", LOCAL, "PLT", 85, "/nL"),
            o("c", "http://loinc.org", "2276-4", 224.7, "pmol/L"),
        ],
        "T-1",
    )
    by_item = {f.item: f for f in found}
    assert not log.quarantine
    assert by_item["urine_heme_granular_casts"].value == 2
    assert by_item["platelets"].value == pytest.approx(85) and by_item["platelets"].unit == "10*9/L"
    assert by_item["ferritin"].value == pytest.approx(100, rel=1e-3)


# -- refused at load time, with file and line --------------------------------------------------------------
def test_unknown_code_system(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    line = _edit(study / "items.yaml", '"loinc|718-7"', '"loinx|718-7"')
    err = _refused(study)
    assert err.file.endswith("items.yaml") and err.line == line
    assert "unknown code system 'loinx'" in err.reason


def test_unknown_item_in_an_overlay(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: x\nitems:\n  platelet:\n    codes: ['loinc|999-1']\n")
    err = _refused(STUDY, site)
    assert err.file.endswith("site.yaml") and err.line == 3 and "unknown item 'platelet'" in err.reason


@pytest.mark.parametrize("zone", ["Mars/Olympus", "+08:00", "europe/berlin", "'Europe/Berlin '", "''"])
def test_a_site_time_zone_that_is_no_zone_is_refused_at_its_line(tmp_path: Path, zone: str) -> None:
    """It was an internal error (the study's info validated again outside the overlay's checks), or for '' UTC
    silently."""
    site = tmp_path / "site.yaml"
    site.write_text(f"site: x\ntimezone: {zone}\n")
    err = _refused(STUDY, site)
    assert err.file.endswith("site.yaml") and err.line == 2 and "unknown time zone" in err.reason


def test_a_key_given_twice_is_refused_not_kept_last(tmp_path: Path) -> None:
    """YAML keeps the second of two equal keys silently: a second timezone moved Day 1 to another zone unseen."""
    site = tmp_path / "site.yaml"
    site.write_text("site: x\ntimezone: Europe/Berlin\ncode_systems: {}\ntimezone: Pacific/Kiritimati\n")
    err = _refused(STUDY, site)
    assert err.file.endswith("site.yaml") and err.line == 4
    assert "'timezone' is given twice (lines 2 and 4)" in err.reason


def test_a_merged_key_overridden_beside_its_merge_is_no_key_given_twice(tmp_path: Path) -> None:
    """`<<: *defaults` then `unit:` overrides the merged unit, as YAML means it (the constructor copies the merged
    keys in beside it: checked on the tree as written)."""
    from fhir_adapter.study.yamlfile import read_yaml

    path = tmp_path / "m.yaml"
    path.write_text("defaults: &d\n  unit: mg/dL\n  select: closest\nitems:\n  creat:\n    <<: *d\n    unit: umol/L\n")
    assert read_yaml(path).data["items"]["creat"] == {"unit": "umol/L", "select": "closest"}


def test_a_site_overlay_that_is_not_utf8_is_refused_at_its_line(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_bytes("site: x\n# M\u00fcller\ntimezone: UTC\n".encode("latin-1"))
    err = _refused(STUDY, site)
    assert err.file.endswith("site.yaml") and err.line == 2 and "not UTF-8" in err.reason


def test_unknown_item_in_the_schedule(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    _edit(study / "schedule.yaml", "unscheduled_items: [temperature,", "unscheduled_items: [temperatur,")
    err = _refused(study)
    assert err.file.endswith("schedule.yaml") and err.line == _line_of(
        study / "schedule.yaml", "unscheduled_items:"
    )
    assert "unknown item 'temperatur'" in err.reason


def test_unknown_key(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    line = _edit(
        study / "items.yaml", "  ch50:        {domain: LB,", "  ch50:        {domian: LB, domain: LB,"
    )
    err = _refused(study)
    assert err.file.endswith("items.yaml") and err.line == line and "unknown key 'domian'" in err.reason


def test_a_misspelt_required_key_is_named_with_the_key_it_meant_and_the_keys_that_go_there(tmp_path: Path) -> None:
    """A typo in a required key makes both an unknown and a missing key: the unknown one is the mistake; the fix
    names the key it likely meant, the keys that go there and the reference of the file's keys."""
    study = _copy(tmp_path)
    line = _edit(study / "items.yaml", "  ch50:        {domain: LB,", "  ch50:        {domian: LB,")
    err = _refused(study)
    assert err.line == line and err.reason == "unknown key 'domian'"
    assert err.fix.startswith("did you mean 'domain'? the keys here are domain, label, testcd, codes,")
    assert "docs/study-files.md#itemsyaml" in err.fix


def test_an_aliased_key_is_named_as_the_file_writes_it(tmp_path: Path) -> None:
    """medications.yaml writes `class:` (the model's field is drug_class): the hint and the reference say `class`."""
    study = _copy(tmp_path)
    _edit(study / "medications.yaml", "    class: antimalarial", "    clas: antimalarial")
    err = _refused(study)
    assert err.reason == "unknown key 'clas'" and err.fix.startswith("did you mean 'class'?")
    assert "drug_class" not in err.fix
    from fhir_adapter.study import keys_doc

    assert "| `drugs.<text>.class` |" in keys_doc.render()


def test_a_value_error_points_to_the_reference_of_the_file_s_keys(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    text = (study / "escalation.yaml").read_text(encoding="utf-8")
    (study / "escalation.yaml").write_text(re.sub(r"(?m)^method: .*$", "method: 4+4", text), encoding="utf-8")
    err = _refused(study)
    assert err.file.endswith("escalation.yaml") and "method: Input should be '3+3' or 'boin'" in err.reason
    assert err.fix == "see docs/study-files.md#escalationyaml for what this key takes"


def test_an_item_label_longer_than_sdtm_test_allows_is_refused_at_its_line(tmp_path: Path) -> None:
    """--TEST holds at most 40 characters (SDTMIG): a longer label was cut mid-word in the CSV and Dataset-JSON
    while the ODM decode kept it whole."""
    study = _copy(tmp_path)
    line = _edit(study / "items.yaml", "label: Anti-CAR antibodies (ADA),",
                 "label: Anti-CAR antibodies (anti-drug antibodies),")
    err = _refused(study)
    assert err.file.endswith("items.yaml") and err.line == line
    assert "items.anti_car_antibody.label: String should have at most 40 characters" in err.reason


def test_the_reference_of_the_study_files_is_current_and_has_every_anchor_an_error_names() -> None:
    from fhir_adapter.study import keys_doc

    text = keys_doc.DOC.read_text(encoding="utf-8")
    assert text == keys_doc.render(), "docs/study-files.md is stale: run python -m fhir_adapter.study.keys_doc"
    headings = {keys_doc.anchor(line.removeprefix("### ").strip()).replace(" ", "-")
                for line in text.splitlines() if line.startswith("### ")}
    assert {keys_doc.anchor(p.name) for p in STUDY.glob("*.yaml")} | {keys_doc.SITE_ANCHOR} <= headings


def test_unknown_key_in_an_overlay(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: x\nitems:\n  platelets:\n    codes: ['loinc|999-1']\n    unit: mg/dL\n")
    err = _refused(STUDY, site)
    assert err.line == 5 and "unknown key 'unit'" in err.reason
    assert err.fix.endswith("(items.platelets.unit; docs/study-files.md#site-overlay)")
    assert "the keys here are codes, accept_units," in err.fix


def test_inconvertible_unit(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    old = 'accept_units: ["mg/L"], factors: {"umol/L"'
    line = _edit(study / "items.yaml", old, 'accept_units: ["mg/L", "mmol/L/s"], factors: {"umol/L"')
    err = _refused(study)
    assert err.file.endswith("items.yaml") and err.line == line and "mmol/L/s" in err.reason


def test_inconvertible_unit_in_an_overlay_names_the_overlay_line(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: x\nitems:\n  platelets:\n    accept_units:\n      - /nL\n      - mg/dL\n")
    err = _refused(STUDY, site)
    assert err.file.endswith("site.yaml") and err.line == 6 and "mg/dL" in err.reason


CRP_SELECT = 'accept_units: ["mg/dL"], select: max, bounds: [0, 1000], decimals: 2}'


def test_select_worst_needs_the_items_direction(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    _edit(study / "items.yaml", CRP_SELECT, CRP_SELECT.replace("select: max", "select: worst"))
    err = _refused(study)
    assert err.file.endswith("items.yaml") and err.line == _line_of(study / "items.yaml", "  crp:")
    assert "items.crp" in err.reason and "select: worst needs" in err.reason
    assert "`worse: high`" in err.reason and "`worse: low`" in err.reason


def test_select_worst_with_its_direction_loads(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    _edit(study / "items.yaml", CRP_SELECT, CRP_SELECT.replace("select: max", "select: worst, worse: high"))
    crp = load_study(study).items["crp"]
    assert (crp.select, crp.worse) == ("worst", "high")


@pytest.mark.parametrize(("edit", "said"), [
    ("select: max, worse: high", "`worse` is read only by select: worst"),
    ("select: maximum", "items.crp.select"),
])
def test_a_direction_without_worst_or_an_unknown_rule_is_refused(tmp_path: Path, edit: str, said: str) -> None:
    study = _copy(tmp_path)
    _edit(study / "items.yaml", CRP_SELECT, CRP_SELECT.replace("select: max", edit))
    err = _refused(study)
    assert err.file.endswith("items.yaml") and err.line is not None and said in err.reason


def test_select_worst_is_for_quantities(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    old = 'codes: ["sledai|fever"], value: boolean, select: last}'
    _edit(study / "items.yaml", old, old.replace("select: last", "select: worst, worse: high"))
    err = _refused(study)
    assert "sledai2k.fever" in err.reason and "compares quantities" in err.reason


def test_overlapping_windows(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    line = _edit(study / "schedule.yaml", "day: 8,   window: [6, 10]}", "day: 8,   window: [5, 10]}")
    err = _refused(study)
    assert err.file.endswith("schedule.yaml") and err.line == line
    assert "D4 and W1 overlap" in err.reason


@pytest.mark.parametrize(("old", "new", "said"), [
    ("day: -28, window: [-56, -11]}", "day: -28, window: [-56, -11], baseline: true}",
     "visits SCR, BL are all flagged baseline: true"),
    ("day: 29,  window: [26, 32]}", "day: 29,  window: [26, 32], baseline: true}", "visits BL, W4 are all flagged"),
])
def test_one_baseline_visit_at_most(tmp_path: Path, old: str, new: str, said: str) -> None:
    """baseline: true names the one visit the protocol calls baseline: two flags are a mistake said, not ignored."""
    study = _copy(tmp_path)
    _edit(study / "schedule.yaml", old, new)
    err = _refused(study)
    assert err.file.endswith("schedule.yaml") and said in err.reason


def test_a_baseline_visit_after_day_1_is_refused(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    _edit(study / "schedule.yaml", "window: [-10, -6], baseline: true}", "window: [-10, -6]}")
    _edit(study / "schedule.yaml", "day: 29,  window: [26, 32]}", "day: 29,  window: [26, 32], baseline: true}")
    err = _refused(study)
    assert "visit W4 is flagged baseline: true but its window starts after Day 1" in err.reason


def test_bad_threshold_unit(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    old = '{item: platelets, op: "<", value: 100, unit: "10*9/L"}'
    line = _edit(study / "sledai2k.yaml", old, '{item: platelets, op: "<", value: 100, unit: "mg/dL"}')
    err = _refused(study)
    assert err.file.endswith("sledai2k.yaml") and err.line == line and "threshold unit" in err.reason


def test_duplicate_testcd(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    line = _edit(
        study / "items.yaml", "label: Lymphocytes, testcd: LYM,", "label: Lymphocytes, testcd: NEUT,"
    )
    err = _refused(study)
    assert err.line == line and "testcd NEUT is already used by item 'neutrophils'" in err.reason


def test_error_message_names_file_line_reason_and_fix(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    line = _edit(study / "items.yaml", '"loinc|718-7"', '"loinx|718-7"')
    msg = str(_refused(study))
    assert msg.startswith(f"{study / 'items.yaml'}:{line}: unknown code system") and " — use one of " in msg


# -- UCUM annotations ({1.73_m2}, {creat}) are read as 1: an accepted unit may not differ by one -----------
def test_an_overlay_accepting_a_non_indexed_clearance_as_egfr_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: x\nitems:\n  egfr:\n    accept_units: ['mL/min']\n")
    err = _refused(STUDY, site)
    assert err.file.endswith("site.yaml") and err.line == 4
    assert "item egfr: 'mL/min' and the CRF unit 'mL/min/{1.73_m2}' differ by an annotation" in err.reason
    assert "remove 'mL/min' from accept_units" in err.fix and "`factors` of item egfr" in err.fix


def test_an_annotation_only_difference_in_items_yaml_is_refused_at_its_line(tmp_path: Path) -> None:
    study = _copy(tmp_path)
    old = 'unit: "mL/min/{1.73_m2}", bounds: [0, 250]}'
    line = _edit(study / "items.yaml", old, 'unit: "mL/min/{1.73_m2}",\n  accept_units: ["mL/min"], bounds: [0, 250]}')
    err = _refused(study)
    assert err.file.endswith("items.yaml") and err.line == line + 1 and "item egfr: 'mL/min'" in err.reason


def test_an_annotated_unit_takes_an_explicit_factor(tmp_path: Path) -> None:
    """ug/mg{creat} is the CRF's mg/mg ratio in other prefixes: refused under accept_units, taken as a factor."""
    site = tmp_path / "site.yaml"
    site.write_text("site: x\nitems:\n  upcr:\n    accept_units: ['ug/mg{creat}']\n")
    assert "'ug/mg{creat}' and the CRF unit 'mg/mg'" in _refused(STUDY, site).reason
    site.write_text("site: x\nitems:\n  upcr:\n    factors: {'ug/mg{creat}': 0.001}\n")
    study = load_study(STUDY, site)
    o = {"resourceType": "Observation", "id": "u1", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "2890-2"}]},
         "effectiveDateTime": "2024-03-05", "valueQuantity": {"value": 650, "code": "ug/mg{creat}"}}
    (f,) = ObservationMapper(study, RunLog()).map([o], "T-001")
    assert (f.item, f.value, f.unit) == ("upcr", 0.65, "mg/mg")


def test_the_shipped_studies_give_upcrs_annotated_units_as_factors() -> None:
    for name in ("lcar-aio", "syn-ln"):
        upcr = load_study(ROOT / "mappings" / name).items["upcr"]
        assert not [u for u in upcr.accept_units if "{" in u], name
        assert (upcr.factors["mg/g{creat}"], upcr.factors["g/g{creat}"]) == (0.001, 1.0)
