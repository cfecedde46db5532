"""Endpoints are plug-ins the study names: discovery by entry point, lazy import, load errors, a third-party
endpoint end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from fhir_adapter.endpoints import registry
from fhir_adapter.endpoints.registry import Endpoint, StudyInput, SubjectInput
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.results.study_json import BASE_SUBJECT_KEYS
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study, load_study
from fhir_adapter.study.yamlfile import MappingError
from fhir_adapter.synth import write_feed

ROOT = Path(__file__).resolve().parent.parent
LCAR = ROOT / "mappings" / "lcar-aio"
BUILTIN = ("sledai2k", "pga", "lldas", "glucocorticoids", "renal", "immunology", "safety", "dlt", "escalation",
           "kinetics")


def study_folder(tmp: Path, endpoints: list[str], name: str = "study") -> Path:
    """A copy of the LCAR-AIO folder naming only ``endpoints`` and holding only their rule files."""
    folder = tmp / name
    shutil.copytree(LCAR, folder)
    for ep in BUILTIN:
        if ep not in endpoints:
            (folder / f"{ep}.yaml").unlink(missing_ok=True)
    text = (folder / "study.yaml").read_text(encoding="utf-8")
    (folder / "study.yaml").write_text(text.split("\nendpoints:")[0] + f"\nendpoints: {json.dumps(endpoints)}\n",
                                       encoding="utf-8")
    if "glucocorticoids" not in endpoints:  # medications.yaml then states the steroids' facts itself
        meds = load_study(LCAR).rules["medications"].model_dump(mode="json", by_alias=True)
        (folder / "medications.yaml").write_text(yaml.safe_dump(meds), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("endpoints-feed")
    write_feed(root / "feed", subjects=4, seed=7)
    return root / "feed"


def test_builtin_endpoints_are_found_by_entry_point() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group=registry.ENDPOINT_GROUP)}
    assert set(BUILTIN) <= set(eps)
    assert all(eps[n] == f"fhir_adapter.endpoints.{n}:ENDPOINT" for n in BUILTIN)
    codes = {c["code"] for c in json.loads((ROOT / "profiles" / "CodeSystem-results.json").read_text())["concept"]}
    for name in BUILTIN:
        ep = registry.get(name)
        assert ep.name == name and issubclass(ep.settings, BaseModel)
        assert set(ep.codes) <= codes, f"{name} writes codes the results CodeSystem does not define"
    assert registry.get("lldas").needs == ("sledai2k", "pga", "glucocorticoids")
    assert registry.get("escalation").level == "study"


def test_study_naming_some_endpoints_runs_only_those(tmp_path: Path, feed: Path) -> None:
    folder = study_folder(tmp_path, ["pga", "renal"])
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from fhir_adapter.job.pipeline import run
        from fhir_adapter.job.runlog import RunLog
        from fhir_adapter.source.files import FileSource
        from fhir_adapter.study.load import load_study
        log = RunLog()
        study = load_study(Path({str(folder)!r}))
        run(FileSource(Path({str(feed)!r}), log), study, Path({str(tmp_path / "out")!r}), log)
        ours = ("fhir_adapter.derive.", "fhir_adapter.endpoints.")
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(ours))))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert {m for m in imported if m.startswith("fhir_adapter.endpoints.")} == {
        "fhir_adapter.endpoints.registry", "fhir_adapter.endpoints.pga", "fhir_adapter.endpoints.renal"}
    assert {m for m in imported if m.startswith("fhir_adapter.derive.")} <= {
        "fhir_adapter.derive.pga", "fhir_adapter.derive.renal", "fhir_adapter.derive.baseline",
        "fhir_adapter.derive.compare"}
    doc = json.loads((tmp_path / "out" / "results" / "study.json").read_text())
    assert set(doc) == {"study", "generated_by", "endpoints", "settings", "subjects"}
    subject = doc["subjects"][0]
    assert "renal_response" in subject and "teae_count" not in subject and "dlt" not in subject
    visit = subject["visits"][0]
    assert {"pga", "pga_change", "upcr_mg_mg", "protein_24h_g"} <= set(visit) and "sledai2k" not in visit
    assert {"pga", "renal", "medications", "adverse_events"} <= set(doc["settings"]) and "lldas" not in doc["settings"]
    bundles = [json.loads(p.read_text()) for p in (tmp_path / "out" / "writeback").glob("*.json")]
    observations = [e["resource"] for b in bundles for e in b["entry"]
                    if e["resource"]["resourceType"] == "Observation"]
    assert observations == []  # PGA and renal write nothing back


def test_unknown_endpoint_is_a_load_error_with_its_line(tmp_path: Path) -> None:
    folder = study_folder(tmp_path, ["pga", "sledaii"])
    with pytest.raises(MappingError) as err:
        load_study(folder)
    assert err.value.file.endswith("study.yaml") and err.value.line is not None
    assert "unknown endpoint 'sledaii'" in str(err.value) and "sledai2k" in err.value.fix


def test_missing_rule_file_of_a_named_endpoint(tmp_path: Path) -> None:
    folder = study_folder(tmp_path, ["pga", "renal"])
    (folder / "renal.yaml").unlink()
    with pytest.raises(MappingError) as err:
        load_study(folder)
    assert err.value.file.endswith("renal.yaml") and "names the endpoint 'renal'" in err.value.reason
    assert "remove renal from the endpoints" in err.value.fix


def test_rule_file_of_an_unnamed_endpoint(tmp_path: Path) -> None:
    folder = study_folder(tmp_path, ["pga"])
    shutil.copy(LCAR / "kinetics.yaml", folder / "kinetics.yaml")
    with pytest.raises(MappingError) as err:
        load_study(folder)
    assert err.value.file.endswith("kinetics.yaml") and "does not name" in err.value.reason
    assert "add kinetics to the endpoints" in err.value.fix


def test_a_needed_endpoint_must_be_named(tmp_path: Path) -> None:
    folder = study_folder(tmp_path, ["pga", "lldas", "sledai2k"])
    with pytest.raises(MappingError, match="'lldas' needs glucocorticoids") as err:
        load_study(folder)
    assert err.value.file.endswith("study.yaml") and err.value.line is not None


def test_no_endpoints_key(tmp_path: Path) -> None:
    folder = study_folder(tmp_path, [])
    text = (folder / "study.yaml").read_text(encoding="utf-8")
    (folder / "study.yaml").write_text(text.split("\nendpoints:")[0] + "\n", encoding="utf-8")
    with pytest.raises(MappingError, match="names no endpoints") as err:
        load_study(folder)
    assert "endpoints: []" in err.value.fix


class CountSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    item: str


class CountResult(BaseModel):
    n: int


def _count(x: SubjectInput) -> CountResult:
    item = x.rules(CountSettings).item
    return CountResult(n=sum(1 for v in x.crf.visits if item in v.values))


def _count_total(x: StudyInput) -> dict[str, Any]:
    return {"visit_count_total": sum(r["visit_count"] for r in x.rows)}


COUNT = Endpoint(name="visit_count", settings=CountSettings, result=CountResult, needs=("pga",),
                 summary="visits with a value of one item", derive=_count,
                 subject_keys=lambda r: {"visit_count": r.n}, study_keys=_count_total)


@pytest.fixture
def registered() -> Iterator[None]:
    registry.register(COUNT)
    registry.register(Endpoint(name="cyc_a", settings=CountSettings, needs=("cyc_b",), level="study",
                               summary="a", study_keys=lambda x: {}))
    registry.register(Endpoint(name="cyc_b", settings=CountSettings, needs=("cyc_a",), level="study",
                               summary="b", study_keys=lambda x: {}))
    yield
    for name in ("visit_count", "cyc_a", "cyc_b"):
        registry.unregister(name)


def test_dependency_cycle_is_a_load_error(tmp_path: Path, registered: None) -> None:
    folder = study_folder(tmp_path, ["cyc_a", "cyc_b"])
    for n in ("cyc_a", "cyc_b"):
        (folder / f"{n}.yaml").write_text("item: pga\n", encoding="utf-8")
    with pytest.raises(MappingError, match="cycle: cyc_a -> cyc_b -> cyc_a") as err:
        load_study(folder)
    assert err.value.file.endswith("study.yaml")


def test_third_party_endpoint_runs_end_to_end(tmp_path: Path, feed: Path, registered: None) -> None:
    folder = study_folder(tmp_path, ["visit_count", "pga"])
    (folder / "visit_count.yaml").write_text("item: pga\n", encoding="utf-8")
    study = load_study(folder)
    assert [e.name for e in registry.run_order(registry.endpoints_of(study))] == ["pga", "visit_count"]
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", log)
    doc = json.loads((tmp_path / "out" / "results" / "study.json").read_text())
    counts = [s["visit_count"] for s in doc["subjects"]]
    assert all(n > 0 for n in counts) and doc["visit_count_total"] == sum(counts)
    assert doc["settings"]["visit_count"] == {"item": "pga"}
    bad = study_folder(tmp_path, ["visit_count", "pga"], name="bad")
    (bad / "visit_count.yaml").write_text("item: pga\nitme: x\n", encoding="utf-8")
    with pytest.raises(MappingError, match="unknown key 'itme'") as err:
        load_study(bad)
    assert err.value.line == 2


def test_third_party_package_entry_point(tmp_path: Path) -> None:
    """A separately installed package registers an endpoint by entry point only."""
    site = tmp_path / "site"
    (site / "acme_endpoint-1.0.dist-info").mkdir(parents=True)
    (site / "acme_endpoint-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-endpoint\n"
                                                                   "Version: 1.0\n")
    (site / "acme_endpoint-1.0.dist-info" / "entry_points.txt").write_text(
        "[fhir_adapter.endpoints]\nacme = acme_endpoint:ENDPOINT\n")
    (site / "acme_endpoint.py").write_text(textwrap.dedent("""
        from pydantic import BaseModel
        from fhir_adapter.endpoints.registry import Endpoint

        class Settings(BaseModel):
            label: str

        class Result(BaseModel):
            n_visits: int

        ENDPOINT = Endpoint(name="acme", settings=Settings, result=Result, summary="visits per subject",
                            derive=lambda x: Result(n_visits=len(x.crf.visits)),
                            subject_keys=lambda r: {"acme_visits": r.n_visits})
    """))
    folder = study_folder(tmp_path, ["acme"])
    (folder / "acme.yaml").write_text("label: ACME\n", encoding="utf-8")
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from fhir_adapter.study.load import load_study
        from fhir_adapter.results.subject import derive_subject
        from fhir_adapter.crf.models import SubjectCRF
        study = load_study(Path({str(folder)!r}))
        print(study.endpoints, type(study.rules["acme"]).__module__)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["('acme',)", "acme_endpoint"]


def test_endpoints_of_the_lcar_aio_study(study: Study) -> None:
    assert study.endpoints == BUILTIN
    order = [e.name for e in registry.run_order(registry.endpoints_of(study))]
    assert order.index("lldas") > max(order.index(n) for n in ("sledai2k", "pga", "glucocorticoids"))
    assert order.index("escalation") > order.index("dlt")
    names = yaml.safe_load((LCAR / "study.yaml").read_text())["endpoints"]
    assert sorted(names) == sorted(p.stem for p in LCAR.glob("*.yaml")
                                   if p.stem not in ("study", "schedule", "items", "medications", "adverse_events"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, feed: Path) -> Path:
    out = tmp_path_factory.mktemp("full") / "out"
    log = RunLog()
    run(FileSource(feed, log), load_study(LCAR), out, log)
    return out


#: the per-record values the endpoints derive into the CRF file (``annotate``): domain → fields
DERIVED_FIELDS = {"ae": ("teae", "pre_infusion"), "cm": ("pred_eq_daily_mg",)}


def _mapped_part(doc: dict[str, Any]) -> dict[str, Any]:
    """A CRF file without the fields the endpoints derive."""
    return {k: [{f: x for f, x in rec.items() if f not in DERIVED_FIELDS[k]} for rec in v]
            if k in DERIVED_FIELDS else v for k, v in doc.items()}


def test_deriving_every_endpoint_leaves_the_crf_as_mapped(full_run: Path) -> None:
    from fhir_adapter.crf.models import SubjectCRF
    from fhir_adapter.results.subject import derive_subject

    study = load_study(LCAR)
    crfs = [SubjectCRF.model_validate_json(p.read_bytes()) for p in sorted((full_run / "crf").glob("*.json"))]
    assert crfs and any(c.ae for c in crfs)
    for crf in crfs:
        before = crf.model_dump(mode="json")
        results = derive_subject(crf, study)
        assert crf.model_dump(mode="json") == before, f"a derivation changed the CRF of {crf.subject_id}"
        assert set(results.results) == set(BUILTIN) - {"escalation"}
        # the CRF file carries the safety endpoint's flags, which deriving again from it reproduces
        assert [ae.teae for ae in crf.ae] == [ae.teae for ae in results.export_updates()["ae"]]
        assert all(ae.teae is not None for ae in crf.ae)


def test_crf_teae_and_crs_icans_flags_equal_the_ae_export_and_the_results(full_run: Path) -> None:
    """One TEAE rule (derive/safety.py): the CRF file's ``teae``/``pre_infusion``/``crs``/``icans`` of every AE
    equal AETRTEM/AEPREINF/AECAT of its AE.csv row and the TEAE listing of results/study.json."""
    rows = {r["SRCREF"]: r for r in _csv(full_run / "export" / "AE.csv")}
    study = json.loads((full_run / "results" / "study.json").read_text())
    listed = {s["subject_id"]: {t["source"] for t in s["teaes"]} for s in study["subjects"]}
    yn = {True: "Y", False: "N", None: ""}
    seen = {True: 0, False: 0}
    for path in sorted((full_run / "crf").glob("*.json")):
        doc = json.loads(path.read_text())
        for ae in doc["ae"]:
            src = ae["source"]
            ref = f"{src['resource_type']}/{src['id']}" + (f"/_history/{src['version']}" if src["version"] else "")
            row = rows.pop(ref)
            assert (yn[ae["teae"]], yn[ae["pre_infusion"] or None]) == (row["AETRTEM"], row["AEPREINF"]), ref
            assert ae["teae"] == (ref in listed[doc["subject_id"]]), ref
            assert row["AECAT"] == ("CRS" if ae["crs"] else "ICANS" if ae["icans"] else ""), ref
            seen[ae["teae"]] += 1
    assert rows == {}  # every AE row is a CRF AE
    assert seen[True] and seen[False]  # both values occur in the demo trial


def test_the_crf_does_not_depend_on_the_endpoints(tmp_path: Path, feed: Path, full_run: Path) -> None:
    """The CRF a run writes is the mapping's output but for the per-record values the endpoints derive
    (``DERIVED_FIELDS``): the rest is the same whether the study derives every endpoint or none; with none,
    the TEAE flag and the prednisolone-equivalent dose stay null in the CRF file and AETRTEM is empty."""
    log = RunLog()
    run(FileSource(feed, log), load_study(study_folder(tmp_path, [])), tmp_path / "out", log)
    for path in sorted((full_run / "crf").glob("*.json")):
        bare = json.loads((tmp_path / "out" / "crf" / path.name).read_text())
        assert _mapped_part(bare) == _mapped_part(json.loads(path.read_text())), path.name
        assert all(a["teae"] is None for a in bare["ae"]) and all(c["pred_eq_daily_mg"] is None for c in bare["cm"])
    flags = {r["AETRTEM"] for r in _csv(full_run / "export" / "AE.csv")}
    assert "Y" in flags
    assert {r["AETRTEM"] for r in _csv(tmp_path / "out" / "export" / "AE.csv")} == {""}


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


#: top-level keys of results/study.json that no endpoint writes
STUDY_JSON_BASE = {"study", "generated_by", "endpoints", "settings", "subjects"}


def test_study_json_keys_are_the_endpoints_contracts(full_run: Path) -> None:
    """Every key of results/study.json is declared by the contract of the endpoint that writes it."""
    from typing import get_args

    from fhir_adapter.endpoints.registry import Unit

    doc = json.loads((full_run / "results" / "study.json").read_text())
    eps = [registry.get(n) for n in BUILTIN]
    assert set(doc) == STUDY_JSON_BASE | {k for e in eps for k in e.keys("study")}
    subject_keys = set(BASE_SUBJECT_KEYS) | {k for e in eps for k in e.keys("subject")}
    visit_keys = {"visit", "date", "study_day"} | {k for e in eps for k in e.keys("visit")}
    for s in doc["subjects"]:
        assert set(s) == subject_keys
        assert all(set(v) == visit_keys for v in s["visits"])
    dose = registry.get("glucocorticoids").keys("visit")["pred_eq_mg_per_day"]
    assert Unit("mg/d") in get_args(dose)


class _Reads(dict[str, Any]):
    """A study.json object that records the keys read from it (top level, subject rows, visit rows)."""

    def __init__(self, data: dict[str, Any], seen: dict[str, set[str]], where: str) -> None:
        below = {"top": ("subjects", "subject"), "subject": ("visits", "visit")}.get(where)
        if below is not None and isinstance(data.get(below[0]), list):
            data = {**data, below[0]: [_Reads(x, seen, below[1]) if isinstance(x, dict) else x
                                       for x in data[below[0]]]}
        super().__init__(data)
        self.seen, self.where = seen, where

    def get(self, key: Any, default: Any = None) -> Any:
        self.seen[self.where].add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.seen[self.where].add(key)
        return super().__getitem__(key)


def test_the_report_reads_only_keys_the_endpoints_declare(full_run: Path) -> None:
    """Every results/study.json key the report reads is a base key or one an endpoint's contract declares, so
    a key an endpoint renames or drops cannot silently empty a report table."""
    from fhir_adapter.report.assemble import render
    from fhir_adapter.report.data import load

    data = load(full_run)
    seen: dict[str, set[str]] = {"top": set(), "subject": set(), "visit": set()}
    data.study = _Reads(data.study, seen, "top")
    render(data)
    eps = [registry.get(n) for n in registry.available() if n in BUILTIN]
    declared = {
        "top": STUDY_JSON_BASE | {k for e in eps for k in e.keys("study")},
        "subject": set(BASE_SUBJECT_KEYS) | {k for e in eps for k in e.keys("subject")},
        "visit": {"visit", "date", "study_day"} | {k for e in eps for k in e.keys("visit")},
    }
    assert {"teae_count", "dlt", "kinetics"} <= seen["subject"] and {"sledai2k", "pga", "lldas"} <= seen["visit"]
    assert {"lldas_rate", "dose_levels", "rp2d", "teae_summary"} <= seen["top"]
    undeclared = {where: sorted(seen[where] - declared[where]) for where in seen}
    assert undeclared == {"top": [], "subject": [], "visit": []}


def test_crf_cm_records_carry_their_prednisolone_equivalent_daily_dose(full_run: Path) -> None:
    """The CRF file's glucocorticoid records: ``pred_eq_daily_mg`` = daily mg × the factor of glucocorticoids.yaml
    (the one table) for systemic ones; None for a topical one and for any other drug."""
    from fhir_adapter.derive.glucocorticoids import GlucocorticoidSettings

    table = load_study(LCAR).rule("glucocorticoids", GlucocorticoidSettings)
    factor = {g.name: g.factor for g in table.drugs}
    seen = set()
    for path in sorted((full_run / "crf").glob("*.json")):
        for cm in json.loads(path.read_text())["cm"]:
            if cm["drug"] in factor and cm["route"] != "topical" and cm["daily_dose_mg"] is not None:
                assert cm["pred_eq_daily_mg"] == round(cm["daily_dose_mg"] * factor[cm["drug"]], 3), cm
                seen.add(cm["drug"])
            else:
                assert cm["pred_eq_daily_mg"] is None, cm
    assert {"prednisone", "methylprednisolone"} <= seen
