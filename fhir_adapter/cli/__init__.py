"""The ``fhir-adapter`` command line (docs/cli.md): commands, what the console shows, the generated docs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhir_adapter.cli.commands import main as main


def __getattr__(name: str) -> Any:
    """``from fhir_adapter.cli import main`` imports the commands on first use (``fhir_adapter.cli.console``
    stays importable without them)."""
    if name == "main":
        from fhir_adapter.cli.commands import main

        return main
    raise AttributeError(f"module 'fhir_adapter.cli' has no attribute {name!r}")
