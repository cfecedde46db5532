"""A quick FHIR R4 check that answers only "valid" or "ask the full parser", built from the ``fhir.resources``
R4B models' own element tables.

Parsing a resource into its ``fhir.resources`` model builds a pydantic object per element (hundreds of
microseconds per resource). :func:`conforms` walks the JSON instead, with a table per model compiled once from
that model's fields: every key must be an element of the model (``extra="forbid"``), a complex element a
non-empty JSON object (a list of them where the element repeats, no nulls), a required element present, at
most one element of a choice (``value[x]``) and one where the choice is required, and every primitive value of
the JSON type R4 gives it (a decimal is a JSON number, a boolean ``true``/``false``) and accepted by the very
validator the model uses for that primitive (dates on the calendar, offsets on dateTimes, codes without stray
whitespace, ids of ≤ 64 characters…); a dateTime or an instant first goes through a fast path that accepts
only a subset of what that validator accepts (:func:`_fast_path`). Values already accepted are remembered per
primitive type, so a date or a code seen before costs a dictionary look-up.

A contained resource (an element whose type is ``Resource``) is checked as the model checks it: with the table of
the model its own ``resourceType`` names (an R4 type). Anything it does not model — a primitive's extension
(``_value``), ``fhir_comments``, a null, an empty list — makes it answer False, and the caller asks the full parser
(:func:`fhir_adapter.fhir.r4.r4_problem`), which gives the reason. It is therefore never more lenient than the
models: ``conforms(r)`` implies that the model accepts ``r`` (``tests/test_fhir_r4_elements.py`` checks it on
the synthetic feed, the bad-input corpus and mutations of both).
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fhir_core.constraints import FHIR_TYPES_MAPS
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import DateTime, FhirBase, FhirElementOrResourceBase, Instant
from pydantic import TypeAdapter, ValidationError

from fhir_adapter.fhir.r4_types import R4_RESOURCE_TYPES

_UNIONS = (typing.Union, types.UnionType)
#: values remembered as accepted per primitive type before the memory is cleared (bounds memory in long runs)
MAX_REMEMBERED = 20_000


class _Primitive:
    """One primitive type's check: the JSON type, then the model's own validator, remembering accepted values.
    A dateTime or an instant first gets a fast path (:func:`_fast_path`) that only accepts what the validator
    accepts; what it does not accept goes to the validator."""

    __slots__ = ("fast", "json_types", "seen", "validate")

    def __init__(self, annotation: Any) -> None:
        base = _bare(annotation)
        if base is bool:
            self.json_types: tuple[type, ...] = (bool,)
        elif base is int:
            self.json_types = (int,)
        elif base in (float, decimal.Decimal):
            self.json_types = (int, float)
        else:  # str, uri, code, date, dateTime, instant, time, base64Binary…: a JSON string
            self.json_types = (str,)
        self.validate: Callable[[Any], Any] = TypeAdapter(annotation).validator.validate_python
        self.fast: Callable[[str], bool] | None = _fast_path(annotation) if self.json_types == (str,) else None
        self.seen: set[Any] = set()

    def accepts(self, value: Any) -> bool:
        if type(value) not in self.json_types:
            return False
        if value in self.seen:
            return True
        if self.fast is None or not self.fast(value):
            try:
                self.validate(value)
            except (ValidationError, ValueError, TypeError):
                return False
        if len(self.seen) >= MAX_REMEMBERED:
            self.seen.clear()
        self.seen.add(value)
        return True


#: the forms the fast paths accept (besides fhir_core's own pattern): fractions of a second up to microseconds,
#: no leap second, an offset on every time
_DATE_TIME = re.compile(r"\d{4}(-\d\d(-\d\d(T\d\d:\d\d:[0-5]\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d))?)?)?")
_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:[0-5]\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")


def _fast_path(annotation: Any) -> Callable[[str], bool] | None:
    """A check that says True only of values the primitive's validator accepts (None: no fast path):
    ``dateTime`` and ``instant`` values that match fhir_core's own pattern and :data:`_DATE_TIME` /
    :data:`_INSTANT` and that Python's calendar parses — a subset of what fhir_core accepts (its pattern,
    then pydantic's date-time parser, which takes any calendar date and time with an offset)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] \
        if typing.get_origin(annotation) in _UNIONS else [annotation]
    if len(args) != 1 or typing.get_origin(args[0]) is not typing.Annotated:
        return None
    meta = typing.get_args(args[0])[1:]
    if len(meta) != 1:
        return None
    kind = meta[0]
    if type(kind) is Instant:
        spec = kind.pattern
        return lambda v: _INSTANT.fullmatch(v) is not None and spec.fullmatch(v) is not None and _calendar(v)
    if type(kind) is DateTime:
        spec = kind.pattern
        return lambda v: _DATE_TIME.fullmatch(v) is not None and spec.fullmatch(v) is not None \
            and (len(v) < 10 or _calendar(v))
    return None


