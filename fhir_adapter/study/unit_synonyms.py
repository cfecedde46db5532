"""Unit spellings that are not UCUM codes, each → its UCUM code: ``mappings/units/synonyms.yaml`` (shared by
every study) and a site overlay's ``unit_synonyms`` (added to it), checked when the study loads.

A result's unit is looked up here before the item's unit, factors and accept_units are matched
(:mod:`fhir_adapter.mapping.observations`), so "µmol/L" from a hospital's EHR is matched as "umol/L"; the CRF
keeps the unit as sent. Only spellings that mean one unit belong here (docs: mappings/README.md, "Units").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from fhir_adapter.study.models import Item, Strict
from fhir_adapter.study.yamlfile import YamlDoc, read_yaml
from fhir_adapter.terminology import units

#: the shared table, at the top of the checkout beside the study folders
SYNONYMS_FILE = Path(__file__).resolve().parents[2] / "mappings" / "units" / "synonyms.yaml"


class SynonymsFile(Strict):
    """``mappings/units/synonyms.yaml``."""

    synonyms: dict[str, str] = Field(description="a unit as EHRs spell it → its UCUM code")


def read_shared(path: Path = SYNONYMS_FILE) -> tuple[YamlDoc, dict[str, str]]:
    """The shared table, as read (for the lines of its errors) and as a mapping."""
    doc = read_yaml(path)
    if not isinstance(doc.data, dict) or not isinstance(doc.data.get("synonyms"), dict):
        raise doc.error((), "the file must hold a `synonyms:` mapping of spelling → UCUM code",
                        'write e.g. synonyms: {"µmol/L": umol/L}')
    for spelling, ucum in doc.data["synonyms"].items():
        if not isinstance(ucum, str) or not isinstance(spelling, str):
            raise doc.error(("synonyms", str(spelling)), f"synonym '{spelling}': spelling and UCUM code must be text",
                            "quote both, e.g. \"°F\": \"[degF]\"")
    return doc, SynonymsFile.model_validate(doc.data).synonyms


def merged(shared: Mapping[str, str], site: Mapping[str, str], site_doc: YamlDoc | None) -> dict[str, str]:
    """The shared table with a site's additions; a site may not map a shared spelling to another unit."""
    out = dict(shared)
    for spelling, ucum in site.items():
        if spelling in shared and shared[spelling] != ucum:
            assert site_doc is not None
            raise site_doc.error(("unit_synonyms", spelling),
                                 f"'{spelling}' is {shared[spelling]} in {SYNONYMS_FILE.name}, not {ucum}",
                                 f"remove it from unit_synonyms (a site adds spellings, it does not change them); "
                                 f"if the shared table is wrong, correct mappings/units/{SYNONYMS_FILE.name}")
        out[spelling] = ucum
    return out


def check(entries: Mapping[str, str], table: Mapping[str, str], items: Mapping[str, Item], doc: YamlDoc,
          prefix: tuple[str | int, ...]) -> None:
    """Each of ``entries`` (of ``doc``, under ``prefix``) names a valid UCUM code, chains with no other entry of
    ``table`` (the whole table it belongs to) and is no unit an item takes as it is (a synonym would then turn
    one UCUM unit into another)."""
    taken = {u: item_id for item_id, it in items.items() if it.value == "quantity"
             for u in (it.unit, *it.accept_units, *it.factors) if u}
    targets = {ucum: spelling for spelling, ucum in table.items()}
    for spelling, ucum in entries.items():
        loc = (*prefix, spelling)
        if not spelling.strip() or spelling == ucum:
            raise doc.error(loc, f"synonym '{spelling}' → '{ucum}' maps a unit to itself or is empty", "remove it")
        if spelling in taken:
            raise doc.error(loc, f"synonym '{spelling}' → '{ucum}': item {taken[spelling]} takes '{spelling}' as it "
                            "is (unit, accept_units or factors)",
                            f"remove the synonym, or '{spelling}' from item {taken[spelling]}")
        if spelling in targets:
            raise doc.error(loc, f"synonym '{spelling}' → '{ucum}': '{spelling}' is the UCUM code that "
                            f"'{targets[spelling]}' stands for", f"remove '{spelling}' (a UCUM code is no spelling)")
        if ucum in table:
            raise doc.error(loc, f"synonym '{spelling}' → '{ucum}': '{ucum}' is itself a synonym (of {table[ucum]})",
                            f"map '{spelling}' to the UCUM code directly")
        if not units.is_valid(ucum):
            raise doc.error(loc, f"synonym '{spelling}' → '{ucum}': '{ucum}' is not a UCUM unit",
                            "give the UCUM code (https://ucum.org), e.g. umol/L, 10*9/L, Cel")
