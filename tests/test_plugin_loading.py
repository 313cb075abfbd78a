"""Broken third-party plugins installed for real (a dist-info on sys.path): the command
still works and names the culprit; --strict-plugins turns it into exit status 2."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

BROKEN = {
    "import": "raise ImportError('missing dependency foo')",
    "registration": """
        from attnzoo import hookimpl
        @hookimpl
        def register_attention_variants(register):
            raise RuntimeError('boom at registration')
        """,
    "duplicate": """
        from attnzoo import AttentionVariant, hookimpl
        @hookimpl
        def register_attention_variants(register):
            register(name="cosine", description="a second cosine", factory=AttentionVariant)
        """,
    "wrong_shape": """
        from attnzoo import AttentionVariant, hookimpl
        class Bad(AttentionVariant):
            def forward(self, q, k, v):
                return q.sum(-1)
        @hookimpl
        def register_attention_variants(register):
            register(name="bad", description="drops a dimension", factory=Bad)
        """,
    "misspelled_hook": """
        from attnzoo import hookimpl
        @hookimpl
        def register_attention_variantz(register):
            pass
        """,
}


def install_fake(site, case: str) -> None:
    """A minimal installed distribution 'attnzoo-broken-<case>' with one entry point."""
    module = f"attnzoo_broken_{case}"
    (site / f"{module}.py").write_text(textwrap.dedent(BROKEN[case]))
    info = site / f"attnzoo_broken_{case}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: attnzoo-broken-{case}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[attnzoo]\nbroken_{case} = {module}\n")
    (info / "top_level.txt").write_text(module + "\n")


def attnzoo(site, *args):
    env = dict(os.environ, PYTHONPATH=str(site))
    for var in ("ATTNZOO_PLUGINS", "ATTNZOO_DISABLE_PLUGINS", "ATTNZOO_STRICT_PLUGINS"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "attnzoo", *args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_plugin_is_reported_and_strict_mode_fails(tmp_path, case):
    install_fake(tmp_path, case)
    proc = attnzoo(tmp_path, "variants", "--json")
    assert proc.returncode == 0, proc.stderr
    names = {v["name"] for v in json.loads(proc.stdout)}
    assert {"softmax", "cosine", "standardized"} <= names and "bad" not in names
    cosine = next(v for v in json.loads(proc.stdout) if v["name"] == "cosine")
    assert cosine["distribution"] == "attnzoo"  # a colliding name never replaces the built-in
    assert f"plugin 'broken_{case}' (attnzoo-broken-{case} 0.3) failed" in proc.stderr
    assert proc.stderr.count("warning") == 1 and "Traceback" not in proc.stderr

    plugins = {p["name"]: p for p in json.loads(attnzoo(tmp_path, "plugins", "--json").stdout)}
    assert plugins[f"broken_{case}"]["status"] == "failed" and plugins[f"broken_{case}"]["version"] == "0.3"

    strict = attnzoo(tmp_path, "--strict-plugins", "variants")
    assert strict.returncode == 2 and f"plugin 'broken_{case}'" in strict.stderr
    assert "Traceback" not in strict.stderr


@pytest.mark.slow
def test_disable_variable_silences_a_broken_plugin(tmp_path):
    install_fake(tmp_path, "import")
    env_proc = subprocess.run([sys.executable, "-m", "attnzoo", "plugins", "--json"], capture_output=True, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(tmp_path),
                                                 ATTNZOO_DISABLE_PLUGINS="broken_import"))
    assert env_proc.returncode == 0 and env_proc.stderr == ""
    status = {p["name"]: p["status"] for p in json.loads(env_proc.stdout)}
    assert status["broken_import"] == "disabled" and status["softmax"] == "loaded"
