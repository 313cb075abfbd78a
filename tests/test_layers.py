"""The package's layers (pyproject.toml, [tool.importlinter]): no import runs from a lower
layer up to a higher one, and no folder holds an import cycle."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "core" / "attnzoo"


def test_the_import_contracts_hold():
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and "2 kept, 0 broken" in done.stdout


def test_the_top_package_holds_at_most_eight_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 8, modules


def test_every_folder_is_a_concept_with_a_docstring():
    for folder in ("contract", "config", "model", "data", "run", "study"):
        init = PACKAGE / folder / "__init__.py"
        assert init.read_text().startswith('"""'), f"{folder}/__init__.py should say what the folder holds"


@pytest.mark.parametrize("old, new", [("registry", "contract.registry"), ("recipe", "config.recipe"),
                                      ("trainer", "run.trainer"), ("stats", "study.stats")])
def test_an_old_module_path_still_imports_with_a_deprecation_warning(old, new):
    code = (f"import importlib, warnings\n"
            f"warnings.simplefilter('error')\n"
            f"try:\n    importlib.import_module('attnzoo.{old}')\nexcept DeprecationWarning as w:\n    print(w)\n"
            f"warnings.simplefilter('ignore')\n"
            f"assert importlib.import_module('attnzoo.{old}') is importlib.import_module('attnzoo.{new}')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"attnzoo.{old} moved to attnzoo.{new}" in done.stdout


def test_contributing_maps_every_module():
    layout = (ROOT / "CONTRIBUTING.md").read_text().split("### Layout", 1)[1].split("```")[1]
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        folder = path.parent.relative_to(PACKAGE)
        if path.name not in layout or (folder.parts and f"{folder.parts[0]}/" not in layout):
            missing.append(str(path.relative_to(PACKAGE)))
    assert not missing, f"CONTRIBUTING.md's layout leaves out {missing}"
