"""Plugin loading: errors name the culprit, one broken plugin never breaks the others."""

import sys
import textwrap
from importlib import metadata

import pytest
import torch
from attnzoo import Option, PluginError
from attnzoo.contract.registry import coerce_option, load_registry
from conftest import builtin_entry_points

GOOD = """
from attnzoo import AttentionVariant, hookimpl
import torch

class Mean(AttentionVariant):
    def attention_weights(self, q, k):
        n = k.shape[-2]
        return torch.full(q.shape[:-1] + (n,), 1.0 / n, dtype=q.dtype)

@hookimpl
def register_attention_variants(register):
    register(name="{name}", description="uniform weights", factory=Mean)
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fakeplug_")]:
        del sys.modules[name]


def make_plugin(folder, module, source):
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    return metadata.EntryPoint(module.removeprefix("fakeplug_"), module, "attnzoo")


def load(eps, **kw):
    kw.setdefault("strict", False)
    kw.setdefault("only", None)
    kw.setdefault("disable", set())
    # Third parties first: the registry itself must put the built-ins ahead of them.
    return load_registry(eps + builtin_entry_points(), warn=False, **kw)


def test_builtins_register_through_entry_points(builtin_registry):
    assert sorted(builtin_registry.variants) == ["cosine", "softmax", "standardized"]
    assert all(p.status == "loaded" for p in builtin_registry.plugins)


def test_installed_distribution_declares_the_builtins():
    names = {ep.name: ep.value for ep in metadata.entry_points(group="attnzoo")}
    assert names["softmax"] == "attnzoo_softmax" and names["cosine"] == "attnzoo_cosine"
    assert names["standardized"] == "attnzoo_standardized"


def test_third_party_plugin_appears(plugin_dir):
    reg = load([make_plugin(plugin_dir, "fakeplug_mean", GOOD.format(name="mean"))])
    assert "mean" in reg.variants
    out = reg.create("mean", head_dim=4, num_heads=1)(*torch.randn(3, 1, 1, 3, 4))
    assert out.shape == (1, 1, 3, 4)


BROKEN = [
    ("import", "raise ImportError('no module named foo')", "no module named foo"),
    ("registration", """
        from attnzoo import hookimpl
        @hookimpl
        def register_attention_variants(register):
            raise RuntimeError('boom at registration')
        """, "boom at registration"),
    ("duplicate", GOOD.format(name="softmax"), "registered twice: by plugin 'softmax'"),
    ("wrong_shape", """
        from attnzoo import AttentionVariant, hookimpl
        class Bad(AttentionVariant):
            def forward(self, q, k, v):
                return q[..., :1]
        @hookimpl
        def register_attention_variants(register):
            register(name="bad", description="wrong shape", factory=Bad)
        """, "returned shape (2, 2, 5, 1), expected (2, 2, 5, 8)"),
    ("no_weights", """
        import torch
        from attnzoo import hookimpl
        class OnlyForward(torch.nn.Module):
            def __init__(self, head_dim, num_heads):
                super().__init__()
            def forward(self, q, k, v):
                return v
        @hookimpl
        def register_attention_variants(register):
            register(name="bad", description="no weights", factory=OnlyForward)
        """, "has no attention_weights(q, k)"),
    ("weights_shape", """
        from attnzoo import AttentionVariant, hookimpl
        class Bad(AttentionVariant):
            def attention_weights(self, q, k):
                return q.softmax(-1)
            def forward(self, q, k, v):
                return v
        @hookimpl
        def register_attention_variants(register):
            register(name="bad", description="per-feature weights", factory=Bad)
        """, "attention_weights(q, k) returned shape (2, 2, 5, 8), expected (2, 2, 5, 5)"),
    ("weights_disagree", """
        import torch
        from attnzoo import AttentionVariant, hookimpl
        class Bad(AttentionVariant):
            def attention_weights(self, q, k):  # forgets the 1/sqrt(d) of its forward
                return torch.softmax(q @ k.transpose(-2, -1), -1)
            def forward(self, q, k, v):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        @hookimpl
        def register_attention_variants(register):
            register(name="bad", description="weights that are not the ones applied", factory=Bad)
        """, "and the explicit path attention_weights(q, k) @ values(v) differ by up to"),
    ("fast_path_claim", GOOD.format(name="bad").replace('factory=Mean)', 'factory=Mean, fast_path=True)'),
     "registered with fast_path=True, but its code says False"),
    ("parameters_claim", """
        import torch
        from attnzoo import AttentionVariant, Option, hookimpl
        class Gain(AttentionVariant):
            def __init__(self, head_dim, num_heads, learnable=False):
                super().__init__(head_dim, num_heads)
                self.gain = torch.nn.Parameter(torch.ones(num_heads, 1, 1)) if learnable else 1.0
            def attention_weights(self, q, k):
                return torch.softmax(q @ k.transpose(-2, -1) * self.gain, -1)
        @hookimpl
        def register_attention_variants(register):
            register(name="bad", description="gain", factory=Gain, options=[Option("learnable", bool, False)],
                     has_parameters=False)
        """, "registered with has_parameters=False, but its code says True"),
    ("explicit_override", """
        import torch
        from attnzoo import AttentionVariant, hookimpl
        class Bad(AttentionVariant):
            def attention_weights(self, q, k):
                return torch.softmax(q @ k.transpose(-2, -1), -1)
            def explicit(self, q, k, v):  # a reference no check would ever run
                return self.attention_weights(q, k) @ v
        @hookimpl
        def register_attention_variants(register):
            register(name="bad", description="its own explicit()", factory=Bad)
        """, "overrides explicit(q, k, v), which nothing consults: the explicit path is "
             "attention_weights(q, k) @ values(v)"),
    ("misspelled_hook", """
        from attnzoo import hookimpl
        @hookimpl
        def register_attention_variant(register):
            pass
        """, "register_attention_variant"),
]


@pytest.mark.parametrize("case,source,message", BROKEN, ids=[case for case, _, _ in BROKEN])
def test_broken_plugin_is_isolated_and_strict_mode_fails(plugin_dir, case, source, message):
    ep = make_plugin(plugin_dir, f"fakeplug_{case}", source)
    reg = load([ep])
    assert sorted(v for v in reg.variants if v != "bad") == ["cosine", "softmax", "standardized"]
    failed = {p.name: p for p in reg.failures}
    assert case in failed and message in failed[case].error
    with pytest.raises(PluginError, match=case):
        load([ep], strict=True)


def test_capabilities_are_derived_from_the_code(plugin_dir, builtin_registry):
    reg = load([make_plugin(plugin_dir, "fakeplug_mean", GOOD.format(name="mean"))])
    mean = reg.get("mean")  # registered without fast_path= or has_parameters=
    assert (mean.fast_path, mean.has_parameters) == (False, False)
    flags = {name: (v.fast_path, v.has_parameters) for name, v in builtin_registry.variants.items()}
    # cosine and standardized have parameters only with scale=learnable: found by trying each choice
    assert flags == {"softmax": (True, False), "cosine": (True, True), "standardized": (True, True)}


def test_an_option_value_this_machine_cannot_build_does_not_fail_loading(plugin_dir):
    source = GOOD.format(name="gpu_only").replace("class Mean(AttentionVariant):", """class Mean(AttentionVariant):
    def __init__(self, head_dim, num_heads, backend="auto"):
        super().__init__(head_dim, num_heads)
        if backend == "gpu":
            raise RuntimeError("no GPU here")
