"""Tables of docs/integrator-guide.md generated from the settings models, so the guide cannot drift from the
code: the server config keys (``ServerConfig`` and ``ClientSettings``: name, type, default, meaning, the
environment variable that overrides it), every ``FHIR_ADAPTER_*`` environment variable, and the SMART scopes
of the resource types the adapter reads (:func:`read_types`).

    python -m fhir_adapter.cli.docgen            # rewrite the generated blocks of docs/integrator-guide.md
    python -m fhir_adapter.cli.docgen --check    # exit 1 when the guide is stale (what the test suite checks)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from fhir_adapter.export import meddra
from fhir_adapter.fhir.auth import AUTH_ENV
from fhir_adapter.fhir.server_config import ENV_CLIENT, ENV_TOP, ServerConfig
from fhir_adapter.fhir.settings import ClientSettings
from fhir_adapter.source.base import ROSTER_TYPES, SHARED_TYPES, SUBJECT_TYPES
from fhir_adapter.source.server.searches import SUBJECT_SEARCHES

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "integrator-guide.md"
_FALLBACK = {  # fields the models leave without a description
    "connect_timeout": "Seconds to open a connection (per attempt).",
    "write_timeout": "Seconds to send a request body (per attempt).",
    "pool_timeout": "Seconds to wait for a free connection of the pool.",
    "user_agent": "User-Agent header sent with every request.",
    "writeback_reviewed_only": "true: write back only results derived solely from reviewed values (docs/review.md).",
}


def _type(f: FieldInfo) -> str:
    text = str(f.annotation).replace("typing.", "").replace("pathlib.", "").replace("<class '", "")
    text = text.replace("'>", "").replace("Literal", "one of ")
    return re.sub(r"PosixPath|WindowsPath", "Path", text)


def _default(name: str, f: FieldInfo) -> str:
    if name == "user_agent":
        return "`fhir-adapter/<version>`"
    value: Any = f.get_default(call_default_factory=True)
    if isinstance(value, ClientSettings):
        return "(see below)"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_table() -> str:
    env_of = {("client", k): v for v, k in ENV_CLIENT.items()} | {("", k): v for v, k in ENV_TOP.items()}
    rows = ["| key | type | default | meaning | environment |", "|---|---|---|---|---|"]
    for name, f in ServerConfig.model_fields.items():
        if name == "client":
            continue
        env = env_of.get(("", name))
        rows.append(f"| `{name}` | {_cell(_type(f))} | {_default(name, f)} | "
                    f"{_cell(f.description or _FALLBACK.get(name, ''))} | "
                    f"{f'`{env}`' if env else ''} |")
    for name, f in ClientSettings.model_fields.items():
        env = env_of.get(("client", name))
        rows.append(f"| `client.{name}` | {_cell(_type(f))} | {_default(name, f)} | "
                    f"{_cell(f.description or _FALLBACK.get(name, ''))} | {f'`{env}`' if env else ''} |")
    return "\n".join(rows)


def env_table() -> str:
    rows = ["| variable | meaning |", "|---|---|"]
    for var, key in {**ENV_CLIENT, **ENV_TOP}.items():
        path = f"client.{key}" if var in ENV_CLIENT else key
        note = " (a CA bundle file)" if key == "verify" else ""
        rows.append(f"| `{var}` | server config `{path}`{note}; overrides the `--config` file |")
    for var, meaning in AUTH_ENV.items():
        rows.append(f"| `{var}` | {_cell(meaning)} |")
    rows.append(f"| `{meddra.ENV_DIR}` | the `MedAscii` folder of the site's licensed MedDRA release (else the "
                "overlay's `meddra_dir`); for MedDRA terms in the CDISC exports |")
    return "\n".join(rows)


def read_types() -> list[str]:
    """Every resource type the adapter reads from a server (the roster, each subject's searches, the shared
    resources they reference; a Bulk export's ``_type``), in that order."""
    return list(dict.fromkeys([*ROSTER_TYPES, *SUBJECT_SEARCHES, *SUBJECT_TYPES, *SHARED_TYPES]))


def scopes_text() -> str:
    """§3's reading scopes: one ``system/<Type>.rs`` per :func:`read_types`, and Group's for a Group export."""
    scopes = " ".join(f"system/{t}.rs" for t in read_types())
    return (f"Reading: `{scopes}` (SMART v2 syntax; v1 servers: `system/Observation.read` …); `--bulk` from a "
            "Group (`bulk.group_id`, or the ResearchStudy's `enrollment`) also needs `system/Group.rs`.")


BLOCKS = {"config-keys": config_table, "env-vars": env_table, "read-scopes": scopes_text}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        begin, end = f"<!-- BEGIN generated:{name} -->", f"<!-- END generated:{name} -->"
        if begin not in text or end not in text:
            raise ValueError(f"{GUIDE}: the markers {begin} … {end} are missing")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{make()}\n{end}{tail}"
    return text


def main(argv: list[str]) -> int:
    current = GUIDE.read_text(encoding="utf-8")
    fresh = render(current)
    if "--check" in argv:
        if fresh != current:
            print(f"{GUIDE} is stale: run `python -m fhir_adapter.cli.docgen`", file=sys.stderr)
            return 1
        return 0
    GUIDE.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
