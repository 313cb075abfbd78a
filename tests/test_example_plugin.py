"""Third-party plugins end to end: the example distribution (examples/attnzoo-extra) and a
package written by `attnzoo new-plugin` are pip-installed into a temporary folder (never
into the environment running the tests), found through their entry points, pass their
own kit-based tests, and train.
"""

import ast
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from attnzoo.contract.kit import check_variant
from attnzoo.contract.registry import load_registry
from attnzoo.contract.template import write_plugin
from attnzoo.errors import AttnzooError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "attnzoo-extra"
EXAMPLE_VARIANTS = {"relu_squared"}
PUBLIC_API = {"AttentionVariant", "Option", "hookimpl", "standardize"}
TEMPLATE_NAME = "my_variant"


def run(args, env, cwd, timeout=300):
    """Run a command; on failure, fail the test with the end of its output."""
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                    f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
    return proc


def clean_env(site: Path | None = None) -> dict:
    """The environment without the user's plugin settings, with `site` importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNZOO_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Both packages built and installed into <tmp>/site; returns (site, source folder).

    The sources are copied first, because building in place would leave build/ and
    *.egg-info behind in the repository."""
    tmp = tmp_path_factory.mktemp("plugins")
    src, site = tmp / "src", tmp / "site"
    shutil.copytree(EXAMPLE, src / EXAMPLE.name,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    write_plugin(TEMPLATE_NAME, src)
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(src / "attnzoo-extra"), str(src / "attnzoo-my-variant")],
        env=clean_env(), cwd=tmp)
    return site, src


@pytest.mark.slow  # pip-installs two packages
def test_installed_plugins_are_discovered(installed):
    site, src = installed
    proc = run([sys.executable, "-m", "attnzoo", "--strict-plugins", "variants", "--json"],
               env=clean_env(site), cwd=src)
    found = {v["name"]: v for v in json.loads(proc.stdout)}
    for name in EXAMPLE_VARIANTS:
        assert found[name]["distribution"] == "attnzoo-extra" and found[name]["plugin"] == "extra"
    assert found[TEMPLATE_NAME]["distribution"] == "attnzoo-my-variant"
    assert {"softmax", "cosine", "standardized"} <= set(found)  # third parties do not displace built-ins
    assert [o["name"] for o in found["relu_squared"]["options"]] == ["bias"]


@pytest.mark.slow  # pip-installs two packages
def test_installed_plugins_pass_their_own_conformance_tests(installed):
    # Runs each package's tests as its author would, in a fresh pytest that knows the
    # attnzoo_check fixture only through attnzoo's pytest11 entry point.
    site, src = installed
    tests = [str(src / package / "tests") for package in ("attnzoo-extra", "attnzoo-my-variant")]
    options = ["-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "--import-mode=importlib"]
    proc = run([sys.executable, "-m", "pytest", *options, "--rootdir", str(src), *tests], env=clean_env(site), cwd=src)
    assert "7 passed" in proc.stdout, proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("variant, options", [
    ("relu_squared", {"bias": 0.5}),
    (TEMPLATE_NAME, {"temperature": 0.5}),
])
def test_installed_plugins_train(installed, tmp_path, variant, options):
    site, _ = installed
    run_dir = tmp_path / "run"
    overrides = [f"attention.{key}={value}" for key, value in options.items()]
    run([sys.executable, "-m", "attnzoo", "train", "tiny", "data.dataset=synthetic", f"attention.name={variant}",
         *overrides, "train.epochs=1", "train.batch_size=64", "data.max_train_samples=256",
         "data.max_eval_samples=128", "model.depth=1", "model.dim=32", "model.image_size=16",
         f"output_dir={run_dir}"], env=clean_env(site), cwd=tmp_path)
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert metrics["variant"] == variant
    assert metrics["attention_options"] == options


def test_example_uses_only_the_public_api():
    for path in sorted((EXAMPLE / "attnzoo_extra").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("attnzoo") and node.level == 0:
                assert node.module == "attnzoo", f"{path.name}: imports from {node.module}; use `from attnzoo import ...`"
                assert {a.name for a in node.names} <= PUBLIC_API, f"{path.name}: {[a.name for a in node.names]}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("attnzoo.") for a in node.names), path.name


# --------------------------------------------------------------------------- the template, in process


def test_template_package_layout_and_kit(tmp_path, monkeypatch):
    package = write_plugin("talking_heads", tmp_path)
    assert package == tmp_path / "attnzoo-talking-heads"
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    assert files == ["README.md", "attnzoo_talking_heads/__init__.py", "pyproject.toml", "tests/test_conformance.py"]
    pyproject = (package / "pyproject.toml").read_text()
    assert 'name = "attnzoo-talking-heads"' in pyproject
    assert '[project.entry-points.attnzoo]\ntalking_heads = "attnzoo_talking_heads"' in pyproject
    for path in (package / "attnzoo_talking_heads/__init__.py", package / "tests/test_conformance.py"):
        compile(path.read_text(), str(path), "exec")  # no placeholder left that breaks the syntax
    assert "$" not in "".join(p.read_text() for p in package.rglob("*") if p.is_file())

    # Load it through an entry point, as an installed copy would be, and run the kit.
    monkeypatch.syspath_prepend(str(package))
    entry = metadata.EntryPoint("talking_heads", "attnzoo_talking_heads", "attnzoo")
    registry = load_registry([entry], strict=True, only=None, disable=set(), warn=False)
    assert set(registry.variants) == {"talking_heads"}
    check_variant("talking_heads", registry=registry).raise_if_failed()
    check_variant("talking_heads", registry=registry, temperature=3.0).raise_if_failed()


def test_template_refuses_to_overwrite(tmp_path):
    package = write_plugin("foo", tmp_path)
    marker = package / "README.md"
    marker.write_text("mine")
    with pytest.raises(AttnzooError, match="already exists"):
        write_plugin("foo", tmp_path)
    assert marker.read_text() == "mine"


@pytest.mark.parametrize("name, hint", [
    ("My-Variant", "Try 'my_variant'"),
    ("9lives", "starting with a letter"),
    ("class", "not valid"),
    ("double__underscore", "not valid"),
    ("attnzoo_foo", "leave out the 'attnzoo' prefix"),
    ("softmax", "already exists"),
])
def test_template_rejects_bad_names(tmp_path, name, hint):
    with pytest.raises(AttnzooError, match=hint):
        write_plugin(name, tmp_path)
    assert not any(tmp_path.iterdir())