""").replace('factory=Mean)', 'factory=Mean, options=[Option("backend", str, "auto", ("auto", "gpu"))])')
    source = source.replace("from attnzoo import AttentionVariant, hookimpl", "from attnzoo import AttentionVariant, Option, hookimpl")
    reg = load([make_plugin(plugin_dir, "fakeplug_gpu_only", source)], strict=True)
    assert reg.get("gpu_only").has_parameters is False


def test_a_third_party_never_shadows_a_builtin(plugin_dir):
    """Whatever order the entry points come in, the built-in keeps its name."""
    ep = make_plugin(plugin_dir, "fakeplug_dup", GOOD.format(name="softmax"))
    reg = load([ep])  # the third party is listed before the built-ins
    assert (reg.get("softmax").plugin, reg.get("softmax").distribution) == ("softmax", "attnzoo")
    failed = {p.name: p.error for p in reg.failures}
    assert "registered twice: by plugin 'softmax' (attnzoo) and by plugin 'dup'" in failed["dup"]


def test_a_variant_named_all_is_refused_and_the_other_plugins_load(plugin_dir, capsys):
    """`variants: all` in a study means every variant: a variant of that name could never be chosen."""
    reserved = make_plugin(plugin_dir, "fakeplug_greedy", GOOD.format(name="all"))
    reg = load([reserved, make_plugin(plugin_dir, "fakeplug_mean", GOOD.format(name="mean"))])
    assert "all" not in reg.variants and {"mean", "softmax", "cosine", "standardized"} <= set(reg.variants)
    failed = {p.name: p.error for p in reg.failures}
    assert failed["greedy"].startswith(
        "PluginError: variant name 'all' of plugin 'greedy' is reserved: a study's `variants: all` means "
        "every installed variant, so no variant can be chosen by it. Register the variant under another name"), failed
    with pytest.raises(PluginError, match="variant name 'all' of plugin 'greedy' is reserved"):
        load([reserved], strict=True)


def test_failure_warning_names_plugin(plugin_dir, capsys):
    ep = make_plugin(plugin_dir, "fakeplug_broken", "raise ValueError('bad')")
    load_registry(builtin_entry_points() + [ep], strict=False, only=None, disable=set())
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "ValueError: bad" in err and "ATTNZOO_DISABLE_PLUGINS=broken" in err


def test_only_and_disable(plugin_dir):
    ep = make_plugin(plugin_dir, "fakeplug_mean", GOOD.format(name="mean"))
    reg = load([ep], only={"other"})
    assert "mean" not in reg.variants and "softmax" in reg.variants  # built-ins stay unless excluded
    assert {p.name: p.status for p in reg.plugins}["mean"] == "disabled"
    reg = load([ep], disable={"cosine"})
    assert "cosine" not in reg.variants and "mean" in reg.variants


def test_environment_variables_choose_plugins(plugin_dir, monkeypatch):
    ep = make_plugin(plugin_dir, "fakeplug_mean", GOOD.format(name="mean"))
    monkeypatch.setenv("ATTNZOO_DISABLE_PLUGINS", "mean, softmax")
    reg = load_registry(builtin_entry_points() + [ep], warn=False)
    assert sorted(reg.variants) == ["cosine", "standardized"]
    monkeypatch.setenv("ATTNZOO_STRICT_PLUGINS", "1")
    bad = make_plugin(plugin_dir, "fakeplug_bad", "raise ImportError('x')")
    with pytest.raises(PluginError, match="Strict plugin mode"):
        load_registry(builtin_entry_points() + [bad], warn=False)


def test_unknown_variant_lists_available_and_suggests(builtin_registry):
    with pytest.raises(PluginError) as err:
        builtin_registry.get("cosin")
    assert "did you mean 'cosine'" in str(err.value)
    assert "Available: cosine, softmax, standardized" in str(err.value)


def test_unknown_and_ill_typed_options(builtin_registry):
    with pytest.raises(PluginError, match="has no option 'scal' \\(did you mean 'scale'\\?\\)"):
        builtin_registry.create("standardized", head_dim=4, num_heads=1, scal="inv_d")
    with pytest.raises(PluginError, match="choose one of: inv_d, inv_sqrt_d, learnable"):
        builtin_registry.create("standardized", head_dim=4, num_heads=1, scale="sqrt")
    with pytest.raises(PluginError, match="expected true or false"):
        builtin_registry.create("standardized", head_dim=4, num_heads=1, standardize_values="maybe")


def test_option_coercion():
    assert coerce_option(Option("eps", float, 1e-5), "1e-3") == 1e-3
    assert coerce_option(Option("n", int, 1), "7") == 7
    with pytest.raises(ValueError, match="expected an integer"):
        coerce_option(Option("n", int, 1), 2.5)
    with pytest.raises(TypeError, match="type must be one of"):
        Option("x", list, [])


def test_kernel_factory_resolves_once_and_builds_fresh_kernels(builtin_registry):
    factory = builtin_registry.kernel("cosine", {"scale": "learnable"})
    assert factory.name == "cosine" and factory.options["scale"] == "learnable"
    assert factory.options["eps"] == 1e-6  # defaults filled in
    a, b = factory(8, 2), factory(8, 2)
    assert a is not b and a.gain.shape == (2, 1, 1)  # one kernel per block, none shared
    with pytest.raises(PluginError, match="choose one of: none, inv_n, learnable"):
        builtin_registry.kernel("cosine", {"scale": "sideways"})


@pytest.mark.parametrize("name", ["softmax", "cosine", "standardized"])
def test_explicit_factory_is_the_variants_reference_path(builtin_registry, name, monkeypatch):
    """bench's naive implementation is each variant's own explicit path, never its fast forward."""
    fast = builtin_registry.kernel(name)(8, 2)
    naive = builtin_registry.kernel(name).explicit()(8, 2)
    q, k, v = torch.randn(3, 2, 2, 7, 8).unbind(0)
    expected = fast(q, k, v)
    monkeypatch.setattr(type(naive.kernel), "forward", lambda *a: pytest.fail("fast path called"))
    torch.testing.assert_close(naive(q, k, v), expected, atol=1e-5, rtol=1e-4)


def test_the_model_takes_any_kernel_factory():
    from attnzoo.model.vit import VisionTransformer
    from attnzoo_softmax import SoftmaxAttention

    built = []

    def factory(head_dim, num_heads):
        built.append((head_dim, num_heads))
        return SoftmaxAttention(head_dim, num_heads)

    model = VisionTransformer(image_size=8, patch_size=4, num_classes=3, dim=16, depth=2, heads=4,
                              mlp_ratio=2.0, dropout=0.0, kernel=factory)
    assert built == [(4, 4), (4, 4)] and model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("kind,field,value,expected", [
    (int, "train.epochs", 2.0, 2), (int, "train.epochs", "2.0", 2), (int, "train.epochs", "1e1", 10),
    (int, "train.epochs", 2.5, "expected an integer, got 2.5"), (int, "train.epochs", True, "expected an integer"),
    (float, "optim.lr", "1e-3", 1e-3), (float, "optim.lr", 2, 2.0), (float, "optim.lr", "fast", "expected a number"),
    (bool, "train.deterministic", "yes", True), (bool, "train.deterministic", "off", False),
    (bool, "train.deterministic", "maybe", "expected true or false, got 'maybe'"),
])
def test_recipe_keys_and_variant_options_convert_values_alike(kind, field, value, expected):
    """One conversion engine: whatever a recipe key of a type accepts, an option of that type accepts."""
    from attnzoo.config import recipe as recipes
    from attnzoo.errors import RecipeError

    section, key = field.split(".")
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            coerce_option(Option("x", kind, kind()), value)
        with pytest.raises(RecipeError, match=f"{field}: {expected}"):
            recipes.from_dict({section: {key: value}}, check_plugins=False)
    else:
        assert coerce_option(Option("x", kind, kind()), value) == expected
        r = recipes.from_dict({section: {key: value}}, check_plugins=False)
        assert getattr(getattr(r, section), key) == expected


# --------------------------------------------------------------------------- what a plugin may not take down


def test_a_ctrl_c_while_plugins_load_stops_loading(plugin_dir):
    """A real SIGINT is the user's and ends the program; the same exception raised by the
    plugin's own code only fails that plugin."""
    pressed = make_plugin(plugin_dir, "fakeplug_pressed", """
        import os, signal, time
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler interrupts this
        """)
    with pytest.raises(KeyboardInterrupt):
        load([pressed])
    raised = make_plugin(plugin_dir, "fakeplug_raised", "raise KeyboardInterrupt\n")
    failed = {p.name: p.error for p in load([raised]).failures}
    assert failed == {"raised": "KeyboardInterrupt: its own code raised it at import (no Ctrl-C was pressed)"}


