"""Load a study folder (``mappings/<study>/``) and an optional site overlay into one checked :class:`Study`.

Everything is checked here, at load time, so a run never starts on a broken mapping: unknown code systems,
unknown items, units that are not UCUM or cannot be converted into the item's unit (or only because UCUM
reads an annotation as 1), unit synonyms that name no UCUM unit, overlapping visit windows, rule files nobody
reads. Each error names the file, the line and what to change.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from fhir_adapter.study import keys_doc, plugins, unit_synonyms
from fhir_adapter.study.models import (
    Item,
    ItemsFile,
    Schedule,
    SiteItem,
    SiteOverlay,
    StudyInfo,
    SubjectIdentifierRule,
)
from fhir_adapter.study.plugins import CheckInput, EndpointSpec, RegistryError
from fhir_adapter.study.yamlfile import MappingError, YamlDoc, read_yaml
from fhir_adapter.terminology import units


class _SteroidTable(Protocol):
    """What medications.yaml takes from glucocorticoids.yaml (its settings, when the study names it)."""

    @property
    def drugs(self) -> Sequence[Any]: ...

    @property
    def systemic_routes(self) -> Sequence[str]: ...

M = TypeVar("M", bound=BaseModel)
CORE_FILES = ("study", "schedule", "items")


@dataclass
class Study:
    root: Path
    info: StudyInfo
    schedule: Schedule
    code_systems: dict[str, str]
    items: dict[str, Item]
    code_index: dict[tuple[str, str], str]
    infusion_codes: frozenset[tuple[str, str]]
    infusion_medication_codes: frozenset[tuple[str, str]]
    lymphodepletion_codes: frozenset[tuple[str, str]]
    #: settings per rule file: the domain mappings (medications, adverse_events) and the named endpoints
    rules: dict[str, BaseModel]
    #: Condition categories and codes that are not medical history (study.yaml + the site overlay)
    history_excluded_codes: frozenset[tuple[str, str]] = frozenset()
    files: dict[str, str] = field(default_factory=dict, repr=False)
    #: the endpoints study.yaml names, in its order (outputs follow it; they run in the order their needs give)
    endpoints: tuple[str, ...] = ()
    site: str | None = None
    #: which ResearchSubject identifier is the subject ID, and the file:line that says so
    subject_id_rule: SubjectIdentifierRule | None = None
    subject_id_rule_origin: str = ""
    #: study-defined conversion factors the site overlay replaced (override_factors), for check and run-report
    overrides: list[dict[str, Any]] = field(default_factory=list)
    siteid_rule: str = "research-study"
    meddra_dir: Path | None = None
    #: DM.COUNTRY: ISO 3166-1 alpha-3 code of the site's country (site overlay ``country``)
    country: str | None = None
    #: (unit, CRF unit) → (a, b) of ``CRF value = a·value + b`` for every accept_units entry, computed at load
    #: time; worker processes take them (:func:`fhir_adapter.terminology.units.learn`) instead of the registry
    unit_conversions: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict, repr=False)
    #: unit spellings that are not UCUM codes → their UCUM code (mappings/units/synonyms.yaml and the overlay's)
    unit_synonyms: dict[str, str] = field(default_factory=dict, repr=False)

    def ucum_unit(self, unit: str) -> str:
        """The UCUM code of a unit as the EHR spelt it: its synonym's (``µmol/L`` → ``umol/L``), else itself."""
        return self.unit_synonyms.get(unit, unit)

    def rule(self, name: str, model: type[M]) -> M:
        value = self.rules[name]
        assert isinstance(value, model)
        return value

    def resolve_code(self, ref: str) -> tuple[str, str]:
        alias, code = ref.split("|", 1)
        return self.code_systems[alias], code


