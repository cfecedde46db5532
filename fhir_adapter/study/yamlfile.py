"""Read YAML mapping files keeping the line of every key, so errors can name ``file:line``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


class MappingError(ValueError):
    """A mapping file is wrong. The message names the file, the line and what to change."""

    def __init__(self, file: Path | str, line: int | None, reason: str, fix: str = "") -> None:
        self.file = str(file)
        self.line = line
        self.reason = reason
        self.fix = fix
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {reason}" + (f" — {fix}" if fix else ""))


@dataclass
class YamlDoc:
    """A parsed YAML file and the line of each node, by path (keys and list indexes)."""

    path: Path
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, loc: Path_) -> int | None:
        """Line of ``loc`` or of its nearest ancestor that has one."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)

    def error(self, loc: Path_, reason: str, fix: str = "") -> MappingError:
        return MappingError(self.path, self.line_of(loc), reason, fix)


def _walk(node: yaml.Node, here: Path_, lines: dict[Path_, int]) -> None:
    lines.setdefault(here, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*here, str(key.value))
            lines[child] = key.start_mark.line + 1
            _walk(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _walk(value, (*here, i), lines)


def _twice(node: yaml.Node, found: list[tuple[str, int, int]]) -> None:
    """Keys written twice in one mapping (name, first line, second line), on the tree as composed — before the
    constructor copies merged (``<<: *anchor``) keys in beside the ones that override them. YAML keeps the
    second silently: a second ``timezone:`` would win unseen."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            if name in seen and name != "<<":
                found.append((name, seen[name], key.start_mark.line + 1))
            seen.setdefault(name, key.start_mark.line + 1)
            _twice(value, found)
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            _twice(value, found)


#: libyaml's parser where PyYAML was built with it (the same nodes and data, a fraction of the CPU)
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parsed(text: str, loader_class: Any) -> tuple[yaml.Node | None, Any, list[tuple[str, int, int]]]:
    """The node tree of one YAML document (for the lines), its data and the keys written twice, from one
    parse."""
    loader = loader_class(text)
    twice: list[tuple[str, int, int]] = []
    try:
        node = loader.get_single_node()
        if node is not None:
            _twice(node, twice)
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data, twice


def read_yaml(path: Path, unique_keys: bool = True) -> YamlDoc:
    """Parse ``path``; a syntax error becomes a :class:`MappingError` with its line, and so does a key given twice
    in one mapping unless ``unique_keys`` is False (the server config: settings appended to a file override it,
    as YAML reads them)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(path, None, f"cannot read the file ({exc.strerror})", "check the path") from exc
    except UnicodeDecodeError as exc:
        at = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise MappingError(path, at, f"not UTF-8 text (byte {exc.start}: {exc.reason})",
                           "save the file as UTF-8") from None
    try:
        node, data, twice = _parsed(text, _FAST_LOADER)
    except yaml.YAMLError:
        try:  # the pure-Python parser names the problem (libyaml's wording differs)
            node, data, twice = _parsed(text, yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else None
            raise MappingError(path, line, f"not valid YAML: {exc.problem}", "fix the YAML syntax") from exc
    if twice and unique_keys:
        name, first, again = twice[0]
        raise MappingError(path, again, f"'{name}' is given twice (lines {first} and {again}); YAML would keep "
                           "the second silently", "keep one of them")
    lines: dict[Path_, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return YamlDoc(path=path, data=data if data is not None else {}, lines=lines)