def test_a_base_exception_in_the_load_time_check_fails_the_plugin(plugin_dir):
    source = GOOD.format(name="quitter").replace(
        "    def attention_weights(self, q, k):", "    def attention_weights(self, q, k):\n        raise GeneratorExit()")
    reg = load([make_plugin(plugin_dir, "fakeplug_quitter", source)])
    (failure,) = reg.failures
    assert failure.error.startswith("GeneratorExit:  (raised in the load-time check of its variants; a BaseException")
    assert "quitter" not in reg.variants and "quitter" in reg.rejected  # the kit may still examine it


def test_torch_state_a_plugin_changes_is_put_back_and_reported(plugin_dir):
    source = "import torch\ntorch.rand(3)\ntorch.use_deterministic_algorithms(True)\n" \
             "torch.set_float32_matmul_precision('medium')\n" + GOOD.format(name="stateful")
    precision = torch.get_float32_matmul_precision()  # the caller's, whatever it is
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    reg = load([make_plugin(plugin_dir, "fakeplug_stateful", source)])
    assert torch.equal(torch.rand(2), expected)  # the random stream it consumed at import was put back
    assert not torch.are_deterministic_algorithms_enabled() and torch.get_float32_matmul_precision() == precision
    info = {p.name: p for p in reg.plugins}["stateful"]
    assert info.status == "loaded" and "stateful" in reg.variants
    assert info.warnings == ["changed global torch state while loading (CPU random state changed; deterministic "
                             f"algorithms: off -> on; float32 matmul precision: {precision} -> medium); it was put back"]
    del sys.modules["fakeplug_stateful"]  # imported again, as a fresh process would
    with pytest.raises(PluginError, match="plugin 'stateful'.*changed global torch state.*Strict plugin mode"):
        load([make_plugin(plugin_dir, "fakeplug_stateful", source)], strict=True)
    assert not torch.are_deterministic_algorithms_enabled()  # put back on the strict path too