def _validate(doc: YamlDoc, model: type[M], data: Any, prefix: tuple[str | int, ...] = (),
              anchor: str | None = None) -> M:
    """``data`` read into ``model``, or the first problem as an error naming the file, line and key, and the fix:
    an unknown key with the keys that go there (a misspelt required key is named as the unknown key it is, with
    the key it likely meant), else the reference of the file's keys (docs/study-files.md)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
        # a typo makes both an unknown key and a missing one: the unknown key is the mistake to name
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = (*prefix, *err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        reference = f"{keys_doc.DOC_NAME}#{anchor or keys_doc.anchor(doc.path.name)}"
        if err["type"] == "extra_forbidden":
            here = keys_doc.accepted_keys(model, tuple(err["loc"][:-1])) or []
            meant = [m[-1] for m in missing if m[:-1] == tuple(err["loc"][:-1])] or here
            close = difflib.get_close_matches(str(loc[-1]), [str(k) for k in meant], n=1)
            fix = (f"did you mean '{close[0]}'? " if close else "remove it or check its spelling; ") + (
                f"the keys here are {', '.join(here)} ({where}; {reference})" if here else f"({where}; {reference})")
            raise doc.error(loc, f"unknown key '{loc[-1]}'", fix) from None
        if err["type"] == "missing":
            raise doc.error(loc[:-1], f"missing required key '{loc[-1]}'", f"add it ({where}; {reference})") from None
        raise doc.error(loc, f"{where}: {msg}", f"see {reference} for what this key takes") from None


def _code(doc: YamlDoc, loc: tuple[str | int, ...], ref: str, systems: dict[str, str]) -> tuple[str, str]:
    if "|" not in ref:
        raise doc.error(loc, f"code '{ref}' has no code system", "write it as alias|code, e.g. loinc|777-3")
    alias, code = ref.split("|", 1)
    if alias not in systems:
        raise doc.error(
            loc, f"unknown code system '{alias}' in '{ref}'",
            f"use one of {sorted(systems)} or declare it under code_systems",
        )
    if not code:
        raise doc.error(loc, f"empty code in '{ref}'", "write alias|code")
    return systems[alias], code


def _annotation_only(doc: YamlDoc, loc: tuple[str | int, ...], item_id: str, unit: str, crf_unit: str) -> None:
    """Refuse an accepted unit that converts into the CRF unit only because UCUM reads annotations as 1
    (``mL/min`` as ``mL/min/{1.73_m2}``: a non-indexed clearance stored as an indexed eGFR)."""
    if units.annotations_differ(unit, crf_unit):
        raise doc.error(
            loc, f"item {item_id}: '{unit}' and the CRF unit '{crf_unit}' differ by an annotation in braces; UCUM "
            "reads annotations as 1, so a UCUM conversion cannot tell whether they measure the same quantity (a "
            "non-indexed mL/min is not an indexed mL/min/{1.73_m2})",
            f"remove '{unit}' from accept_units; only if, checked clinically, it measures the same quantity as "
            f"'{crf_unit}', give it under `factors` of item {item_id} ('{unit}': <factor into {crf_unit}>)")


def _check_units(doc: YamlDoc, item_id: str, item: Item, base: tuple[str | int, ...]) -> None:
    if item.value != "quantity" or item.unit is None:
        return
    if not units.is_valid(item.unit) and not item.unit.startswith("{"):
        raise doc.error((*base, "unit"), f"'{item.unit}' is not a UCUM unit", "use a UCUM code, e.g. mg/dL, 10*9/L")
    for i, u in enumerate(item.accept_units):
        try:
            units.converter(u, item.unit)
        except units.UnitError as exc:
            raise doc.error(
                (*base, "accept_units", i), f"item {item_id}: {exc}",
                f"remove '{u}' or give an analyte factor under `factors` for it",
            ) from None
        if u not in item.factors:
            _annotation_only(doc, (*base, "accept_units", i), item_id, u, item.unit)
    for u in item.factors:
        if not units.is_valid(u):
            raise doc.error((*base, "factors", u), f"'{u}' is not a UCUM unit", "use a UCUM code")


def _check_overlay_units(doc: YamlDoc, item_id: str, base: Item, add: SiteItem) -> None:
    """Units a site overlay adds must convert into the item's CRF unit; errors name the overlay's line."""
    loc: tuple[str | int, ...] = ("items", item_id)
    if (add.accept_units or add.factors) and (base.value != "quantity" or base.unit is None):
        raise doc.error(loc, f"item {item_id} is not a quantity: it takes no units",
                        "remove accept_units and factors")
    for i, u in enumerate(add.accept_units):
        try:
            units.converter(u, str(base.unit))
        except units.UnitError as exc:
            raise doc.error((*loc, "accept_units", i), f"item {item_id}: {exc}",
                            f"remove '{u}' or give an analyte factor under `factors` for it") from None
        if u not in {**base.factors, **add.factors, **add.override_factors}:
            _annotation_only(doc, (*loc, "accept_units", i), item_id, u, str(base.unit))
    for u in add.factors:
        if not units.is_valid(u):
            raise doc.error((*loc, "factors", u), f"'{u}' is not a UCUM unit", "use a UCUM code")


def _factor_overrides(doc: YamlDoc, item_id: str, base: Item, add: SiteItem) -> list[dict[str, Any]]:
    """A site adds factors for new units; changing a factor the study defines takes ``override_factors``
    (and is reported), so a study's conversion is never changed by a line that looks like an addition."""
    loc: tuple[str | int, ...] = ("items", item_id)
    for u, f in add.factors.items():
        if u in base.factors and not math.isclose(base.factors[u], f, rel_tol=1e-6):  # the same, to 6 digits
            raise doc.error((*loc, "factors", u),
                            f"item {item_id}: the study defines the factor for '{u}' ({base.factors[u]}); "
                            f"`factors` only adds units",
                            "remove it to keep the study's factor, or move it under `override_factors:` to change "
                            "it for this site (the override is reported by check and in run-report.json)")
    out: list[dict[str, Any]] = []
    for u, f in add.override_factors.items():
        if u not in base.factors:
            raise doc.error((*loc, "override_factors", u),
                            f"item {item_id}: the study defines no factor for '{u}' to override",
                            "put a new unit's factor under `factors:`")
        if not units.is_valid(u):
            raise doc.error((*loc, "override_factors", u), f"'{u}' is not a UCUM unit", "use a UCUM code")
        out.append({"item": item_id, "unit": u, "study_factor": base.factors[u], "site_factor": f,
                    "where": f"{doc.path}:{doc.line_of((*loc, 'override_factors', u))}"})
    return out


