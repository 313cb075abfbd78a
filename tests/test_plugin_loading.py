"""Broken third-party plugins installed for real (a dist-info on sys.path): the command
still works and names the culprit; --strict-plugins turns it into exit status 2."""

import json
import os
import re
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


def install_fake(site, case: str, source: str | None = None) -> None:
    """A minimal installed distribution 'attnzoo-broken-<case>' with one entry point."""
    module = f"attnzoo_broken_{case}"
    (site / f"{module}.py").write_text(textwrap.dedent(BROKEN[case] if source is None else source))
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


# --------------------------------------------------------------------------- hostile plugins

# Plugins that try to take the host down; each must fail alone, named, with the reason.
HOSTILE = {
    "exit_at_import": ("import sys\nsys.exit(3)\n", "SystemExit: it called sys.exit(3) at import"),
    "interrupt_at_import": ("raise KeyboardInterrupt\n",
                            "KeyboardInterrupt: its own code raised it at import (no Ctrl-C was pressed)"),
    "exit_in_hook": ("""
        from attnzoo import hookimpl
        @hookimpl
        def register_attention_variants(register):
            raise SystemExit("no variants today")
        """, "SystemExit: it called sys.exit('no variants today') in its register_attention_variants hook"),
}

# Loads, but flips global torch state and prints to stdout at import.
STATE_CHANGER = """
    import torch
    from attnzoo import AttentionVariant, hookimpl
    print("hello from a chatty plugin")
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    class Uniform(AttentionVariant):
        def attention_weights(self, q, k):
            n = k.shape[-2]
            return torch.full(q.shape[:-1] + (n,), 1.0 / n, dtype=q.dtype)
    @hookimpl
    def register_attention_variants(register):
        register(name="uniform", description="uniform weights", factory=Uniform)
    """

SLOW = """
    import time
    from attnzoo import AttentionVariant, hookimpl
    from attnzoo.contract.registry import SLOW_LOAD_SECONDS
    time.sleep(SLOW_LOAD_SECONDS + 0.3)
    class Softmax(AttentionVariant):
        def attention_weights(self, q, k):
            return (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1)
    @hookimpl
    def register_attention_variants(register):
        register(name="sleepy", description="slow to import", factory=Softmax)
    """

# Correct at the load-time check (eval mode) but raises in training.
RAISES_IN_TRAINING = """
    import torch
    from attnzoo import AttentionVariant, hookimpl
    class Kaboom(AttentionVariant):
        def attention_weights(self, q, k):
            if self.training:
                raise RuntimeError("kaboom in training")
            return torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5, -1)
    @hookimpl
    def register_attention_variants(register):
        register(name="kaboom", description="fails in training", factory=Kaboom)
    """

# Builds only at head_dim 8: passes the load-time check, crashes a recipe of head_dim 16.
ONLY_HEAD_DIM_8 = """
    from attnzoo import AttentionVariant, hookimpl
    class Picky(AttentionVariant):
        def __init__(self, head_dim, num_heads):
            if head_dim != 8:
                raise ValueError(f"head_dim {head_dim} is not supported")
            super().__init__(head_dim, num_heads)
        def attention_weights(self, q, k):
            return (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1)
    @hookimpl
    def register_attention_variants(register):
        register(name="picky", description="head_dim 8 only", factory=Picky)
    """

# A mixing matrix initialised to the identity that forward forgets to apply: at initialisation
# both paths agree, so only perturbed parameters show the wrong forward.
IDENTITY_MIXING = """
    import torch
    from attnzoo import AttentionVariant, hookimpl
    class Mixing(AttentionVariant):
        def __init__(self, head_dim, num_heads):
            super().__init__(head_dim, num_heads)
            self.mix = torch.nn.Parameter(torch.eye(num_heads))
        def attention_weights(self, q, k):
            weights = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5, -1)
            return torch.einsum("gh,bhij->bgij", self.mix, weights)
        def forward(self, q, k, v):  # forgets the mixing
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    @hookimpl
    def register_attention_variants(register):
        register(name="mixing", description="heads mixed by a learnable matrix", factory=Mixing)
    """


