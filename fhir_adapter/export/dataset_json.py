"""CDISC Dataset-JSON v1.1 per domain (``OUT/export/<DOMAIN>.json``), beside the CSV files.

The metadata comes from the same definitions as ``odm.xml``: ``studyOID`` is the ODM Study OID,
``metaDataVersionOID`` its MetaDataVersion, ``itemGroupOID`` the domain's ItemGroupDef (``IG.LB``), every
column's ``itemOID`` its ItemDef OID (``IT.LB.LBORRES``) and its label the ItemDef's description
(:mod:`.labels`); ``metaDataRef`` points at ``odm.xml``. Rows are the CSV rows, typed: ODM ``integer`` →
``integer``, ``float`` → ``double`` (JSON numbers), everything else — ISO 8601 dates too, which may be partial
in SDTM — ``string``; an empty cell is ``null``.

Written as it goes, like the CSV files: each subject's rows are appended to the open ``rows`` array and the
record count is written after it on :meth:`DatasetJsonWriter.close`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import IO, Any

from fhir_adapter.export.cdisc import COLUMNS, DOMAIN_LABELS, DOMAINS, data_type
from fhir_adapter.export.labels import label
from fhir_adapter.export.table import Table, tables
from fhir_adapter.study.load import Study
from fhir_adapter.version import __version__

VERSION = "1.1.0"
MDV_OID = "MDV.1"   # the MetaDataVersion of odm.xml
_TYPES = {"integer": "integer", "float": "double"}
#: what json.dumps(..., ensure_ascii=False) uses, built once
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def dataset_type(column: str) -> str:
    """Dataset-JSON dataType of an export column (from its ODM DataType)."""
    return _TYPES.get(data_type(column), "string")


def columns(domain: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    keys = ("STUDYID", "USUBJID", f"{domain}SEQ") if domain != "DM" else ("STUDYID", "USUBJID")
    for column in COLUMNS[domain]:
        col: dict[str, Any] = {"itemOID": f"IT.{domain}.{column}", "name": column, "label": label(domain, column),
                               "dataType": dataset_type(column)}
        if column in keys:
            col["keySequence"] = keys.index(column) + 1
        out.append(col)
    return out


def _value(kind: str, text: Any) -> Any:
    if text is None or text == "":
        return None
    if kind == "integer":
        return int(str(text))
    if kind == "double":
        return float(str(text))
    return str(text)


def column_kinds() -> dict[str, list[str]]:
    """Domain → the Dataset-JSON data type of each column."""
    return {d: [dataset_type(c) for c in COLUMNS[d]] for d in DOMAINS}


def render_rows(rows: dict[str, list[dict[str, Any]]], kinds: dict[str, list[str]]) -> dict[str, list[str]]:
    """Domain → each row as its Dataset-JSON array text."""
    return render_tables(tables(rows), kinds)


#: marks a number's text among a plain row's quoted cells (a plain row holds no NUL): ``"\0 3\0"`` → ``3``
_NUMBER_MARK = "\x00"
#: per kind (``integer``, ``double``), a cell's text → the number's JSON between marks, for the texts seen
#: (study days, sequence numbers, results repeat); each holds at most this many
_NUMBERS_KEPT = 50_000
_marked: dict[str, dict[str, str]] = {"integer": {}, "double": {}}


def _number(kind: str, text: str) -> str:
    """A cell of an integer or double column as JSON, as :func:`json.dumps` writes the number."""
    if kind == "integer":
        return int.__repr__(int(text))
    value = float(text)
    return float.__repr__(value) if math.isfinite(value) else _ENCODE(value)


def _marked_number(kind: str, text: str) -> str:
    """:func:`_number` between marks, remembered in ``_marked[kind]``."""
    known = _marked[kind]
    if len(known) >= _NUMBERS_KEPT:
        known.clear()
    found = known[text] = _NUMBER_MARK + _number(kind, text) + _NUMBER_MARK
    return found


def render_tables(domains: dict[str, Table], kinds: dict[str, list[str]]) -> dict[str, list[str]]:
    """Domain → each row of its :class:`Table` as its Dataset-JSON array text. A plain row's cells are
    quoted as they are (nothing in them JSON escapes) and joined at once; as no cell holds a quote, ``""``
    there is an empty cell (``null``); numbers are marked in the joined text and unquoted. Any other row is
    encoded cell by cell."""
    out: dict[str, list[str]] = {}
    for domain, t in domains.items():
        domain_kinds = kinds[domain]
        numbers = [(i, k, _marked[k]) for i, k in enumerate(domain_kinds) if k != "string"]
        texts: list[str] = []
        for values, plain in zip(t.cells, t.plain, strict=True):
            if not plain:
                texts.append(_ENCODE([None if (text := v) is None or text == "" else
                                      str(text) if k == "string" else _value(k, text)
                                      for k, v in zip(domain_kinds, values, strict=True)]))
                continue
            marked = list(values)
            for i, k, known in numbers:
                if text := marked[i]:
                    marked[i] = known.get(text) or _marked_number(k, text)
            text = ('["' + '", "'.join(marked) + '"]').replace('""', "null")
            if _NUMBER_MARK in text:
                text = text.replace('"' + _NUMBER_MARK, "").replace(_NUMBER_MARK + '"', "")
            texts.append(text)
        out[domain] = texts
    return out


class DatasetJsonWriter:
    """One open Dataset-JSON file per domain."""

    def __init__(self, folder: Path, study: Study) -> None:
        self.folder = Path(folder)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        self._files: dict[str, IO[str]] = {}
        self._kinds = column_kinds()
        self.records: dict[str, int] = dict.fromkeys(DOMAINS, 0)
        for domain in DOMAINS:
            head = {
                "datasetJSONCreationDateTime": now, "datasetJSONVersion": VERSION,
                "fileOID": f"{study.info.id}.{domain}",
                "originator": "fhir-adapter", "sourceSystem": {"name": "fhir-adapter", "version": __version__},
                "studyOID": f"ST.{study.info.id}", "metaDataVersionOID": MDV_OID, "metaDataRef": "odm.xml",
                "itemGroupOID": f"IG.{domain}", "name": domain,
                "label": DOMAIN_LABELS[domain], "columns": columns(domain),
            }
            fh = (self.folder / f"{domain}.json").open("w", encoding="utf-8")
            fh.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "rows": [')
            self._files[domain] = fh

    def add(self, domains: dict[str, Table]) -> None:
        self.write(render_tables(domains, self._kinds))

    def write(self, rendered: dict[str, list[str]]) -> None:
        """Append rows rendered by :func:`render_rows` (here or in a worker)."""
        for domain, texts in rendered.items():
            if texts:  # one write per file: the rows after the array's last one, each on its own line
                self._files[domain].write(("\n" if self.records[domain] == 0 else ",\n") + ",\n".join(texts))
                self.records[domain] += len(texts)

    def rows_file(self, domain: str, count: int) -> IO[str]:
        """The domain's file, ready for ``count`` rows joined by ``",\\n"`` to be appended to it (as
        :meth:`write` appends them): the separator after the rows before is written."""
        self._files[domain].write("\n" if self.records[domain] == 0 else ",\n")
        self.records[domain] += count
        return self._files[domain]

    def close(self) -> None:
        for domain, fh in self._files.items():
            fh.write(f'\n], "records": {self.records[domain]}}}\n')
            fh.close()
