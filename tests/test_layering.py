"""No import cycles among interp's modules, lazy and TYPE_CHECKING imports included (the shared checker), and
loading returns data while the model builds itself."""

import subprocess
import sys
from pathlib import Path

from interp import HookedTransformer

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT.parent / "shared" / "tools" / "import_cycles.py"  # the team's checker, beside every checkout and CI


def test_no_import_cycles():
    assert TOOL.exists(), f"{TOOL} is missing: check out the project with ../shared beside it."
    result = subprocess.run([sys.executable, str(TOOL), str(ROOT / "interp")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_loading_returns_data_and_from_pretrained_builds_cls():
    import interp.loading as loading

    loaded = loading.load_weights("interp-toy")
    assert set(loaded._fields) == {"cfg", "state", "tokenizer"} and "W_E" in loaded.state

    class MyModel(HookedTransformer):
        pass

    model = MyModel.from_pretrained("interp-toy", fold_ln=True)
    assert type(model) is MyModel and model.processing["fold_ln"] and not model.processing["center_unembed"]
