"""The keys every study file takes, read from the models that check them, and ``docs/study-files.md`` written from
them, so the reference a configuration error points to cannot drift from what the loader accepts.

:func:`accepted_keys` answers "which keys go here?" for an unknown-key error; :func:`render` writes the whole
reference (every file, every key with its type, default, limits and meaning). Regenerate the document with
``python -m fhir_adapter.study.keys_doc`` (a test fails when it is stale).
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fhir_adapter.study import plugins
from fhir_adapter.study.models import ItemsFile, Schedule, SiteOverlay, StudyInfo

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "study-files.md"
#: the document as a configuration error names it (relative to the project, as the README links it)
DOC_NAME = "docs/study-files.md"
SITE_ANCHOR = "site-overlay"


def anchor(file_name: str) -> str:
    """The document's anchor of a study file (``escalation.yaml`` → ``escalationyaml``, as GitHub makes it)."""
    return file_name.replace(".", "").lower()


def _unwrap(ann: Any) -> Any:
    """``ann`` without ``Annotated`` and ``| None``."""
    while True:
        origin = get_origin(ann)
        if origin is Annotated:
            ann = get_args(ann)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(ann) if a is not type(None)]
            if len(rest) != 1:
                return ann
            ann = rest[0]
        else:
            return ann


def _model(ann: Any) -> type[BaseModel] | None:
    ann = _unwrap(ann)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _key(name: str, field: FieldInfo) -> str:
    """The key a file writes for a field: its alias when it has one (``class`` for ``drug_class``)."""
    alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
    return alias or name


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the key a file writes."""
    return {_key(name, field): field for name, field in model.model_fields.items()}


def accepted_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str] | None:
    """The keys the mapping at ``loc`` (keys and list indexes from the model's top) takes, or None when ``loc``
    is not a mapping the model describes."""
    here: Any = model
    for part in loc:
        here = _unwrap(here)
        origin = get_origin(here)
        if isinstance(here, type) and issubclass(here, BaseModel):
            field = _fields(here).get(str(part))
            if field is None:
                return None
            here = field.annotation
        elif origin is dict:
            here = get_args(here)[1]
        elif origin in (tuple, list) and get_args(here):
            here = get_args(here)[0]
        else:
            return None
    found = _model(here)
    return list(_fields(found)) if found is not None else None


def _type(ann: Any) -> str:
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return _type(args[0])
    if ann is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin in (tuple, list, set, frozenset):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return "[" + ", ".join(_type(a) for a in args) + "]"
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "mapping (keys below)"
    return {int: "integer", float: "number", str: "text", bool: "true or false"}.get(ann, getattr(ann, "__name__",
                                                                                                   str(ann)))


def _limits(field: FieldInfo) -> str:
    """The constraints of ``field`` (pydantic keeps each as a metadata object with one attribute)."""
    said = []
    for m in field.metadata:
        for attr, text in (("gt", "> {}"), ("ge", "≥ {}"), ("lt", "< {}"), ("le", "≤ {}"),
                           ("min_length", "at least {} long"), ("max_length", "at most {} long"),
                           ("pattern", "matches `{}`")):
            if getattr(m, attr, None) is not None:
                said.append(text.format(getattr(m, attr)))
    return ", ".join(said)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "(below)"
    if isinstance(value, tuple | frozenset | set):
        value = list(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(model: type[BaseModel], prefix: str, seen: tuple[type[BaseModel], ...] = ()) -> Iterator[list[str]]:
    for name, field in _fields(model).items():
        key = f"{prefix}{name}"
        yield [f"`{key}`", _cell(_type(field.annotation)), _default(field), _cell(_limits(field)),
               _cell(field.description or "")]
        ann = _unwrap(field.annotation)
        origin = get_origin(ann)
        nested, below = _model(ann), f"{key}."
        if origin is dict:
            nested, below = _model(get_args(ann)[1]), f"{key}.<{_type(get_args(ann)[0])}>."
        elif origin in (tuple, list) and get_args(ann):
            nested, below = _model(get_args(ann)[0]), f"{key}[]."
        if nested is not None and nested not in seen:
            yield from _rows(nested, below, (*seen, model))


def _section(title: str, model: type[BaseModel], prefix: str = "", intro: str = "") -> list[str]:
    about = (model.__doc__ or "").strip().split("\n\n")[0]
    lines = [f"### {title}", ""]
    for text in (intro, " ".join(about.split()) if about and not about.startswith("Usage docs") else ""):
        if text:
            lines += [text, ""]
    lines += ["| key | type | default | limits | meaning |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(model, prefix)]
    return [*lines, ""]


def render() -> str:
    out = [
        "# Study files: every key",
        "",
        "<!-- generated by `python -m fhir_adapter.study.keys_doc` from the models that check the files "
        "(fhir_adapter/study/models.py, each endpoint's and mapping's settings): do not edit by hand -->",
        "",
        "A study is a folder of YAML files (`mappings/lcar-aio/` is the one shipped; how to write one: "
        "[mappings/README.md](../mappings/README.md)). Every file is checked when a run or `fhir-adapter check` "
        "loads it: a key that is not listed here is an error naming its file and line, and so is a value outside "
        "its type or limits. The shipped files say in comments why LCAR-AIO chose its values; the clinical "
        "rules behind the keys are in [clinical-rules.md](clinical-rules.md).",
        "",
        "Types: *text*, *integer*, *number* (a decimal), *true or false*, *list of …* (a YAML list), *mapping of … "
        "to …* (a YAML mapping with keys of your choice), `value` (exactly that word). A key written "
        "`a.b` is the key `b` inside the mapping `a`; `a.<text>.b` is `b` inside each entry of `a`; `a[].b` is "
        "`b` inside each element of the list `a`. Codes are written `alias|code`, with the alias declared in "
        "`items.yaml` `code_systems`.",
        "",
        "## Every study",
        "",
    ]
    out += _section("study.yaml", StudyInfo, "study.", "Under the top-level key `study:`; beside it, "
                    "`endpoints:` lists the endpoints the study derives (each reads its own rule file, below; "
                    "without the key, every rule file in the folder is one).")
    out += _section("schedule.yaml", Schedule)
    out += _section("items.yaml", ItemsFile)
    for name in plugins.mapping_names():
        model = plugins.mapping_settings(name)
        assert model is not None
        out += _section(f"{name}.yaml", model)
    out += ["## Endpoints", "", "The rule file of an endpoint the study names (`study.yaml` `endpoints`).", ""]
    for name in plugins.available():
        spec = plugins.find(name)
        out += _section(f"{name}.yaml", spec.settings,
                        intro=f"Endpoint `{name}`" + (f"; needs {', '.join(f'`{n}`' for n in spec.needs)}"
                                                      if spec.needs else "") + ".")
    out += ["## Site overlay", ""]
    out += _section("site overlay", SiteOverlay, intro="`--site mappings/sites/<site>.yaml` (or a file path): "
                    "what one hospital adds to the study mapping.")
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> int:
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
