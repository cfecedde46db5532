"""The endpoint registry: endpoints are plug-ins a study names in ``study.yaml`` (``endpoints: [...]``).

An :class:`Endpoint` declares its name, its settings model (read from ``mappings/<study>/<name>.yaml``), the
endpoints it needs, whether it runs per subject or across subjects (on the driver), its typed result model and
how that result becomes ``results/study.json`` keys and write-back Observations.

Endpoints are found by name through the Python entry-point group ``fhir_adapter.endpoints`` (name →
``module:ENDPOINT``): fhir-adapter's own are registered that way in its ``pyproject.toml``, and a site or a
sponsor ships one as a separate package with the same group. :func:`register` adds one from code (tests, a
notebook). Nothing is imported until a study names it, so a study that uses three endpoints imports three.

Domain-mapping settings (``medications.yaml``, ``adverse_events.yaml``) are found the same way, through the
group ``fhir_adapter.mappings`` (name → ``module:SettingsModel``), so the study loader never imports a mapping
module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, get_type_hints

from pydantic import BaseModel

if TYPE_CHECKING:
    from fhir_adapter.crf.models import SubjectCRF
    from fhir_adapter.roster.enrollees import Enrollee
    from fhir_adapter.study.load import Study
    from fhir_adapter.study.models import Item
    from fhir_adapter.study.yamlfile import YamlDoc

ENDPOINT_GROUP = "fhir_adapter.endpoints"
MAPPING_GROUP = "fhir_adapter.mappings"

T = TypeVar("T")
S = TypeVar("S", bound=BaseModel)


class RegistryError(LookupError):
    """An endpoint name that no package provides, or endpoints that need each other."""


def _need(found: dict[str, Any], name: str, kind: type[T], who: str) -> T:
    value = found.get(name)
    if not isinstance(value, kind):
        raise RegistryError(f"endpoint '{who}' needs the result of '{name}' ({kind.__name__}), which did not run")
    return value


@dataclass(frozen=True)
class SubjectInput:
    """What a per-subject derivation reads: the subject's CRF (never changed), the study, the endpoint's
    settings and the results of the endpoints it needs."""

    crf: SubjectCRF
    study: Study
    settings: BaseModel
    results: dict[str, Any]
    endpoint: str = ""

    def need(self, name: str, kind: type[T]) -> T:
        """The result of endpoint ``name`` (one of this endpoint's ``needs``)."""
        return _need(self.results, name, kind, self.endpoint)

    def rules(self, model: type[S]) -> S:
        """This endpoint's settings as their model."""
        assert isinstance(self.settings, model)
        return self.settings


@dataclass(frozen=True)
class OutputInput:
    """What write-back reads for one subject: the endpoint's result, the subject, the study."""

    result: Any
    enrollee: Enrollee
    study: Study
    settings: BaseModel
    day1: dt.date | None


@dataclass(frozen=True)
class StudyInput:
    """What a study-level step reads: all subject rows of ``results/study.json`` and the settings."""

    study: Study
    settings: BaseModel
    rows: Sequence[dict[str, Any]]


@dataclass(frozen=True)
class CheckInput:
    """What a load-time check reads: the endpoint's rule file, the items and the settings of other endpoints.
    A check raises ``doc.error(...)`` (file:line and the fix) or returns the settings, possibly completed."""

    doc: YamlDoc
    settings: BaseModel
    items: dict[str, Item]
    rules: dict[str, BaseModel]


class Unit(NamedTuple):
    """A key's UCUM unit, as ``Annotated[float | None, Unit("mg/d")]`` in a contract."""

    ucum: str


def contract_keys(contract: type | None) -> dict[str, Any]:
    """The keys a contract (a TypedDict) declares, with their types (``Annotated`` carries a :class:`Unit`)."""
    return get_type_hints(contract, include_extras=True) if contract is not None else {}


@dataclass(frozen=True)
class Endpoint:
    """One endpoint a study may name.

    * ``derive`` (per-subject endpoints): pure, CRF → ``result`` (an instance of ``result``);
    * ``visit_keys`` / ``subject_keys``: the result as keys of the subject's visit rows / subject row of
      ``results/study.json`` (``visit_keys(result, visit_id)``);
    * ``study_keys``: top-level keys of ``results/study.json`` computed from all subject rows (study-level
      endpoints such as dose escalation have only this);
    * ``contracts``: the keys each of these writes, as TypedDicts (visit row, subject row, top level) — the
      endpoint's part of the ``results/study.json`` contract, which a test holds every output to;
    * ``observations``: the result as write-back Observations (codes of ``profiles/CodeSystem-results.json``,
      listed in ``codes``);
    * ``check``: load-time cross-file checks of the settings (items exist, groups exist...);
    * ``annotate``: CRF fields as the exports show them with this endpoint's derived flags (e.g. the AEs with
      their TEAE flag), applied to a copy for the exports only; the CRF file stays the mapping's output.
    """

    name: str
    settings: type[BaseModel]
    summary: str
    result: type[Any] | None = None
    needs: tuple[str, ...] = ()
    level: Literal["subject", "study"] = "subject"
    derive: Callable[[SubjectInput], Any] | None = None
    visit_keys: Callable[[Any, str], Mapping[str, Any]] | None = None
    subject_keys: Callable[[Any], Mapping[str, Any]] | None = None
    study_keys: Callable[[StudyInput], Mapping[str, Any]] | None = None
    observations: Callable[[OutputInput], list[dict[str, Any]]] | None = None
    codes: tuple[str, ...] = ()
    contracts: Contracts | None = None
    check: Callable[[CheckInput], BaseModel] | None = None
    annotate: Callable[[Any], dict[str, Any]] | None = None

    def keys(self, where: Literal["visit", "subject", "study"]) -> dict[str, Any]:
        """The keys this endpoint writes to a visit row, a subject row or the top of ``results/study.json``."""
        c = self.contracts or Contracts()
        return contract_keys({"visit": c.visit, "subject": c.subject, "study": c.study}[where])

    def __post_init__(self) -> None:
        if self.level == "subject" and (self.derive is None or self.result is None):
            raise ValueError(f"endpoint '{self.name}': a per-subject endpoint needs derive and result")
        if self.level == "study" and self.study_keys is None:
            raise ValueError(f"endpoint '{self.name}': a study-level endpoint needs study_keys")


@dataclass(frozen=True)
class Contracts:
    """The TypedDicts of an endpoint's ``results/study.json`` keys per visit, per subject and at the top."""

    visit: type | None = None
    subject: type | None = None
    study: type | None = None


@dataclass
class _Registry:
    added: dict[str, Endpoint] = field(default_factory=dict)
    loaded: dict[str, Endpoint] = field(default_factory=dict)


_registry = _Registry()


def register(endpoint: Endpoint) -> None:
    """Make ``endpoint`` available by its name (in addition to the installed entry points; it wins over one of
    the same name)."""
    _registry.added[endpoint.name] = endpoint
    _registry.loaded.pop(endpoint.name, None)


def unregister(name: str) -> None:
    """Forget an endpoint added with :func:`register`."""
    _registry.added.pop(name, None)
    _registry.loaded.pop(name, None)


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def available() -> list[str]:
    """Names of every endpoint a study may name (nothing is imported)."""
    return sorted(_entry_points(ENDPOINT_GROUP).keys() | _registry.added.keys())


def get(name: str) -> Endpoint:
    """The endpoint called ``name``; imports its module on first use."""
    if name in _registry.added:
        return _registry.added[name]
    if name in _registry.loaded:
        return _registry.loaded[name]
    ep = _entry_points(ENDPOINT_GROUP).get(name)
    if ep is None:
        raise RegistryError(f"no endpoint '{name}' is installed (available: {', '.join(available()) or 'none'})")
    obj = ep.load()
    if not isinstance(obj, Endpoint) or obj.name != name:
        raise RegistryError(f"entry point '{name}' ({ep.value}) is not an Endpoint called '{name}'")
    _registry.loaded[name] = obj
    return obj


def mapping_settings(name: str) -> type[BaseModel] | None:
    """The settings model of the domain mapping ``name`` (``medications``, ``adverse_events``), or None."""
    ep = _entry_points(MAPPING_GROUP).get(name)
    if ep is None:
        return None
    model = ep.load()
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise RegistryError(f"mapping entry point '{name}' ({ep.value}) is not a pydantic model")
    return model


def mapping_names() -> list[str]:
    return sorted(_entry_points(MAPPING_GROUP))


def run_order(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """``endpoints`` ordered so each comes after those it needs (ties keep the given order). Raises
    :class:`RegistryError` naming a cycle or a needed endpoint that is not in the list."""
    given = list(endpoints)
    by_name = {e.name: e for e in given}
    for e in given:
        missing = [n for n in e.needs if n not in by_name]
        if missing:
            raise RegistryError(f"endpoint '{e.name}' needs {', '.join(missing)}: add "
                                f"{' and '.join(missing)} to the endpoints of study.yaml")
    order: list[Endpoint] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(e: Endpoint, path: list[str]) -> None:
        if state.get(e.name) == 2:
            return
        if state.get(e.name) == 1:
            cycle = [*path[path.index(e.name):], e.name]
            raise RegistryError(f"endpoints need each other in a cycle: {' -> '.join(cycle)}")
        state[e.name] = 1
        for n in e.needs:
            visit(by_name[n], [*path, e.name])
        state[e.name] = 2
        order.append(e)

    for e in given:
        visit(e, [])
    return order


def check_items(c: CheckInput, refs: Iterable[tuple[tuple[str | int, ...], str]]) -> None:
    """Each (location in the rule file, item id) names an item of items.yaml, else a load error at its line."""
    for loc, item in refs:
        if item not in c.items:
            raise c.doc.error(loc, f"unknown item '{item}'", "use an item id of items.yaml")
