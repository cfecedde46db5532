"""``fhir-adapter synth --study``: the generic feed follows a study folder's schedule and items; the CAR-T
lupus generator is a plug-in that only a study naming its endpoints loads."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.synth import write_feed
from fhir_adapter.synth.plugins import plugin_for

ROOT = Path(__file__).resolve().parent.parent
LCAR = ROOT / "mappings" / "lcar-aio"
#: modules of the CAR-T lupus generator plug-in
PLUGIN_PREFIX = "fhir_adapter.synth.cart_sle"


def _hashes(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir())}


def test_the_cart_plugin_is_chosen_by_the_endpoints_a_study_names() -> None:
    plugin = plugin_for(LCAR)
    assert plugin is not None and plugin.name == "cart-sle"


def test_synth_study_of_lcar_aio_is_the_cart_generator_byte_for_byte(tmp_path: Path) -> None:
    write_feed(tmp_path / "direct", subjects=4, seed=11)
    result = CliRunner().invoke(main, ["synth", "--study", "mappings/lcar-aio", "--subjects", "4", "--seed", "11",
                                       "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert _hashes(tmp_path / "cli") == _hashes(tmp_path / "direct")


def test_the_generic_feed_loads_no_plugin_module(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from fhir_adapter.synth.study_feed import write_study_feed\n"
        f"write_study_feed(Path({str(LCAR)!r}), Path({str(tmp_path / 'feed')!r}), 3, 5)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fhir_adapter.synth'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "fhir_adapter.synth.study_feed" in loaded
    assert not [m for m in loaded if m.startswith(PLUGIN_PREFIX)], loaded
