"""Which generator writes a study's synthetic feed.

Every study gets the generic feed (:mod:`.study_feed`: patients, enrolment, the first dose, the scheduled
visits' lab values for its items, glucocorticoids). A study whose endpoints need clinical detail the generic
feed does not draw — SLEDAI-2K descriptors, CRS/ICANS and other toxicities, CAR-T cellular kinetics, DLT
scenarios — is written by the plug-in that draws them. A plug-in is imported only when a study names one of
its endpoints.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fhir_adapter.study.load import resolve_study_dir
from fhir_adapter.study.yamlfile import read_yaml

FeedWriter = Callable[[Path, int, int], dict[str, int]]


@dataclass(frozen=True, slots=True)
class GeneratorPlugin:
    name: str
    #: the study uses this plug-in when it names any of these endpoints
    endpoints: frozenset[str]
    #: "module:function" of a writer (out_dir, subjects, seed) -> counts per resource type
    writer: str
    description: str
    #: the study whose trial the writer draws (its ResearchStudy identifier, sites, arms and schedule are the
    #: writer's own): a feed for another study id would match no ResearchStudy of that study
    study_id: str


PLUGINS: tuple[GeneratorPlugin, ...] = (
    GeneratorPlugin(
        name="cart-sle",
        endpoints=frozenset({"sledai2k", "kinetics", "dlt"}),
        writer="fhir_adapter.synth.cart_sle.feed:write_feed",
        description="CAR-T cell therapy in SLE: SLEDAI-2K descriptors, CRS/ICANS, cellular kinetics, DLT "
                    "scenarios, lymphodepletion, dose escalation",
        study_id="LCAR-AIO-SLE",
    ),
)


def study_endpoints(study_dir: Path) -> frozenset[str]:
    """The endpoints a study folder names: ``endpoints`` in study.yaml, else the rule files it holds."""
    doc = read_yaml(study_dir / "study.yaml")
    data = doc.data if isinstance(doc.data, dict) else {}
    named = data.get("endpoints")
    if named is None and isinstance(data.get("study"), dict):
        named = data["study"].get("endpoints")
    if isinstance(named, list):
        return frozenset(str(e) if not isinstance(e, dict) else str(next(iter(e))) for e in named)
    return frozenset(p.stem for p in study_dir.glob("*.yaml"))


def _study_id(study_dir: Path) -> str | None:
    doc = read_yaml(study_dir / "study.yaml")
    study = doc.data.get("study") if isinstance(doc.data, dict) else None
    return str(study["id"]) if isinstance(study, dict) and study.get("id") is not None else None


def plugin_for(study_dir: Path) -> GeneratorPlugin | None:
    endpoints = study_endpoints(study_dir)
    return next((p for p in PLUGINS if p.endpoints & endpoints), None)


def write_synthetic_feed(study_dir: Path, out_dir: Path, subjects: int, seed: int) -> dict[str, int]:
    """The study's feed: its plug-in's when it names one's endpoints, else the generic study feed."""
    study_dir = resolve_study_dir(Path(study_dir))
    plugin = plugin_for(study_dir)
    if plugin is not None:
        study_id = _study_id(study_dir)
        if study_id != plugin.study_id:
            needs = ", ".join(sorted(plugin.endpoints & study_endpoints(study_dir)))
            raise ValueError(
                f"{study_dir / 'study.yaml'}: the study names {needs}, whose clinical detail only the "
                f"{plugin.name!r} generator draws ({plugin.description}), and that generator writes the trial "
                f"{plugin.study_id} (its ResearchStudy, sites, arms and visit schedule), not {study_id}: its feed "
                f"would match no ResearchStudy of {study_id}. Use it with a study whose study.id is "
                f"{plugin.study_id} (mappings/lcar-aio), or test {study_id} with a feed of your own synthetic data")
        module, function = plugin.writer.split(":")
        writer: FeedWriter = getattr(importlib.import_module(module), function)
        return writer(Path(out_dir), subjects, seed)
    from .study_feed import write_study_feed

    return write_study_feed(study_dir, Path(out_dir), subjects=subjects, seed=seed)
