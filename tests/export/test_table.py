"""The exports' fast path for plain rows (export/table.py) writes what the per-cell path writes: CSV cells made
safe as csv_cell does, Dataset-JSON as json.dumps writes the row, ODM ItemData escaped and cleaned as
xml_text/quoteattr do — for rows mixing plain text with every kind of character that needs care."""

from __future__ import annotations

import csv
import io
import json
import random
import xml.etree.ElementTree as ET
from dataclasses import fields

from fhir_adapter.export.cdisc import _FINDING_COLUMNS, _IDS, COLUMNS, FINDINGS_DOMAINS
from fhir_adapter.export.dataset_json import column_kinds, render_tables
from fhir_adapter.export.odm import OdmSubjects
from fhir_adapter.export.sanitize import csv_cell, csv_safe
from fhir_adapter.export.table import table, tables
from fhir_adapter.study.load import Study

TRICKY = ["=1+1", "+2", "-2", "-0.5", "-PT1H", "@SUM(A1)", "\t=1", "\r=1", "a,b", 'say "hi"', "back\\slash",
          "a&b", "<x>", "tab\tin", "nul\x00", "\x1f", "é ü 中", "\ue000", "\ue000=1", "x\ue000-y", "\ufffe", " lead",
          "line\nbreak"]
PLAIN = ["LB", "1.5", "mg/dL", "2024-03", "Observation/1/_history/2", "HIGH", "Y", "12"]


def _rows(rng: random.Random, domain: str, n: int) -> list[dict[str, str]]:
    rows = []
    for _ in range(n):
        row = {c: rng.choice(PLAIN) if rng.random() < 0.9 else "" for c in COLUMNS[domain]}
        for c in rng.sample(COLUMNS[domain], rng.choice([0, 0, 1, 2])):
            row[c] = rng.choice(TRICKY)
        for c, kind in zip(COLUMNS[domain], column_kinds()[domain], strict=True):  # numeric columns hold numbers
            if kind != "string":
                doubles = ["1.50", "-0.0", "1e-7", "2.5E3"] if kind == "double" else []
                row[c] = rng.choice(["", "3", "-2", "12", *doubles])
        row["_visit"], row["_item"] = "V1", "x"
        rows.append(row)
    return rows


def test_plain_rows_are_written_as_the_per_cell_path_writes_them(study: Study) -> None:
    rng = random.Random(7)
    kinds = column_kinds()
    for domain in ("LB", "AE"):
        rows = _rows(rng, domain, 400)
        t = table(domain, rows)
        assert any(t.plain) and not all(t.plain) and not all(t.formula_free)
        for row, cells, formula_free in zip(rows, t.cells, t.formula_free, strict=True):
            assert list(csv_safe(cells, formula_free)) == [csv_cell(row[c]) for c in COLUMNS[domain]]
        buf = io.StringIO(newline="")
        csv.writer(buf).writerows([csv_cell(row[c]) for c in COLUMNS[domain]] for row in rows)
        assert t.csv_text() == buf.getvalue() and any(t.csv_simple) and not all(t.csv_simple)
        got = render_tables({domain: t}, kinds)[domain]
        for row, text in zip(rows, got, strict=True):
            values = [None if row[c] == "" else int(row[c]) if k == "integer" else float(row[c]) if k == "double"
                      else row[c] for c, k in zip(COLUMNS[domain], kinds[domain], strict=True)]
            assert text == json.dumps(values, ensure_ascii=False)
        # ODM: the same SubjectData from the table as from rows whose every cell takes the per-cell path
        odm = OdmSubjects(study)
        fast, removed_fast = odm.render("S1", {domain: t})
        slow_table = table(domain, rows)
        slow_table.plain[:] = [False] * len(rows)
        slow, removed_slow = odm.render("S1", {domain: slow_table})
        assert fast == slow and removed_fast == removed_slow > 0
        ET.fromstring(fast)  # well-formed XML 1.0


def test_a_formula_after_the_first_cell_is_found(study: Study) -> None:
    cells = {c: "plain" for c in COLUMNS["LB"]}
    for where in (0, 5, len(COLUMNS["LB"]) - 1):
        for formula in ("=1", "+1", "-1+A1", "@A1"):
            row = dict(cells)
            row[COLUMNS["LB"][where]] = formula
            t = tables({"LB": [row]})["LB"]
            assert t.plain == [True] and t.formula_free == [False]
            buf = io.StringIO(newline="")
            csv.writer(buf).writerows(map(csv_safe, t.cells, t.formula_free))
            assert next(csv.reader(io.StringIO(buf.getvalue())))[where] == csv_cell(formula)


def test_negative_numbers_and_durations_keep_the_fast_path() -> None:
    row = {c: "plain" for c in COLUMNS["PC"]}
    row |= {"VISITDY": "-28", "PCDY": "-36", "PCELTM": "-PT1H", "PCSTRESN": "-0.5"}
    t = tables({"PC": [row]})["PC"]
    assert t.plain == [True] and t.formula_free == [True]
    assert list(csv_safe(t.cells[0], True)) == [csv_cell(row[c]) for c in COLUMNS["PC"]]
    row["PCORRES"] = "-2x"
    assert tables({"PC": [row]})["PC"].formula_free == [False]


def test_every_findings_column_has_one_place_in_a_findings_row() -> None:
    """A findings row is stored cell by cell at the positions of cdisc._FindingColumns: each column a finding
    fills has a position of its own, and a column the domain lacks has the one past its last column (storing
    there fails) — the identifiers and the NOT DONE columns come from elsewhere."""
    for p in FINDINGS_DOMAINS:
        columns = COLUMNS[p]
        k = _FINDING_COLUMNS[p]
        at = [getattr(k, f.name) for f in fields(k) if not f.name.startswith("has_")]
        placed = [i for i in at if i < len(columns)]
        assert len(placed) == len(set(placed)), p
        assert {columns[i] for i in placed} | {*_IDS, f"{p}STAT", f"{p}REASND"} == set(columns), p
        assert {i for i in at if i >= len(columns)} <= {len(columns)}, p
