"""Recipe validation: every problem at once, with key paths, suggestions and coercion by type."""

import time

import pytest
import yaml
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError, RecipeError
from conftest import ROOT, tiny_recipe_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def build(data, registry):
    return recipes.from_dict(data, registry=registry)


def test_numbers_written_like_1e_3_are_numbers(builtin_registry, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5e-5\ntrain:\n  epochs: 2\n")
    r = recipes.load(path, registry=builtin_registry)
    assert r.optim.lr == 1e-3 and isinstance(r.optim.lr, float) and r.optim.weight_decay == 5e-5


def test_all_problems_reported_at_once_with_paths_and_suggestions(builtin_registry):
    data = {"modle": {}, "optim": {"lr": "fast", "lerning_rate": 1}, "train": {"epochs": "ten"},
            "data": {"dataset": "cifar1000"}}
    with pytest.raises(RecipeError) as err:
        build(data, builtin_registry)
    text = str(err.value)
    assert "modle: unknown key (did you mean 'model'?)" in text
    assert "optim.lr: expected a number, got 'fast'" in text
    assert "optim.lerning_rate: unknown key" in text
    assert "train.epochs: expected an integer, got 'ten'" in text
    assert "data.dataset: 'cifar1000' is not one of cifar100, cifar10, imagefolder, synthetic" in text
    assert len(err.value.problems) == 5


@pytest.mark.parametrize("section,key,value,message", [
    ("optim", "lr", -1e-3, "optim.lr: must be > 0"),
    ("model", "patch_size", 5, "does not divide model.image_size 32"),
    ("model", "heads", 3, "model.heads: 3 does not divide model.dim 128"),
    ("train", "epochs", 0, "train.epochs: must be at least 1"),
    ("model", "dropout", 1.5, "model.dropout: must be in [0, 1)"),
    ("train", "batch_size", 0, "train.batch_size: must be at least 1"),
])
def test_out_of_range_values(builtin_registry, section, key, value, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        build({section: {key: value}}, builtin_registry)


def test_variant_options_sit_beside_the_name(builtin_registry):
    r = build({"attention": {"name": "standardized", "scale": "inv_sqrt_d"}}, builtin_registry)
    assert r.attention.options == {"scale": "inv_sqrt_d", "standardize_values": True, "eps": 1e-5}
    with pytest.raises(RecipeError, match="has no option 'scael'"):
        build({"attention": {"name": "standardized", "scael": "inv_d"}}, builtin_registry)
    with pytest.raises(RecipeError, match="Unknown attention variant 'softmx'.*did you mean 'softmax'"):
        build({"attention": {"name": "softmx"}}, builtin_registry)


def test_yaml_no_is_the_word_no_where_a_choice_expects_it(builtin_registry, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert recipes.load(path, registry=builtin_registry).train.mixed_precision == "no"
    r = recipes.load(path, ["train.mixed_precision=bf16", "train.mixed_precision=no"], registry=builtin_registry)
    assert r.train.mixed_precision == "no"


@pytest.mark.parametrize("given, mode", [("true", "default"), ("false", "none"), ("yes", "default"),
                                         ("cudagraphs", "cudagraphs"), ("max-autotune", "max-autotune")])
def test_compile_modes_and_the_booleans_of_earlier_recipes(builtin_registry, tmp_path, given, mode):
    path = tmp_path / "r.yaml"
    path.write_text(f"train:\n  compile: {given}\n")
    assert recipes.load(path, registry=builtin_registry).train.compile == mode
    assert recipes.load(path, [f"train.compile={given}"], registry=builtin_registry).train.compile == mode


def test_unknown_compile_mode_lists_the_modes(builtin_registry, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  compile: cudagraph\n")
    with pytest.raises(RecipeError, match="train.compile: 'cudagraph' is not one of auto, none, default, cudagraphs, "
                                          "max-autotune.*did you mean 'cudagraphs'"):
        recipes.load(path, registry=builtin_registry)


def test_overrides(builtin_registry, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    r = recipes.load(path, ["optim.lr=3e-4", "attention.name=cosine", "attention.scale=inv_n",
                            "seeds=[0,1,2]", "data.max_train_samples=null"], registry=builtin_registry)
    assert r.optim.lr == 3e-4 and r.attention.name == "cosine" and r.attention.options["scale"] == "inv_n"
    assert r.seeds == [0, 1, 2] and r.data.max_train_samples is None


@pytest.mark.parametrize("text,message", [
    ("optim.lr", "expected key=value"),
    ("=3", "expected key=value"),
    ("optim..lr=3", "is not a dotted key"),
    ("model.dim.x=3", "'dim' is not a section"),
])
def test_malformed_overrides(text, message):
    with pytest.raises(RecipeError, match=message):
        recipes.apply_overrides({"model": {"dim": 4}}, [text])


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(AttnzooError, match="not found.*attnzoo ls"):
        recipes.read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  dim: 3\n   depth: [\n")
    with pytest.raises(AttnzooError, match="not valid YAML at line"):
        recipes.read_yaml(bad)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(AttnzooError, match="must be a mapping"):
        recipes.read_yaml(tmp_path / "list.yaml")


def test_recipes_never_execute_code(tmp_path, builtin_registry):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(AttnzooError, match="not valid YAML"):
        recipes.read_yaml(evil)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_recipes_validate_and_name_their_command(path, builtin_registry):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# attnzoo "), f"{path.name} must start with a comment giving its command"
    recipes.load(path, registry=builtin_registry)


def test_dump_round_trips(builtin_registry, tmp_path):
    r = build({"attention": {"name": "cosine", "scale": "inv_n"}, "optim": {"lr": 2e-4}}, builtin_registry)
    again = recipes.from_dict(yaml.safe_load(recipes.dump(r)), registry=builtin_registry)
    assert again == r


def test_a_recipe_is_plain_data_and_resolving_it_gives_the_kernel(builtin_registry):
    import copy
    import dataclasses

    r = build({"attention": {"name": "cosine", "scale": "learnable"}}, builtin_registry)
    assert [f.name for f in dataclasses.fields(r.attention)] == ["name", "options"]
    copied = copy.deepcopy(r)
    assert copied == r and copied.attention.options is not r.attention.options
    # validation writes the options out in full: what recipe.yaml records
    assert r.to_dict()["attention"] == {"name": "cosine", "scale": "learnable", "eps": 1e-6, "backend": "auto"}
    resolved = recipes.resolve(r, builtin_registry)
    assert resolved.registry is builtin_registry and resolved.plugins is builtin_registry.plugins
    assert resolved.kernel.name == "cosine" and resolved.kernel.options == r.attention.options
    assert resolved.kernel(8, 2).gain.shape == (2, 1, 1)  # scale=learnable: a gain per head
    copied.attention.name = "cosin"
    with pytest.raises(RecipeError, match=r"recipe 't' has 1 problem\(s\):\n  - attention: Unknown attention "
                                          r"variant 'cosin' \(did you mean 'cosine'\?\)"):
        recipes.resolve(dataclasses.replace(copied, name="t"), builtin_registry)


KEYS = ["model.dim", "model.depth", "optim.lr", "train.epochs", "attention.name", "data.dataset", "variants", "seeds",
        "train.batch_size", "modle.dim", "optim", "attention.scale", "train.seed", "data.augment.flip"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(0, 3), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
def test_random_documents_give_a_recipe_or_a_clean_error(builtin_registry, overrides):
    texts = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
             for k, v in overrides.items()]
    try:
        data = recipes.apply_overrides({}, texts)
        recipes.from_dict(data, registry=builtin_registry)
    except AttnzooError as exc:
        assert str(exc)


def test_a_string_where_a_number_belongs_is_one_clean_problem(builtin_registry):
    # '%' once reached a range check as a format string ('%' % 1) and raised ValueError
    with pytest.raises(RecipeError) as err:
        build({"train": {"batch_size": "%", "grad_accum_steps": 1}}, builtin_registry)
    assert err.value.problems == ["train.batch_size: expected an integer, got '%'"]


# ---------------------------------------------------------------- YAML size limits


def alias_bomb(levels: int, flow: bool = False) -> str:
    """10**levels leaves from a few lines: each level lists the one below ten times."""
    if flow:  # one line, as an override value
        node = "&a0 [x, x, x, x, x, x, x, x, x, x]"
        for i in range(1, levels):
            node = f"[{node}, " + ", ".join([f"*a{i - 1}"] * 9) + "]"
            node = f"&a{i} {node}"
        return node
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines + [f"name: *a{levels - 1}"]) + "\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_an_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path, levels):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels))
    started = time.perf_counter()
    with pytest.raises(AttnzooError, match=r"is too large to be a recipe: it expands to more than 100,000 values") as err:
        recipes.read_yaml(path)
    assert time.perf_counter() - started < 2
    assert len(str(err.value)) < 300


def test_an_alias_bomb_in_an_override_is_refused(builtin_registry):
    started = time.perf_counter()
    with pytest.raises(RecipeError, match=r"override of seeds: the value is too large: it expands to more than") as err:
        recipes.parse_override("seeds=" + alias_bomb(9, flow=True))
    assert time.perf_counter() - started < 2 and len(str(err.value)) < 300


@pytest.mark.parametrize("text, message", [
    ("a: &a [x]\nb: [" + ", ".join(["*a"] * 1001) + "]\n", r"more than 1,000 aliases"),
    ("a: &a [x, *a]\n", r"an alias refers to a node that contains it"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"nests deeper than Python can read"),
])
def test_yaml_beyond_the_bounds_is_refused_naming_the_bound(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(AttnzooError, match=message):
        recipes.read_yaml(path)


def test_anchors_and_aliases_within_the_bounds_still_load(tmp_path, builtin_registry):
    path = tmp_path / "r.yaml"
    path.write_text("optim: &o {lr: 0.002, schedule: constant}\nextra: {a: *o, b: *o}\n")
    assert recipes.read_yaml(path)["extra"]["b"] == {"lr": 0.002, "schedule": "constant"}


def test_a_long_value_is_cut_in_the_middle_of_its_problem(builtin_registry):
    """10,000 values in a key (within the YAML bounds): the problem keeps its key and its end."""
    with pytest.raises(RecipeError) as err:
        build({"name": [["x"] * 100] * 100}, builtin_registry)
    (problem,) = err.value.problems
    assert problem.startswith("name: ") and "characters left out" in problem and len(problem) < 600
    assert len(str(err.value)) < 700
