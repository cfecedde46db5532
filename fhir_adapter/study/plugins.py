"""What the study loader needs to know of the plug-ins a study folder names: the endpoints' names, settings
models, needs and load-time checks, and the domain mappings' settings models — found by name through Python
entry points, so the loader imports no endpoint, derivation or mapping module, only the ones a study names.

The full endpoint (how it derives, its results keys and write-back) is :class:`fhir_adapter.endpoints.registry.
Endpoint`; this module sees it through :class:`EndpointSpec`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Protocol, TypeVar

from pydantic import BaseModel

from fhir_adapter.study.models import Item
from fhir_adapter.study.yamlfile import YamlDoc

#: entry-point group of the endpoints: name → "module:ENDPOINT"
ENDPOINT_GROUP = "fhir_adapter.endpoints"
#: entry-point group of the domain mappings with a rule file: name → "module:SettingsModel"
MAPPING_GROUP = "fhir_adapter.mappings"


class RegistryError(LookupError):
    """An endpoint name that no package provides, or endpoints that need each other."""


@dataclass(frozen=True)
class CheckInput:
    """What a load-time check reads: the endpoint's rule file, the items and the settings of other endpoints.
    A check raises ``doc.error(...)`` (file:line and the fix) or returns the settings, possibly completed."""

    doc: YamlDoc
    settings: BaseModel
    items: dict[str, Item]
    rules: dict[str, BaseModel]


class EndpointSpec(Protocol):
    """The part of an endpoint the study loader reads."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> type[BaseModel]: ...

    @property
    def needs(self) -> tuple[str, ...]: ...

    @property
    def check(self) -> Callable[[CheckInput], BaseModel] | None: ...


E = TypeVar("E", bound=EndpointSpec)

_added: dict[str, EndpointSpec] = {}
_loaded: dict[str, EndpointSpec] = {}


def add(endpoint: EndpointSpec) -> None:
    """Make ``endpoint`` available by its name (it wins over an installed one of the same name)."""
    _added[endpoint.name] = endpoint
    _loaded.pop(endpoint.name, None)


def remove(name: str) -> None:
    _added.pop(name, None)
    _loaded.pop(name, None)


def _entry_points(group: str) -> Mapping[str, EntryPoint]:
    return _installed(group, tuple(sys.path))


@lru_cache(maxsize=16)
def _installed(group: str, search_path: tuple[str, ...]) -> Mapping[str, EntryPoint]:
    """The entry points of ``group`` installed on ``search_path``, read once (each read scans the metadata of
    every installed distribution: a loaded study asked 14 times)."""
    return MappingProxyType({ep.name: ep for ep in entry_points(group=group)})


def available() -> list[str]:
    """Names of every endpoint a study may name (nothing is imported)."""
    return sorted(_entry_points(ENDPOINT_GROUP).keys() | _added.keys())


def find(name: str) -> EndpointSpec:
    """The endpoint called ``name``; imports its module on first use."""
    if name in _added:
        return _added[name]
    if name in _loaded:
        return _loaded[name]
    ep = _entry_points(ENDPOINT_GROUP).get(name)
    if ep is None:
        raise RegistryError(f"no endpoint '{name}' is installed (available: {', '.join(available()) or 'none'})")
    obj = ep.load()
    if getattr(obj, "name", None) != name or not hasattr(obj, "settings"):
        raise RegistryError(f"entry point '{name}' ({ep.value}) is not an endpoint called '{name}'")
    _loaded[name] = obj
    return obj  # type: ignore[no-any-return]


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


def run_order(endpoints: Iterable[E]) -> list[E]:
    """``endpoints`` ordered so each comes after those it needs (ties keep the given order). Raises
    :class:`RegistryError` naming a cycle or a needed endpoint that is not in the list."""
    given = list(endpoints)
    by_name = {e.name: e for e in given}
    for e in given:
        missing = [n for n in e.needs if n not in by_name]
        if missing:
            raise RegistryError(f"endpoint '{e.name}' needs {', '.join(missing)}: add "
                                f"{' and '.join(missing)} to the endpoints of study.yaml")
    order: list[E] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(e: E, path: list[str]) -> None:
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