def test_a_slow_plugin_gets_a_notice_with_its_time(plugin_dir, monkeypatch, capsys):
    monkeypatch.setattr("attnzoo.contract.registry.SLOW_LOAD_SECONDS", 0.2)
    ep = make_plugin(plugin_dir, "fakeplug_sleepy", "import time\ntime.sleep(0.4)\n" + GOOD.format(name="sleepy"))
    reg = load_registry(builtin_entry_points() + [ep], strict=False, only=None, disable=set())
    assert "sleepy" in reg.variants
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert len(notices) == 1 and notices[0].startswith("attnzoo: notice: plugin 'sleepy' (")
    seconds = float(notices[0].split(" took ")[1].split(" s ")[0])
    assert 0.4 <= seconds < 5 and {p.name: p.load_seconds for p in reg.plugins}["sleepy"] >= 0.4


def test_what_a_plugin_prints_while_loading_goes_to_stderr(plugin_dir, capsys):
    load([make_plugin(plugin_dir, "fakeplug_chatty", "print('chatty import')\n" + GOOD.format(name="chatty"))])
    out, err = capsys.readouterr()
    assert out == "" and "chatty import" in err


def test_the_load_time_check_perturbs_parameters(plugin_dir):
    """A per-head gain initialised to 1 that forward forgets: equal at initialisation."""
    source = """
        import torch
        from attnzoo import AttentionVariant, hookimpl
        class Gain(AttentionVariant):
            def __init__(self, head_dim, num_heads):
                super().__init__(head_dim, num_heads)
                self.gain = torch.nn.Parameter(torch.ones(num_heads, 1, 1))
            def attention_weights(self, q, k):
                return torch.softmax(q @ k.transpose(-2, -1) * self.gain, -1)
            def forward(self, q, k, v):
                return torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        @hookimpl
        def register_attention_variants(register):
            register(name="gain", description="forgets its gain", factory=Gain)
        """
    (failure,) = load([make_plugin(plugin_dir, "fakeplug_gain", source)]).failures
    assert "forward(q, k, v) and the explicit path attention_weights(q, k) @ values(v) differ" in failure.error


def test_unknown_variant_names_plugins_that_failed_before_registering(plugin_dir):
    reg = load([make_plugin(plugin_dir, "fakeplug_gone", "raise ImportError('no module named foo')")])
    with pytest.raises(PluginError, match=r"Unknown attention variant 'mine'.*may be the one that provides it: "
                                          r"'gone' \(ImportError: no module named foo\)"):
        reg.get_for_checking("mine")