def write_tiny_recipe(tmp_path, **attention) -> str:
    import yaml
    from conftest import tiny_recipe_dict

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path, attention={"name": "softmax", **attention})))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_plugin_that_exits_or_interrupts_fails_alone(tmp_path, case):
    source, reason = HOSTILE[case]
    install_fake(tmp_path, case, source)
    proc = attnzoo(tmp_path, "variants", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {"softmax", "cosine"} <= {v["name"] for v in json.loads(proc.stdout)}
    assert f"plugin 'broken_{case}' (attnzoo-broken-{case} 0.3) failed and was skipped: {reason}" in proc.stderr
    assert "Traceback" not in proc.stderr

    strict = attnzoo(tmp_path, "--strict-plugins", "variants")
    assert strict.returncode == 2 and f"plugin 'broken_{case}'" in strict.stderr and reason in strict.stderr


@pytest.mark.slow
def test_softmax_trains_beside_every_hostile_plugin(tmp_path):
    """All of them installed at once: sys.exit and KeyboardInterrupt at import, SystemExit in
    the hook, a plugin that sets float64 and turns grad off, one that prints, one that is slow."""
    site = tmp_path / "site"
    site.mkdir()
    for case, (source, _) in HOSTILE.items():
        install_fake(site, case, source)
    install_fake(site, "state", STATE_CHANGER)
    install_fake(site, "slow", SLOW)
    proc = attnzoo(site, "train", write_tiny_recipe(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["epoch"] == 1
    for case in HOSTILE:
        assert f"plugin 'broken_{case}' (attnzoo-broken-{case} 0.3) failed and was skipped" in proc.stderr
    assert ("plugin 'broken_state' (attnzoo-broken-state 0.3) changed global torch state while loading "
            "(default dtype: torch.float32 -> torch.float64; grad mode: True -> False); it was put back") in proc.stderr
    assert "hello from a chatty plugin" in proc.stderr and "hello" not in proc.stdout
    assert "broken_slow' (attnzoo-broken-slow 0.3) failed" not in proc.stderr  # slow, not broken
    slow = re.search(r"notice: plugin 'broken_slow' \(attnzoo-broken-slow 0.3\) took (\d+\.\d) s to load", proc.stderr)
    assert slow and float(slow.group(1)) >= 2.0


@pytest.mark.slow
def test_a_plugin_that_flips_torch_state_and_prints_is_reported(tmp_path):
    install_fake(tmp_path, "state", STATE_CHANGER)
    proc = attnzoo(tmp_path, "variants", "--json")
    assert proc.returncode == 0, proc.stderr
    variants = {v["name"] for v in json.loads(proc.stdout)}  # the print went to stderr: still JSON
    assert {"softmax", "uniform"} <= variants
    assert proc.stderr.count("warning") == 1 and "plugin 'broken_state'" in proc.stderr
    assert "default dtype: torch.float32 -> torch.float64; grad mode: True -> False" in proc.stderr
    plugins = {p["name"]: p for p in json.loads(attnzoo(tmp_path, "plugins", "--json").stdout)}
    assert plugins["broken_state"]["status"] == "loaded" and "grad mode" in plugins["broken_state"]["warnings"][0]

    strict = attnzoo(tmp_path, "--strict-plugins", "variants")
    assert strict.returncode == 2 and "plugin 'broken_state'" in strict.stderr and "default dtype" in strict.stderr


@pytest.mark.slow
def test_an_exception_inside_a_variant_during_training_names_it(tmp_path):
    install_fake(tmp_path, "kaboom", RAISES_IN_TRAINING)
    proc = attnzoo(tmp_path, "train", write_tiny_recipe(tmp_path, name="kaboom"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = [line for line in proc.stderr.splitlines() if line.startswith("attnzoo: error:")]
    assert len(message) == 1 and message[0].startswith(
        "attnzoo: error: variant 'kaboom' (plugin 'broken_kaboom', attnzoo-broken-kaboom 0.3) failed in forward(q, k, v)")
    assert "RuntimeError: kaboom in training" in message[0] and "--debug shows the traceback" in message[0]


@pytest.mark.slow
def test_check_plugin_builds_the_head_dims_recipes_use(tmp_path):
    install_fake(tmp_path, "picky", ONLY_HEAD_DIM_8)
    proc = attnzoo(tmp_path, "check-plugin", "picky")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL  head_dims" in proc.stdout and "head_dim=16, num_heads=2: the factory raised ValueError" in proc.stdout
    assert proc.stdout.strip().endswith("FAILED: head_dims")

    trained = attnzoo(tmp_path, "train", write_tiny_recipe(tmp_path, name="picky"))  # head_dim 16
    assert trained.returncode == 2 and "Traceback" not in trained.stderr
    assert ("variant 'picky' (plugin 'broken_picky', attnzoo-broken-picky 0.3) could not build its kernel for "
            "head_dim=16, num_heads=2") in trained.stderr


@pytest.mark.slow
def test_check_plugin_runs_the_kit_on_a_variant_that_failed_to_load(tmp_path):
    install_fake(tmp_path, "mixing", IDENTITY_MIXING)
    listed = attnzoo(tmp_path, "variants", "--json")
    assert "mixing" not in {v["name"] for v in json.loads(listed.stdout)}  # perturbed at load: caught
    assert "forward(q, k, v) and the explicit path attention_weights(q, k) @ values(v) differ" in listed.stderr

    proc = attnzoo(tmp_path, "check-plugin", "mixing")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("variant 'mixing' failed to load: PluginError: variant 'mixing': forward(q, k, v) and the "
                                  "explicit path")
    assert "FAIL  fast_path_forward" in proc.stdout and "PASS  shape_and_dtype" in proc.stdout
    assert "Unknown attention variant" not in proc.stdout + proc.stderr
