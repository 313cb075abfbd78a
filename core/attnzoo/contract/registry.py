"""Discovers attention variants through the ``attnzoo`` entry-point group.

Every plugin, built-in or third-party, takes the same path: its entry point is loaded
and its hook called on its own, so one broken plugin is recorded and reported while
the others keep working (``strict=True`` or ``ATTNZOO_STRICT_PLUGINS=1`` makes any
failure fatal). ``ATTNZOO_PLUGINS`` / ``ATTNZOO_DISABLE_PLUGINS`` choose what loads.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy
import torch

from attnzoo.contract.hookspecs import PROJECT, Hookspecs, Option, Variant
from attnzoo.contract.variant import AttentionVariant, ExplicitPath, explicit_attention  # noqa: F401 (re-exported)
from attnzoo.errors import PluginError, did_you_mean
from attnzoo.values import convert, yaml_word

CORE_DISTRIBUTION = "attnzoo"  # plugins shipped in this distribution are the built-ins


@dataclass
class PluginInfo:
    name: str  # entry-point name
    module: str
    distribution: str
    version: str
    builtin: bool
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    variants: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def strict_from_env() -> bool:
    return os.environ.get("ATTNZOO_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes")


def discover_entry_points() -> list[metadata.EntryPoint]:
    seen, found = set(), []
    for ep in metadata.entry_points(group=PROJECT):
        if (ep.name, ep.value) not in seen:  # editable installs can list a plugin twice
            seen.add((ep.name, ep.value))
            found.append(ep)
    return found


def _distribution(ep) -> tuple[str, str]:
    """(distribution name, version) that provides an entry point's module."""
    dist = getattr(ep, "dist", None)
    if dist is not None:
        return dist.metadata["Name"], dist.version
    top = ep.value.split(":")[0].split(".")[0]
    names = _packages_distributions().get(top)
    if names:
        return names[0], metadata.version(names[0])
    return "(unknown)", "(unknown)"


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def coerce_option(option: Option, value: Any) -> Any:
    """Return `value` converted to the option's type, or raise ValueError saying why. The
    conversion is the one recipe keys get (attnzoo.values): `n=2.0` is 2 for both."""
    if value is None and option.default is None:
        return None
    if option.choices is not None:
        value = yaml_word(value, option.choices)
    out = convert(value, option.type)
    if option.choices is not None and out not in option.choices:
        allowed = ", ".join(map(str, option.choices))
        raise ValueError(f"{out!r} is not allowed; choose one of: {allowed}{did_you_mean(out, option.choices)}")
    return out


