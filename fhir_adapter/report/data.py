"""Load what a run wrote (``results/study.json``, ``run-report.json``, ``crf/*.json``) for the report.

The results contract grows while derivations are added: every accessor here tolerates a missing key and
returns ``None`` or an empty list, so a section without its data says so instead of failing. Nothing here
computes an endpoint; it only reads and reshapes.

Only pseudonymised subject IDs are ever read out of a CRF for display: the report never shows names,
MRNs, addresses or birth dates (the CRF does not hold them either).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson

from fhir_adapter.job.outswap import reading
from fhir_adapter.report.blocks import Section

JsonDict = dict[str, Any]


class ReportError(Exception):
    """The report cannot be built; the message says what to do."""


def num(value: Any) -> float | None:
    """A finite number, or None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def as_list(value: Any) -> list[JsonDict]:
    """The dicts of a JSON list (anything else: empty)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def as_dict(value: Any) -> JsonDict:
    return value if isinstance(value, dict) else {}


class CrfStore(Mapping[str, JsonDict]):
    """The run's CRFs by subject ID, each kept as the compact JSON of what the sections read of it
    (:func:`_as_read`) and parsed again on every access, so a report holds a few dozen bytes per finding instead
    of a dict of each (340 subjects: 36 MB of JSON; the report's process holds 169 MB once OUT is loaded, 278 MB
    with the CRFs as dicts). A section's pass over every CRF parses them all again: a fifth of a second per 340
    subjects. Nothing a section changes in a CRF it got is kept."""

    def __init__(self) -> None:
        self._json: dict[str, bytes] = {}

    def add(self, subject_id: str, crf: JsonDict) -> None:
        self._json[subject_id] = bytes(memoryview(orjson.dumps(crf)))   # to its length: orjson over-allocates

    def __getitem__(self, subject_id: str) -> JsonDict:
        crf: JsonDict = orjson.loads(self._json[subject_id])
        return crf

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self._json

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)


@dataclass
class ReportData:
    """One run's outputs, as read from disk (not changed once loaded: what is derived from every CRF, the arms
    and the visit order, is worked out once)."""

    results_dir: Path
    study: JsonDict
    run_report: JsonDict | None
    crfs: Mapping[str, JsonDict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    # --- subjects ------------------------------------------------------------------------------------
    @property
    def subjects(self) -> list[JsonDict]:
        return sorted(as_list(self.study.get("subjects")), key=lambda s: str(s.get("subject_id", "")))

    @cached_property
    def arms(self) -> list[str]:
        """Dose levels in the order DL1, DL2, DL3, ..., EXP, then anything else, then '(no arm)'."""
        from fhir_adapter.report.plotting import ARM_COLORS, NO_ARM

        seen = {arm_of(s) for s in self.subjects} | {arm_of(c) for c in self.crfs.values()}
        known = [a for a in ARM_COLORS if a in seen]
        rest = sorted(a for a in seen if a not in ARM_COLORS and a != NO_ARM)
        return known + rest + ([NO_ARM] if NO_ARM in seen else [])

    def crf(self, subject_id: str) -> JsonDict | None:
        return self.crfs.get(subject_id)

    def subject_ids(self) -> list[str]:
        """Every subject with results or a CRF."""
        ids = {str(s["subject_id"]) for s in self.subjects if s.get("subject_id")}
        return sorted(ids | set(self.crfs))

    def without_day1(self) -> list[str]:
        """The subjects with results but no Day 1 (no infusion record): they have no study visits, so the
        per-visit figures and tables cannot hold them — a section names them rather than leave them out unsaid."""
        return [str(s["subject_id"]) for s in self.subjects if s.get("subject_id") and not s.get("day1")]

    def note_without_day1(self, sec: Section) -> None:
        if missing := self.without_day1():
            sec.note(f"Not in these figures and tables, having no Day 1 (no infusion record) and so no study "
                     f"visits: {', '.join(missing)}.")

    # --- visits -------------------------------------------------------------------------------------
    def visit_order(self) -> list[str]:
        """Scheduled visit ids in time order (median study day over subjects; unscheduled visits excluded)."""
        return list(self._visit_order)

    @cached_property
    def _visit_order(self) -> list[str]:
        days: dict[str, list[float]] = {}
        for s in self.subjects:
            for v in as_list(s.get("visits")):
                vid = v.get("visit")
                if isinstance(vid, str) and not vid.startswith("UNS"):
                    d = num(v.get("study_day"))
                    days.setdefault(vid, [])
                    if d is not None:
                        days[vid].append(d)
        for c in self.crfs.values():
            for v in as_list(c.get("visits")):
                vid = v.get("visit")
                if isinstance(vid, str) and not v.get("unscheduled") and not vid.startswith("UNS"):
                    d = num(v.get("target_day"))
                    if d is None:
                        d = num(v.get("study_day"))
                    days.setdefault(vid, [])
                    if d is not None:
                        days[vid].append(d)

        def key(vid: str) -> tuple[float, str]:
            ds = sorted(days[vid])
            return (ds[len(ds) // 2] if ds else math.inf, vid)

        return sorted(days, key=key)

    def visit_values(self, key: str) -> dict[str, dict[str, float]]:
        """``{visit: {subject_id: value}}`` of one numeric per-visit key of results/study.json."""
        out: dict[str, dict[str, float]] = {}
        for s in self.subjects:
            sid = str(s.get("subject_id"))
            for v in as_list(s.get("visits")):
                x = num(v.get(key))
                if x is not None and isinstance(v.get("visit"), str):
                    out.setdefault(v["visit"], {})[sid] = x
        return out

    def has_visit_key(self, key: str) -> bool:
        return any(key in v for s in self.subjects for v in as_list(s.get("visits")))


def without_history(reference: str) -> str:
    """``AdverseEvent/1/_history/2`` -> ``AdverseEvent/1``: how results cite a record, as the CRF names it."""
    return reference.split("/_history/")[0]


def aes_by_source(crf: JsonDict | None) -> dict[str, JsonDict]:
    """The CRF's adverse events by their source reference (``AdverseEvent/<id>``): what a result naming its source
    AE is looked up with (its onset day, its AESPID)."""
    out: dict[str, JsonDict] = {}
    for ae in as_list(crf.get("ae") if crf else None):
        src = as_dict(ae.get("source"))
        if src.get("id"):
            out[f"{src.get('resource_type')}/{src.get('id')}"] = ae
    return out


def arm_of(subject: JsonDict) -> str:
    from fhir_adapter.report.plotting import NO_ARM

    arm = subject.get("arm")
    if not arm:
        arm = as_dict(subject.get("dm")).get("arm")
    return str(arm) if arm else NO_ARM


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except json.JSONDecodeError as exc:   # orjson's error is one
        raise ReportError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); re-run "
                          "`fhir-adapter run` to write it again") from exc


def load(results_dir: Path) -> ReportData:
    """Read a run's output folder. ``results/study.json`` is required; the rest is used when present. Read under
    OUT's swap lock (:mod:`fhir_adapter.job.outswap`): study.json, run-report.json and the CRFs are one run's."""
    results_dir = Path(results_dir)
    with reading(results_dir):
        return _load(results_dir)


def _load(results_dir: Path) -> ReportData:
    study_path = results_dir / "results" / "study.json"
    if not study_path.is_file():
        hint = (f"{results_dir} does not exist" if not results_dir.exists()
                else f"{study_path} not found")
        raise ReportError(f"{hint}: pass --results the OUT folder of `fhir-adapter run --out OUT`")
    study = _read_json(study_path)
    if not isinstance(study, dict):
        raise ReportError(f"{study_path}: expected a JSON object at the top level")
    crfs = CrfStore()
    data = ReportData(results_dir=results_dir, study=study, run_report=None, crfs=crfs)
    rr_path = results_dir / "run-report.json"
    if rr_path.is_file():
        rr = _read_json(rr_path)
        data.run_report = rr if isinstance(rr, dict) else None
    else:
        data.problems.append("run-report.json not found: data completeness is computed from the CRFs")
    for path in _sorted_files((results_dir / "crf").glob("*.json")):
        crf = _read_json(path)
        if isinstance(crf, dict) and crf.get("subject_id"):
            crfs.add(str(crf["subject_id"]), _as_read(crf))
    if not crfs:
        data.problems.append("no CRF files in crf/: kinetics, adverse events and completeness use results only")
    return data


#: what a section reads of a CRF finding (``findings`` and each visit's ``values``): a CRF's findings carry ~45
#: fields each, and a report over hundreds of subjects keeps every CRF in memory
FINDING_FIELDS = ("domain", "item", "value", "comparator", "unit", "study_day")


def _as_read(crf: JsonDict) -> JsonDict:
    """``crf`` with its findings (in ``findings`` and in each visit's ``values``) cut to :data:`FINDING_FIELDS`."""
    def cut(f: Any) -> Any:
        return {k: f[k] for k in FINDING_FIELDS if k in f} if isinstance(f, dict) else f

    findings = crf.get("findings")
    if isinstance(findings, list):
        crf["findings"] = [cut(f) for f in findings]
    for v in as_list(crf.get("visits")):
        values = v.get("values")
        if isinstance(values, dict):
            v["values"] = {item: cut(f) for item, f in values.items()}
    return crf


def _sorted_files(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: p.name)