def _check_windows(doc: YamlDoc) -> None:
    """Overlapping visit windows, reported at the line of the later visit (the model check has no line)."""
    visits = doc.data.get("visits") if isinstance(doc.data, dict) else None
    if not isinstance(visits, list):
        return
    spans = []
    for i, v in enumerate(visits):
        w = v.get("window") if isinstance(v, dict) else None
        if isinstance(w, list) and len(w) == 2 and all(isinstance(x, int) for x in w):
            spans.append((w[0], w[1], str(v.get("id")), i))
    spans.sort()
    for (_a0, a1, a, _ai), (b0, _b1, b, bi) in itertools.pairwise(spans):
        if b0 <= a1:
            raise doc.error(("visits", bi), f"visit windows of {a} and {b} overlap: a result could belong to "
                            "both", f"end {a} before day {b0} or start {b} after day {a1}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


#: the checkout fhir-adapter runs from (``mappings/`` lives at its top level)
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def resolve_study_dir(root: Path) -> Path:
    """``root`` as given when it exists; a relative path that does not exist here is looked up in the
    project's own tree (so ``--study mappings/lcar-aio``, the default, and ``--site mappings/sites/...`` work
    from any directory), and a bare name as a study folder the project ships (``--study syn-ln``)."""
    root = Path(root)
    if root.exists() or root.is_absolute():
        return root
    shipped = PROJECT_ROOT / root
    if not shipped.exists() and len(root.parts) == 1 and not root.suffix:
        shipped = PROJECT_ROOT / "mappings" / root
    return shipped if shipped.exists() else root


def resolve_site(site: Path, study_root: Path) -> Path:
    """``--site``: a path to an overlay file, or a site name (``example-site``) looked up as
    ``sites/<name>.yaml`` next to the study folder, then in the project's ``mappings/sites/``."""
    found = resolve_study_dir(site)
    if found.exists() or site.suffix or len(site.parts) != 1:
        return found
    name = f"{site}.yaml"
    for candidate in (study_root.parent / "sites" / name, PROJECT_ROOT / "mappings" / "sites" / name):
        if candidate.is_file():
            return candidate
    folders = list(dict.fromkeys([study_root.parent / "sites", PROJECT_ROOT / "mappings" / "sites"]))
    known = sorted({p.stem for folder in folders for p in folder.glob("*.yaml")})
    raise MappingError(site, None, "no such site overlay",
                       f"no {name} in {' or '.join(str(f) for f in folders)}: pass the overlay's file "
                       f"(--site path/to/<site>.yaml) or a site name of {known or 'those folders'}")


def load_study(root: Path, site: Path | None = None) -> Study:
    """Read and check ``root`` (a study folder) and the optional ``site`` overlay."""
    root = resolve_study_dir(root)
    if not root.is_dir():
        raise MappingError(root, None, "study folder not found", "pass --study mappings/<study>")
    docs: dict[str, YamlDoc] = {}
    for name in CORE_FILES:
        path = root / f"{name}.yaml"
        if not path.exists():
            raise MappingError(path, None, f"missing {name}.yaml", "every study folder needs study, schedule, items")
        docs[name] = read_yaml(path)
    sdoc = docs["study"]
    named = _named_endpoints(sdoc)
    mappings = plugins.mapping_names()
    extra = sorted(p for p in root.glob("*.yaml") if p.stem not in CORE_FILES)
    for path in extra:
        if path.stem not in mappings and path.stem not in named:
            raise _unexpected_rule_file(path, sdoc, mappings)
        docs[path.stem] = read_yaml(path)
    for name in [*mappings, *named]:
        if name not in docs:
            why = (f"study.yaml:{sdoc.line_of(('endpoints', list(named).index(name)))} names the endpoint '{name}'"
                   if name in named else f"every study maps {name}")
            raise MappingError(root / f"{name}.yaml", None, f"missing rule file {name}.yaml ({why})",
                               "copy it from mappings/lcar-aio/ and adapt it"
                               + (f", or remove {name} from the endpoints of study.yaml" if name in named else ""))

    if not isinstance(sdoc.data, dict) or "study" not in sdoc.data:
        raise sdoc.error((), "study.yaml must have a top-level `study:` mapping", "see mappings/lcar-aio/study.yaml")
    info = _validate(sdoc, StudyInfo, sdoc.data["study"], ("study",))
    _check_windows(docs["schedule"])
    schedule = _validate(docs["schedule"], Schedule, docs["schedule"].data)
    idoc = docs["items"]
    items_file = _validate(idoc, ItemsFile, idoc.data)
    systems = dict(items_file.code_systems)
    items = dict(items_file.items)
    item_codes: dict[str, list[str]] = {k: list(v.codes) for k, v in items.items()}
    overlay: SiteOverlay | None = None
    odoc: YamlDoc | None = None
    overrides: list[dict[str, Any]] = []
    if site is not None:
        odoc = read_yaml(resolve_site(Path(site), root))
        overlay = _validate(odoc, SiteOverlay, odoc.data, anchor=keys_doc.SITE_ANCHOR)
        for alias, uri in overlay.code_systems.items():
            if alias in systems and systems[alias] != uri:
                raise odoc.error(("code_systems", alias), f"alias '{alias}' already means {systems[alias]}",
                                 "choose another alias for the local system")
            systems[alias] = uri
        for item_id, add in overlay.items.items():
            if item_id not in items:
                raise odoc.error(("items", item_id), f"unknown item '{item_id}'",
                                 "a site overlay can only add codes and units to items of the study mapping")
            base = items[item_id]
            _check_overlay_units(odoc, item_id, base, add)
            overrides += _factor_overrides(odoc, item_id, base, add)
            items[item_id] = base.model_copy(update={
                "accept_units": (*base.accept_units, *add.accept_units),
                # a site factor for a unit the study defines is the same one (checked above): the study's wins
                "factors": {**add.factors, **base.factors, **add.override_factors},
            })
            item_codes[item_id].extend(add.codes)
        if overlay.timezone:
            info = StudyInfo.model_validate({**info.model_dump(), "timezone": overlay.timezone})
        if overlay.study_identifier_system:
            info = StudyInfo.model_validate({**info.model_dump(), "identifier_system": overlay.study_identifier_system})
    id_rule: SubjectIdentifierRule | None = None
    id_origin = f"{sdoc.path}:{sdoc.line_of(('study', 'subject_identifier_system')) or ''}".rstrip(":")
    if info.subject_identifier_system:
        id_rule = SubjectIdentifierRule(system=info.subject_identifier_system)
    if overlay is not None and odoc is not None and overlay.subject_identifier is not None:
        id_rule = overlay.subject_identifier
        id_origin = f"{odoc.path}:{odoc.line_of(('subject_identifier',))}"

    code_index: dict[tuple[str, str], str] = {}
    testcds: dict[tuple[str, str], str] = {}
    for item_id, item in items.items():
        from_overlay = overlay is not None and item_id in overlay.items
        for i, ref in enumerate(item_codes[item_id]):
            in_base = i < len(item.codes)
            doc = idoc if in_base or not from_overlay or odoc is None else odoc
            loc: tuple[str | int, ...] = ("items", item_id, "codes", i if in_base else i - len(item.codes))
            key = _code(doc, loc, ref, systems)
            if key in code_index and code_index[key] != item_id:
                raise doc.error(loc, f"code {ref} already feeds item '{code_index[key]}'",
                                "a code can feed one item only")
            code_index[key] = item_id
        _check_units(idoc, item_id, item, ("items", item_id))
        if item.testcd and (first := testcds.setdefault((item.domain, item.testcd), item_id)) != item_id:
            raise idoc.error(("items", item_id, "testcd"), f"testcd {item.testcd} is already used by item '{first}'",
                             f"give each {item.domain} item its own testcd")
        items[item_id] = item.model_copy(update={"codes": tuple(item_codes[item_id])})

    for i, name in enumerate(schedule.unscheduled_items):
        if name not in items:
            raise docs["schedule"].error(("unscheduled_items", i), f"unknown item '{name}'",
                                         "use an item id of items.yaml")

    synonyms = _unit_synonyms(items, overlay, odoc)
    infusion = frozenset(_code(sdoc, ("study", "infusion_codes", i), r, systems)
                         for i, r in enumerate(info.infusion_codes))
    if overlay is not None and odoc is not None:
        infusion |= frozenset(_code(odoc, ("infusion_codes", i), r, systems)
                              for i, r in enumerate(overlay.infusion_codes))
    not_history = frozenset(_code(sdoc, ("study", "history_excluded_codes", i), r, systems)
                            for i, r in enumerate(info.history_excluded_codes))
    if overlay is not None and odoc is not None:
        not_history |= frozenset(_code(odoc, ("history_excluded_codes", i), r, systems)
                                 for i, r in enumerate(overlay.history_excluded_codes))
    infusion_meds = frozenset(_code(sdoc, ("study", "infusion_medication_codes", i), r, systems)
                              for i, r in enumerate(info.infusion_medication_codes))
    ld = frozenset(_code(sdoc, ("study", "lymphodepletion_codes", i), r, systems)
                   for i, r in enumerate(info.lymphodepletion_codes))

    rules = _endpoint_rules(docs, sdoc, named, items, overlay)
    gc: _SteroidTable | None = rules.get("glucocorticoids")  # type: ignore[assignment]
    for name in mappings:
        model = plugins.mapping_settings(name)
        assert model is not None
        data = _medications_data(docs[name], gc) if name == "medications" else docs[name].data
        rules[name] = _validate(docs[name], model, data)

    files = {f"{name}.yaml": _sha(doc.path) for name, doc in docs.items()}
    files[f"mappings/units/{unit_synonyms.SYNONYMS_FILE.name}"] = _sha(unit_synonyms.SYNONYMS_FILE)
    if odoc is not None:
        files[str(odoc.path)] = _sha(odoc.path)
    return Study(
        root=root, info=info, schedule=schedule, code_systems=systems, items=items, code_index=code_index,
        infusion_codes=infusion, infusion_medication_codes=infusion_meds, lymphodepletion_codes=ld,
        history_excluded_codes=not_history, rules=rules, files=files, endpoints=tuple(named),
        site=overlay.site if overlay else None, subject_id_rule=id_rule, subject_id_rule_origin=id_origin,
        overrides=overrides,
        siteid_rule=overlay.siteid if overlay else "research-study",
        meddra_dir=_meddra_dir(odoc, overlay), country=overlay.country if overlay else None,
        unit_conversions=_unit_conversions(items), unit_synonyms=synonyms,
    )


def _unit_synonyms(items: dict[str, Item], overlay: SiteOverlay | None, odoc: YamlDoc | None) -> dict[str, str]:
    """The shared unit synonyms with the overlay's added, checked against the (merged) items; an overlay's
    mistake is reported at the overlay's line."""
    shared_doc, shared = unit_synonyms.read_shared()
    site = overlay.unit_synonyms if overlay is not None else {}
    table = unit_synonyms.merged(shared, site, odoc)
    unit_synonyms.check(shared, shared, items, shared_doc, ("synonyms",))
    if odoc is not None:
        unit_synonyms.check({s: u for s, u in site.items() if s not in shared}, table, items, odoc,
                            ("unit_synonyms",))
    return table


def _unit_conversions(items: dict[str, Item]) -> dict[tuple[str, str], tuple[float, float]]:
    """The accepted units' conversions into their CRF units (each checked, hence cached, by :func:`_check_units`)."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for item in items.values():
        if item.value != "quantity" or item.unit is None:
            continue
        for u in item.accept_units:
            if u != item.unit:
                c = units.converter(u, item.unit)
                out[(u, item.unit)] = (c.a, c.b)
    return out


def _medications_data(doc: YamlDoc, gc: _SteroidTable | None) -> Any:
    """medications.yaml with the facts glucocorticoids.yaml owns filled in: the systemic routes, and for
    every glucocorticoid of its table the drug class and RxNorm ingredient (its names and product codes
    stay in medications.yaml). A medications.yaml that states one of them differently is an error. A study
    that does not name the glucocorticoids endpoint states its systemic routes in medications.yaml."""
    data = doc.data
    if gc is None or not isinstance(data, dict) or not isinstance(data.get("drugs", {}), dict):
        return data
    owner = "glucocorticoids.yaml"
    if "systemic_routes" in data:
        raise doc.error(("systemic_routes",), f"the systemic routes are set in {owner}",
                        f"remove systemic_routes here and edit systemic_routes in {owner}")
    drugs: dict[str, Any] = dict(data.get("drugs") or {})
    table = {g.name: g for g in gc.drugs}
    for name, entry in drugs.items():
        if isinstance(entry, dict) and entry.get("class") == "glucocorticoid" and name not in table:
            raise doc.error(("drugs", name), f"glucocorticoid '{name}' is not in {owner}",
                            f"add it to the drugs of {owner} with its factor (the steroid list lives there)")
    for g in gc.drugs:
        entry = drugs.get(g.name) or {}
        if not isinstance(entry, dict):
            raise doc.error(("drugs", g.name), f"'{g.name}' must be a mapping (names, codes)", "see the other drugs")
        if entry.get("class", "glucocorticoid") != "glucocorticoid":
            raise doc.error(("drugs", g.name, "class"), f"'{g.name}' is a glucocorticoid in {owner}",
                            f"remove class here ({owner} owns the steroid list)")
        if g.rxnorm and str(entry.get("rxnorm", g.rxnorm)) != g.rxnorm:
            raise doc.error(("drugs", g.name, "rxnorm"), f"RxNorm {entry['rxnorm']} differs from {g.rxnorm} in {owner}",
                            f"remove rxnorm here ({owner} owns the ingredient codes)")
    merged: dict[str, Any] = {}
    for g in gc.drugs:   # the steroid table first, in its order; then the other drugs as listed
        entry = drugs.get(g.name) or {}
        names = [n for n in entry.get("names") or [] if n != g.name]
        merged[g.name] = {**entry, "class": "glucocorticoid", "rxnorm": g.rxnorm or entry.get("rxnorm"),
                          "names": [g.name, *names]}
    merged.update((name, entry) for name, entry in drugs.items() if name not in merged)
    return {**data, "drugs": merged, "systemic_routes": list(gc.systemic_routes)}


def _meddra_dir(odoc: YamlDoc | None, overlay: SiteOverlay | None) -> Path | None:
    """The overlay's ``meddra_dir`` (relative to the overlay file), checked to hold the MedAscii files."""
    if odoc is None or overlay is None or not overlay.meddra_dir:
        return None
    folder = odoc.path.parent / overlay.meddra_dir
    missing = [f for f in ("llt.asc", "mdhier.asc") if not (folder / f).is_file()]
    if missing:
        raise odoc.error(("meddra_dir",), f"MedDRA folder {folder} lacks {', '.join(missing)}",
                         "point meddra_dir at the MedAscii folder of the site's MedDRA release (llt.asc, mdhier.asc)")
    return folder


def iter_item_ids(study: Study, domain: str | Iterable[str]) -> list[str]:
    domains = {domain} if isinstance(domain, str) else set(domain)
    return [k for k, v in study.items.items() if v.domain in domains]


# --- endpoints: which ones the study names, their rule files, their load-time checks ---------------------------
def _named_endpoints(sdoc: YamlDoc) -> list[str]:
    """``endpoints:`` of study.yaml: names of installed endpoints, each once, whose needs are named too."""
    data = sdoc.data if isinstance(sdoc.data, dict) else {}
    names = data.get("endpoints")
    if names is None:
        raise sdoc.error((), "study.yaml names no endpoints",
                         "add a top-level `endpoints: [...]` listing the endpoints the study derives "
                         f"(available: {', '.join(plugins.available())}; `endpoints: []` for none)")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise sdoc.error(("endpoints",), "`endpoints` must be a list of endpoint names",
                         "write e.g. endpoints: [sledai2k, pga]")
    known = plugins.available()
    found: list[EndpointSpec] = []
    for i, name in enumerate(names):
        if name in names[:i]:
            raise sdoc.error(("endpoints", i), f"endpoint '{name}' is named twice", "name it once")
        if name not in known:
            raise sdoc.error(("endpoints", i), f"unknown endpoint '{name}'",
                             f"use one of {', '.join(known) or '(none installed)'}, or install the package that "
                             "provides it (entry-point group fhir_adapter.endpoints; fhir-adapter's own are "
                             "registered when it is installed: `make install` or `pip install -e .`)")
        found.append(plugins.find(name))
    try:
        plugins.run_order(found)
    except RegistryError as exc:
        raise sdoc.error(("endpoints",), str(exc), "name the endpoints each one needs, with no cycle") from None
    return list(names)


def _unexpected_rule_file(path: Path, sdoc: YamlDoc, mappings: list[str]) -> MappingError:
    if path.stem in plugins.available():
        return MappingError(path, None, f"rule file of the endpoint '{path.stem}', which study.yaml does not name",
                            f"add {path.stem} to the endpoints of {sdoc.path.name} "
                            f"(line {sdoc.line_of(('endpoints',))}) or remove {path.name}")
    return MappingError(path, None, f"unknown rule file '{path.name}'",
                        f"rule files are those of the domain mappings ({', '.join(mappings)}) and of the named "
                        f"endpoints ({', '.join(plugins.available())}); rename or remove it")


def _endpoint_rules(docs: dict[str, YamlDoc], sdoc: YamlDoc, named: list[str], items: dict[str, Item],
                    overlay: SiteOverlay | None) -> dict[str, BaseModel]:
    """Each named endpoint's rule file read into its settings model and checked, in run order (a check may
    read the settings of the endpoints it needs)."""
    rules: dict[str, BaseModel] = {}
    for ep in plugins.run_order(plugins.find(n) for n in named):
        settings: BaseModel = _validate(docs[ep.name], ep.settings, docs[ep.name].data)
        if ep.name == "glucocorticoids" and overlay is not None and overlay.medication_list_complete is not None:
            settings = settings.model_copy(update={"medication_list_complete": overlay.medication_list_complete})
        if ep.check is not None:
            settings = ep.check(CheckInput(doc=docs[ep.name], settings=settings, items=items, rules=rules))
        rules[ep.name] = settings
    return rules