class Registry:
    """The variants and plugins found by one load. Build with :func:`load_registry`."""

    def __init__(self, variants: dict[str, Variant], plugins: list[PluginInfo]):
        self.variants = variants
        self.plugins = plugins

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    def get(self, name: str) -> Variant:
        if name not in self.variants:
            available = ", ".join(sorted(self.variants)) or "(none)"
            raise PluginError(
                f"Unknown attention variant {name!r}{did_you_mean(name, self.variants)}. "
                f"Available: {available}. Run `attnzoo plugins` to see every plugin and its status."
            )
        return self.variants[name]

    def resolve_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Defaults merged with `options`, each checked and converted; all problems at once."""
        variant = self.get(name)
        problems, resolved = [], {o.name: o.default for o in variant.options}
        allowed = [o.name for o in variant.options]
        for key, value in options.items():
            option = variant.option(key)
            if option is None:
                listed = ", ".join(allowed) or "none"
                problems.append(
                    f"variant {name!r} has no option {key!r}{did_you_mean(key, allowed)}; its options are: {listed}"
                )
                continue
            try:
                resolved[key] = coerce_option(option, value)
            except ValueError as exc:
                problems.append(f"option {key!r} of variant {name!r}: {exc}")
        if problems:
            raise PluginError("; ".join(problems))
        return resolved

    def kernel(self, name: str, options: dict[str, Any] | None = None) -> KernelFactory:
        """The variant `name` resolved with its checked options: what the ViT builds its kernels with."""
        return KernelFactory(self.get(name), self.resolve_options(name, options or {}))

    def create(self, name: str, *, head_dim: int, num_heads: int, **options) -> torch.nn.Module:
        return self.kernel(name, options)(head_dim, num_heads)


class KernelFactory:
    """A variant with its resolved options, called as ``factory(head_dim, num_heads)`` for
    one fresh kernel (one per block), like timm's ``attn_layer``. The model takes this (or
    any callable of that shape) and knows nothing of plugins. ``explicit()`` gives the same
    variant forced through its explicit path."""

    def __init__(self, variant: Variant, options: dict[str, Any], explicit: bool = False):
        self.variant, self.options, self.is_explicit = variant, dict(options), explicit

    @property
    def name(self) -> str:
        return self.variant.name

    def __call__(self, head_dim: int, num_heads: int) -> torch.nn.Module:
        kernel = self.variant.factory(head_dim=head_dim, num_heads=num_heads, **self.options)
        return ExplicitPath(kernel) if self.is_explicit else kernel

    def explicit(self) -> KernelFactory:
        """The same variant run through its explicit path: the naive reference of every variant."""
        return KernelFactory(self.variant, self.options, explicit=True)

    def __repr__(self) -> str:
        return f"KernelFactory({self.name!r}, {self.options!r}{', explicit' if self.is_explicit else ''})"


def _option_samples(variant: Variant) -> list[dict[str, Any]]:
    """The defaults, then each choice of each option with the others at their defaults."""
    defaults = {o.name: o.default for o in variant.options}
    samples = [defaults]
    for o in variant.options:
        values = o.choices if o.choices is not None else ((True, False) if o.type is bool else ())
        samples += [{**defaults, o.name: value} for value in values if value != o.default]
    return samples


def _check_at_registration(variant: Variant) -> Variant:
    """Smoke tests at registration, so a broken variant fails when plugins load, not after
    training: forward's shape, attention_weights' shape and its agreement with forward
    through the explicit path. Returns the variant with ``fast_path`` and ``has_parameters``
    derived from its code; a declared value that contradicts the code is an error."""
    def fail(problem: str):
        raise PluginError(f"variant {variant.name!r}: {problem}")

    module = variant.factory(head_dim=8, num_heads=2, **_option_samples(variant)[0]).eval()
    if isinstance(module, AttentionVariant) and type(module).explicit is not AttentionVariant.explicit:
        # No check, benchmark or FLOP count would run the override: refuse it rather than let
        # the variant be tested against a reference its author did not write.
        fail("overrides explicit(q, k, v), which nothing consults: the explicit path is "
             "attention_weights(q, k) @ values(v); put that math in attention_weights (and values, "
             "to transform v) and drop the override")
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    with torch.no_grad():
        out = module(q, k, v)
        if not isinstance(out, torch.Tensor) or out.shape != q.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            fail(f"forward(q, k, v) returned shape {got}, expected {tuple(q.shape)} (batch, heads, tokens, head_dim)")
        if not callable(getattr(module, "attention_weights", None)):
            fail("the module has no attention_weights(q, k); every variant exposes the weights it applies "
                 "(subclass attnzoo.AttentionVariant and implement it)")
        weights = module.attention_weights(q, k)
        expected = (2, 2, 5, 5)
        if not isinstance(weights, torch.Tensor) or weights.shape != expected:
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            fail(f"attention_weights(q, k) returned shape {got}, expected {expected} (batch, heads, tokens, tokens)")
        explicit = explicit_attention(module, q, k, v)
    gap = (explicit - out).abs().max().item()
    if not gap <= 1e-3 * max(1.0, out.abs().max().item()):  # wrong weights, not rounding (the kit is stricter)
        fail(f"forward(q, k, v) and the explicit path attention_weights(q, k) @ values(v) differ by up to "
             f"{gap:.3g}: the weights it reports are not the ones it applies")
    derived = {"fast_path": _overrides_forward(module),
               "has_parameters": any(_has_parameters(variant, options) for options in _option_samples(variant))}
    for flag, value in derived.items():
        declared = getattr(variant, flag)
        if declared is not None and declared != value:
            fail(f"registered with {flag}={declared}, but its code says {value} ({_FLAG_MEANING[flag]}); "
                 f"drop the {flag}= argument, it is derived")
    return dataclasses.replace(variant, **derived)


_FLAG_MEANING = {"fast_path": "whether the module overrides AttentionVariant.forward",
                 "has_parameters": "whether the module has parameters for some option values"}


def _overrides_forward(module: torch.nn.Module) -> bool:
    return type(module).forward is not AttentionVariant.forward


def _has_parameters(variant: Variant, options: dict[str, Any]) -> bool:
    try:
        module = variant.factory(head_dim=8, num_heads=2, **options)
    except Exception:  # a choice this machine cannot build (e.g. a GPU-only backend) tells nothing
        return False
    return any(True for _ in module.parameters())


def load_registry(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    *,
    strict: bool | None = None,
    only: set[str] | None = None,
    disable: set[str] | None = None,
    warn: bool = True,
) -> Registry:
    """Load plugins one by one. Arguments left as None come from the environment."""
    strict = strict_from_env() if strict is None else strict
    only = _env_list("ATTNZOO_PLUGINS") if only is None else only
    disable = (_env_list("ATTNZOO_DISABLE_PLUGINS") or set()) if disable is None else disable
    entry_points = discover_entry_points() if entry_points is None else list(entry_points)
    # Built-ins first, so a third party cannot shadow 'softmax' by loading earlier.
    entry_points.sort(key=lambda ep: (_distribution(ep)[0] != CORE_DISTRIBUTION, ep.name))

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(Hookspecs)
    variants: dict[str, Variant] = {}
    plugins: list[PluginInfo] = []

    for ep in entry_points:
        dist, version = _distribution(ep)
        info = PluginInfo(ep.name, ep.value, dist, version, builtin=dist == CORE_DISTRIBUTION)
        plugins.append(info)
        if ep.name in disable or (only is not None and not info.builtin and ep.name not in only):
            info.status = "disabled"
            continue
        try:
            _load_one(pm, ep, info, variants)
        except Exception as exc:  # a plugin may raise anything; record it and go on
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            info.variants = []
            if strict:
                raise PluginError(
                    f"plugin {info.name!r} ({info.distribution} {info.version}) failed: {info.error}. "
                    "Strict plugin mode is on (--strict-plugins or ATTNZOO_STRICT_PLUGINS=1)."
                ) from exc

    registry = Registry(variants, plugins)
    if warn:
        for p in registry.failures:
            print(
                f"attnzoo: warning: plugin {p.name!r} ({p.distribution} {p.version}) failed and was skipped: "
                f"{p.error}. Other variants work; `ATTNZOO_DISABLE_PLUGINS={p.name}` silences this.",
                file=sys.stderr,
            )
    return registry


def _load_one(pm: pluggy.PluginManager, ep, info: PluginInfo, variants: dict[str, Variant]) -> None:
    module = ep.load()
    pm.register(module, name=ep.name)
    try:
        pm.check_pending()  # a misspelled @hookimpl is an error, not a silent no-op
    except pluggy.PluginValidationError:
        pm.unregister(module)
        raise
    staged: dict[str, Variant] = {}

    def register(name, description, factory, options=(), *, fast_path=None, has_parameters=None):
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"variant name {name!r} must be a Python identifier, e.g. 'sigmoid'")
        taken = variants.get(name) or staged.get(name)
        if taken is not None:
            raise PluginError(
                f"variant {name!r} is registered twice: by plugin {taken.plugin!r} ({taken.distribution}) "
                f"and by plugin {info.name!r} ({info.distribution}); the first one is kept"
            )
        staged[name] = Variant(
            name, description, factory, tuple(options), fast_path, has_parameters,
            plugin=info.name, distribution=info.distribution, version=info.version,
        )

    for impl in pm.hook.register_attention_variants.get_hookimpls():
        if impl.plugin_name == ep.name:
            impl.function(register=register)
    if not staged:
        raise PluginError(f"plugin {ep.name!r} registered no variants (is the hook named register_attention_variants?)")
    with torch.random.fork_rng(devices=[]):  # loading plugins leaves the caller's random stream alone
        staged = {name: _check_at_registration(variant) for name, variant in staged.items()}
    variants.update(staged)
    info.variants = sorted(staged)


@functools.lru_cache(maxsize=None)
def _cached(strict: bool, only: frozenset | None, disable: frozenset) -> Registry:
    return load_registry(strict=strict, only=only and set(only), disable=set(disable))


def default_registry(strict: bool | None = None) -> Registry:
    """The registry of installed plugins, loaded once per process and per setting. `strict`
    (any plugin failure is fatal) left as None comes from ATTNZOO_STRICT_PLUGINS."""
    only = _env_list("ATTNZOO_PLUGINS")
    return _cached(strict_from_env() if strict is None else strict, frozenset(only) if only is not None else None,
                   frozenset(_env_list("ATTNZOO_DISABLE_PLUGINS") or ()))


def installed_or(registry: Registry | None) -> Registry:
    """`registry`, or the installed plugins' when it is None: the one place an omitted
    registry gets its default (recipe validation and the kit, the two doors a name enters by)."""
    return registry if registry is not None else default_registry()


def list_variants() -> list[Variant]:
    return sorted(default_registry().variants.values(), key=lambda v: v.name)


def create_attention(name: str, *, head_dim: int, num_heads: int, **options) -> torch.nn.Module:
    return default_registry().create(name, head_dim=head_dim, num_heads=num_heads, **options)
