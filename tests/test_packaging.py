"""Dependencies as declared: every third-party module the core or a built-in plugin imports
is a declared dependency (or an extra), so a clean install never misses one."""

import ast
import re
import sys
from importlib import metadata

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# Imported only when present, each with a fallback; not worth a hard dependency.
OPTIONAL = {
    "triton": "ships with torch's CUDA wheels; the cosine kernel falls back to torch without it",
    "tensorboard": "a logger used when installed",
    "pytest": "the kit's pytest fixture, defined only under pytest",
}


def imported_modules() -> dict[str, str]:
    """Top-level third-party module -> one file importing it."""
    found = {}
    files = [*(ROOT / "core" / "attnzoo").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and not top.startswith("attnzoo"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_every_imported_package_is_declared():
    distributions = metadata.packages_distributions()
    names = declared()
    missing = {}
    for module, where in imported_modules().items():
        if module in OPTIONAL:
            continue
        provided_by = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not provided_by & names:
            missing[module] = where
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_declared_package_is_used():
    distributions = metadata.packages_distributions()
    used = {d.lower().replace("_", "-") for m in imported_modules() for d in distributions.get(m, [m])}
    unused = declared() - used - {"pytest", "hypothesis", "import-linter"}  # the test extra serves the test suite
    assert not unused, f"declared in pyproject.toml but imported nowhere in core/ or plugins/: {unused}"
