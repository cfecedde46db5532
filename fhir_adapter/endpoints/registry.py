"""The endpoint registry: endpoints are plug-ins a study names in ``study.yaml`` (``endpoints: [...]``).

An :class:`Endpoint` declares its name, its settings model (read from ``mappings/<study>/<name>.yaml``), the
endpoints it needs, whether it runs per subject or across subjects (on the driver), its typed result model and
how that result becomes ``results/study.json`` keys and write-back Observations.

Endpoints are found by name through the Python entry-point group ``fhir_adapter.endpoints`` (name →
``module:ENDPOINT``): fhir-adapter's own are registered that way in its ``pyproject.toml``, and a site or a
sponsor ships one as a separate package with the same group. :func:`register` adds one from code (tests, a
notebook). Nothing is imported until a study names it, so a study that uses three endpoints imports three.

Domain-mapping settings (``medications.yaml``, ``adverse_events.yaml``) are found the same way, through the
group ``fhir_adapter.mappings`` (name → ``module:SettingsModel``). The lookup by entry point, the run order and
the load-time check's input live with the study loader (:mod:`fhir_adapter.study.plugins`), which reads only
an endpoint's name, settings, needs and check, so it imports no endpoint, derivation or mapping module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, get_type_hints

from pydantic import BaseModel

from fhir_adapter.study import plugins
from fhir_adapter.study.plugins import (
    ENDPOINT_GROUP,
    MAPPING_GROUP,
    CheckInput,
    RegistryError,
    check_items,
    run_order,
)

if TYPE_CHECKING:
    from fhir_adapter.crf.models import SubjectCRF
    from fhir_adapter.roster.enrollees import Enrollee
    from fhir_adapter.study.load import Study

__all__ = ["ENDPOINT_GROUP", "MAPPING_GROUP", "CheckInput", "Contracts", "Endpoint", "OutputInput", "RegistryError",
           "StudyInput", "SubjectInput", "Unit", "available", "check_items", "endpoints_of", "get", "register",
           "run_order", "unregister"]

T = TypeVar("T")
S = TypeVar("S", bound=BaseModel)


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
    * ``annotate``: CRF fields with this endpoint's per-record derived values (e.g. the AEs with their TEAE
      flag), applied to a copy that the CRF file (``OUT/crf``) and the exports show; the CRF the derivations
      read stays the mapping's output, so a derivation never reads another's annotations.
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


def register(endpoint: Endpoint) -> None:
    """Make ``endpoint`` available by its name (in addition to the installed entry points; it wins over one of
    the same name)."""
    plugins.add(endpoint)


def unregister(name: str) -> None:
    """Forget an endpoint added with :func:`register`."""
    plugins.remove(name)


def available() -> list[str]:
    """Names of every endpoint a study may name (nothing is imported)."""
    return plugins.available()


def get(name: str) -> Endpoint:
    """The endpoint called ``name``; imports its module on first use."""
    found = plugins.find(name)
    if not isinstance(found, Endpoint):
        raise RegistryError(f"endpoint '{name}' is not a fhir_adapter.endpoints.registry.Endpoint")
    return found


def endpoints_of(study: Study) -> list[Endpoint]:
    """The endpoints the study names, in study.yaml's order (outputs follow it)."""
    return [get(n) for n in study.endpoints]