def _calendar(value: str) -> bool:
    """A date or a date-time with an offset (``Z`` included) that is on the calendar."""
    try:
        if len(value) == 10:
            dt.date.fromisoformat(value)
        else:
            dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


@dataclass
class _Element:
    repeats: bool
    primitive: _Primitive | None = None
    #: the complex type's table (filled in after construction: types refer to each other)
    complex: _Table | None = None
    #: a type the quick check does not model: present means "ask the full parser"
    opaque: bool = False
    #: a whole resource (``contained``): the prefix under which fhir_core finds the model of its resourceType
    resource_prefix: str | None = None


@dataclass
class _Table:
    elements: dict[str, _Element] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    #: (the elements of one choice, whether one of them is required)
    choices: tuple[tuple[tuple[str, ...], bool], ...] = ()
    #: what :func:`_conforms` does with each element: :func:`_step` of every element it may accept
    steps: dict[str, tuple[int, Any, Any]] = field(default_factory=dict)
    #: the choices as bits: element → the bit of its choice; the bits of the required choices
    choice_bits: dict[str, int] = field(default_factory=dict)
    required_choices: int = 0


#: the kinds of :attr:`_Table.steps` (the most frequent first)
_TEXT, _COMPLEX, _VALUE, _COMPLEX_LIST, _VALUE_LIST, _RESOURCE, _RESOURCE_LIST = range(7)


def _step(e: _Element) -> tuple[int, Any, Any] | None:
    """An element's kind with what checking it needs (None: an element the quick check does not model)."""
    if e.opaque:
        return None
    if e.resource_prefix is not None:
        return (_RESOURCE_LIST if e.repeats else _RESOURCE), e.resource_prefix, None
    if e.complex is not None:
        return (_COMPLEX_LIST if e.repeats else _COMPLEX), e.complex, None
    assert e.primitive is not None
    if e.repeats:
        return _VALUE_LIST, e.primitive, None
    if e.primitive.json_types == (str,):  # the seen values and the check of a JSON string
        return _TEXT, e.primitive.seen, e.primitive.accepts
    return _VALUE, e.primitive, None


_tables: dict[type, _Table] = {}
_primitives: dict[Any, _Primitive] = {}


def _bare(annotation: Any) -> Any:
    """``Optional[Annotated[T, ...]]`` → ``T``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in _UNIONS:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the item annotation, whether the element repeats) of a field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] \
        if typing.get_origin(annotation) in _UNIONS \
        else [annotation]
    if len(args) != 1:
        return annotation, False
    inner = args[0]
    if typing.get_origin(inner) in (list, typing.List):  # noqa: UP006
        return typing.get_args(inner)[0], True
    return inner, False


def _primitive(annotation: Any) -> _Primitive:
    key = repr(annotation)
    found = _primitives.get(key)
    if found is None:
        found = _primitives[key] = _Primitive(annotation)
    return found


_PRIMITIVE_BASES = (str, bool, int, float, decimal.Decimal, dt.date, dt.datetime, dt.time, bytes)


def table(model: type) -> _Table:
    """The element table of a ``fhir.resources`` model class (built once)."""
    found = _tables.get(model)
    if found is not None:
        return found
    t = _tables[model] = _Table()
    required: list[str] = []
    choices: dict[str, tuple[list[str], bool]] = {}
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name.endswith("__ext") or not extra.get("element_property", False):
            continue  # _value extensions and fhir_comments: not modelled, so not in the table
        alias = info.alias or name
        annotation = info.annotation
        if info.metadata:
            annotation = typing.Annotated[(annotation, *info.metadata)]
        item, repeats = _unwrap(annotation)
        bare = _bare(item)
        if isinstance(bare, type) and issubclass(bare, FhirElementOrResourceBase):
            resource = bare.get_model_klass().__name__ == "Resource"
            element = _Element(repeats, opaque=not resource, resource_prefix=bare._prefix if resource else None)
        elif isinstance(bare, type) and issubclass(bare, FhirBase):
            element = _Element(repeats)
            element.complex = table(bare.get_model_klass())
        elif isinstance(bare, type) and issubclass(bare, _PRIMITIVE_BASES):
            element = _Element(repeats, primitive=_primitive(item))
        else:
            element = _Element(repeats, opaque=True)
        t.elements[alias] = element
        if info.is_required() or extra.get("element_required") is True:
            required.append(alias)
        if isinstance(extra.get("one_of_many"), str):
            group = choices.setdefault(str(extra["one_of_many"]), ([], bool(extra.get("one_of_many_required"))))
            group[0].append(alias)
    t.required = tuple(required)
    t.choices = tuple((tuple(names), req) for names, req in choices.values())
    t.steps = {alias: step for alias, e in t.elements.items() if (step := _step(e)) is not None}
    for i, (names, req) in enumerate(t.choices):
        t.choice_bits.update(dict.fromkeys(names, 1 << i))
        t.required_choices |= (1 << i) if req else 0
    return t


def _any_string(value: Any) -> bool:
    """``resourceType`` of a resource's own JSON object: the caller chose the model by it."""
    return type(value) is str


