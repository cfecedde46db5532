"""A folder of FHIR R4 NDJSON files (a Bulk Data ``$export``) and/or Bundle JSON files: the embedded
default, no server needed.

Files are read in one pass: every line is parsed once (orjson), roster resources are kept, and the
other resources are grouped by the Patient they reference. Malformed lines and resources that name no
known Patient are quarantined with the file and line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from fhir_adapter.fhir_r4 import is_r4_type
from fhir_adapter.runlog import RunLog
from fhir_adapter.source.base import SUBJECT_TYPES, Resource, RosterInput, patient_id_of


class FileSource:
    def __init__(self, folder: Path, log: RunLog) -> None:
        self.folder = Path(folder)
        self.log = log
        self.description = f"files:{self.folder}"
        self._roster: RosterInput | None = None
        self._by_patient: dict[str, list[Resource | bytes]] = defaultdict(list)
        self._orphans: list[tuple[Resource, str, int]] = []

    # -- reading -----------------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            raise FileNotFoundError(f"source folder {self.folder} does not exist: run `fhir-adapter synth --out "
                                    f"{self.folder}` or point --source at a Bulk Data export folder")
        files = sorted(p for p in self.folder.iterdir()
                       if p.suffix in (".ndjson", ".json") and p.name != "manifest.json")
        if not files:
            raise FileNotFoundError(f"no .ndjson or .json files in {self.folder}")
        return files

    def _load(self) -> None:
        roster = RosterInput()
        for path in self._files():
            if path.suffix == ".ndjson":
                with path.open("rb") as fh:
                    for n, line in enumerate(fh, start=1):
                        if line.strip():
                            self._take_line(line, path, n, roster)
            else:
                self._take_json_file(path, roster)
        self._roster = roster

    def _take_line(self, line: bytes, path: Path, n: int, roster: RosterInput) -> None:
        try:
            res = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.log.reject("unknown", None, "malformed-json", f"line is not JSON ({exc.msg})",
                            "fix the export; the line is kept in quarantine/", file=path.name, line=n,
                            raw=line.decode("utf-8", "replace"))
            return
        self._take(res, path.name, n, roster, line)

    def _take_json_file(self, path: Path, roster: RosterInput) -> None:
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            self.log.reject("unknown", None, "malformed-json", f"file is not JSON ({exc.msg})",
                            "fix or remove the file", file=path.name)
            return
        if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
            for i, entry in enumerate(doc.get("entry") or [], start=1):
                res = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(res, dict):
                    full = entry.get("fullUrl", "")
                    if "id" not in res and isinstance(full, str) and full.startswith("urn:uuid:"):
                        res["id"] = full[len("urn:uuid:"):]
                    self._take(res, path.name, i, roster)
        else:
            self._take(doc, path.name, 1, roster)

    def _take(self, res: Any, file: str, line: int, roster: RosterInput, raw: bytes | None = None) -> None:
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            self.log.reject("unknown", None, "not-a-resource", "JSON object without resourceType",
                            "export FHIR resources only", file=file, line=line, raw=res)
            return
        rtype = res["resourceType"]
        self.log.count(f"read.{rtype}")
        if rtype == "ResearchStudy":
            roster.studies.append(res)
        elif rtype == "ResearchSubject":
            roster.subjects.append(res)
        elif rtype == "Patient":
            pid = res.get("id")
            if isinstance(pid, str):
                roster.patients[pid] = res
            else:
                self.log.reject("Patient", None, "missing-id", "Patient without id", "export resources with ids",
                                file=file, line=line, raw=res)
        elif rtype in SUBJECT_TYPES:
            if not isinstance(res.get("id"), str) or not res["id"]:
                self.log.reject(rtype, None, "missing-id",
                                f"{rtype} without id: versions and references cannot be resolved",
                                "export resources with ids", file=file, line=line, raw=res)
                return
            pid = patient_id_of(res)
            if pid is None:
                self._orphans.append((res, file, line))
            else:
                # the line's bytes take a fraction of the memory of the parsed dict: a subject's resources are
                # parsed again (orjson, microseconds) when that subject is processed
                self._by_patient[pid].append(raw.strip() if raw is not None else res)
        elif not is_r4_type(rtype):
            rid = res.get("id") if isinstance(res.get("id"), str) else None
            self.log.reject(rtype, rid, "unknown-resource-type",
                            f"'{rtype}' is not a FHIR R4 resource type",
                            "check the spelling of resourceType; the line is kept in quarantine/",
                            file=file, line=line, raw=res)
        else:
            self.log.count(f"ignored.{rtype}")

    # -- the Source interface ---------------------------------------------------------------------
    def roster(self) -> RosterInput:
        if self._roster is None:
            self._load()
        assert self._roster is not None
        return self._roster

    def subject_resources(self, patient_ids: set[str]) -> Iterator[tuple[str, list[Resource]]]:
        roster = self.roster()
        for res, file, line in self._orphans:
            self.log.reject(res["resourceType"], res.get("id"), "no-patient",
                            "the resource names no Patient (subject/patient reference missing)",
                            "the EHR export must set subject to the Patient", file=file, line=line, raw=res)
        for pid in sorted(self._by_patient):
            if pid not in roster.patients:
                for res in map(_parsed, self._by_patient[pid]):
                    self.log.reject(res["resourceType"], res.get("id"), "unknown-patient",
                                    f"references Patient/{pid}, which is not in the source",
                                    "include the Patient in the export or correct the reference", raw=res)
            elif pid not in patient_ids:
                self.log.count("skipped.not-enrolled", len(self._by_patient[pid]))
        for pid in sorted(patient_ids):
            yield pid, [_parsed(x) for x in self._by_patient.pop(pid, [])]
        self._by_patient.clear()


def _parsed(x: Resource | bytes) -> Resource:
    if isinstance(x, bytes):
        res: Resource = orjson.loads(x)
        return res
    return x
