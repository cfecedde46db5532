"""``OUT/export/``: the EDC exports of a run, written subject by subject.

* ``<DOMAIN>.csv`` for DM, EX, LB, VS, PC, QS, IS, CM, AE, MH, PR (CDISC columns, :mod:`.cdisc`; which IG
  variable each column serves: ``mappings/cdisc/variables.csv`` → docs/cdisc-mapping.md);
* ``<DOMAIN>.json`` — the same rows as CDISC Dataset-JSON v1.1, metadata as in odm.xml (:mod:`.dataset_json`);
* ``odm.xml`` — CDISC ODM 1.3.2 ClinicalData with its MetaDataVersion (:mod:`.odm`);
* ``coverage.csv`` and ``coverage-subjects.csv`` (:mod:`.coverage`).

Each subject's rows are written as soon as its CRF exists; nothing but counters is kept across subjects.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.export.cdisc import COLUMNS, DOMAINS, FINDINGS_DOMAINS, RowBuilder
from fhir_adapter.export.coverage import Coverage
from fhir_adapter.export.dataset_json import DatasetJsonWriter
from fhir_adapter.export.meddra import Meddra, MeddraError, meddra_folder
from fhir_adapter.export.odm import OdmWriter
from fhir_adapter.export.sanitize import csv_row
from fhir_adapter.job.runlog import Quarantined
from fhir_adapter.study.load import Study


class ExportWriter:
    def __init__(self, folder: Path, study: Study) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        folder_setting = meddra_folder(study.meddra_dir)
        meddra: Meddra | None = None
        problem: str | None = None
        try:
            meddra = Meddra(folder_setting) if folder_setting else None
        except (MeddraError, OSError) as exc:  # FHIR_ADAPTER_MEDDRA_DIR wrong: no hierarchy, and say why
            problem = str(exc)
        self.rows = RowBuilder(study, meddra=meddra)
        self.rows.meddra_problem = problem
        self._files: dict[str, IO[str]] = {}
        self._csv: dict[str, csv.DictWriter[str]] = {}
        for domain in DOMAINS:
            fh = (self.folder / f"{domain}.csv").open("w", newline="", encoding="utf-8")
            w = csv.DictWriter(fh, fieldnames=list(COLUMNS[domain]), extrasaction="ignore")
            w.writeheader()
            self._files[domain], self._csv[domain] = fh, w
        self.odm = OdmWriter(self.folder / "odm.xml", study)
        self.dataset_json = DatasetJsonWriter(self.folder, study)
        self.coverage = Coverage(study, self.folder)
        self.counts: dict[str, int] = dict.fromkeys(DOMAINS, 0)

    def add(self, crf: SubjectCRF, quarantined: list[Quarantined],
            review: dict[tuple[str, str], str] | None = None,
            decisions: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        """Export one subject's CRF; ``quarantined`` = the quarantine entries added while mapping it;
        ``review`` = the review status per (visit, item) (column REVSTAT); ``decisions`` = the reviewer's
        decision per (visit, item) (ODM AuditRecord and Annotation)."""
        rows = self.rows.rows(crf)
        if review is not None:
            for domain in FINDINGS_DOMAINS:
                for row in rows[domain]:
                    key = (row["_visit"], row["_item"])
                    row["REVSTAT"] = review.get(key, "unreviewed")
                    if decisions and key in decisions:
                        row["_decision"] = decisions[key]
        for domain, domain_rows in rows.items():
            self._csv[domain].writerows(csv_row(r) for r in domain_rows)  # the single CSV write point
            self.counts[domain] += len(domain_rows)
        self.odm.add(crf.subject_id, rows)
        self.dataset_json.add(rows)
        self.coverage.add(crf, quarantined)

    def close(self, run_counts: dict[str, int]) -> dict[str, Any]:
        """Finish every file; return the report's ``coverage`` section (with the export row counts)."""
        for fh in self._files.values():
            fh.close()
        self.odm.close()
        self.dataset_json.close()
        report = self.coverage.close(run_counts)
        report["export_rows"] = dict(self.counts)
        return report

    def cdisc_report(self) -> dict[str, Any]:
        """The run report's ``cdisc`` section (CT package, values without a CT term, MedDRA)."""
        return self.rows.cdisc_report()