_resource_tables: dict[type, _Table] = {}


def resource_table(model: type) -> _Table:
    """:func:`table` of a resource model with its ``resourceType`` key (a JSON string) besides its elements."""
    found = _resource_tables.get(model)
    if found is None:
        t = table(model)
        found = _resource_tables[model] = _Table(t.elements, t.required, t.choices,
                                                 {**t.steps, "resourceType": (_TEXT, set(), _any_string)},
                                                 t.choice_bits, t.required_choices)
    return found


_resource_models: dict[tuple[str, str], type | None] = {}


def _resource_model(prefix: str, rtype: Any) -> type | None:
    """The model fhir_core validates a contained resource with (by its ``resourceType``), if an R4 type."""
    if type(rtype) is not str or rtype not in R4_RESOURCE_TYPES:
        return None
    key = (prefix, rtype)
    if key not in _resource_models:
        module, _, name = FHIR_TYPES_MAPS.get(f"{prefix}{rtype}Type", "").rpartition(".")
        model = getattr(importlib.import_module(module), name, None) if module else None
        _resource_models[key] = model if isinstance(model, type) and issubclass(model, FHIRAbstractModel) \
            and model.has_resource_base() else None
    return _resource_models[key]


def _resource_conforms(item: Any, prefix: str) -> bool:
    if type(item) is not dict:
        return False
    model = _resource_model(prefix, item.get("resourceType"))
    if model is None:
        return False
    return _conforms(item, resource_table(model))


def _conforms(node: dict[str, Any], t: _Table) -> bool:
    steps = t.steps
    for key, value in node.items():
        step = steps.get(key)
        if step is None:
            return False
        kind, arg, accepts = step
        if kind == _TEXT:  # a JSON string, seen before or accepted by the primitive's check
            if type(value) is not str or (value not in arg and not accepts(value)):
                return False
        elif kind == _COMPLEX:
            if type(value) is not dict or not value or not _conforms(value, arg):
                return False
        elif kind == _VALUE:
            if not ((type(value) in arg.json_types and value in arg.seen) or arg.accepts(value)):
                return False
        elif kind == _RESOURCE:
            if not _resource_conforms(value, arg):
                return False
        elif type(value) is not list or not value:
            return False
        elif kind == _COMPLEX_LIST:
            for item in value:
                if type(item) is not dict or not item or not _conforms(item, arg):
                    return False
        elif kind == _VALUE_LIST:
            for item in value:
                if not ((type(item) in arg.json_types and item in arg.seen) or arg.accepts(item)):
                    return False
        else:  # _RESOURCE_LIST
            for item in value:
                if not _resource_conforms(item, arg):
                    return False
    for key in t.required:
        if key not in node:
            return False
    bits = t.choice_bits
    if bits:  # at most one element of each choice, one of each required choice
        present = 0
        for key in node:
            bit = bits.get(key)
            if bit is not None:
                if present & bit:
                    return False
                present |= bit
        if present & t.required_choices != t.required_choices:
            return False
    return True


def conforms(resource: dict[str, Any], model: type) -> bool:
    """True when ``resource`` (a JSON object whose ``resourceType`` is ``model``'s) is certainly accepted by
    ``model``; False means "parse it with the model to find out (and to learn why not)"."""
    return _conforms(resource, resource_table(model))

